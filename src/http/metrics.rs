//! Prometheus metrics: the live jobs by status and channel (refreshed in the
//! background, so a scrape reads no table), sends by provider and outcome,
//! provider request latency, webhook events by outcome, listener
//! reconnects, console actions.
//!
//! `leadrelay_jobs` counts only the states a job passes through or stops in
//! for a person to look at (scheduled, due, sending, failed, invalid): each
//! has a partial index, so counting them costs the same at any table size.
//! Sent and cancelled jobs are counted by `leadrelay_sends_total` and
//! `leadrelay_policy_cancellations_total` as they happen; a gauge of them
//! would count the whole table.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tokio_util::sync::CancellationToken;

use crate::worker::listener::ListenerState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const STATUSES: [&str; 5] = ["scheduled", "due", "sending", "failed", "invalid"];
const CHANNELS: [&str; 3] = ["email", "sms", "lead_tracking"];

/// Installs the process-wide recorder once; later calls reuse it.
pub fn install() {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("leadrelay_provider_request_seconds".into()),
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .and_then(|b| b.install_recorder())
            .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
            .ok()
    });
}

pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(handle)) => handle.render(),
        _ => String::new(),
    }
}

/// The live jobs by status and channel, each state through its own partial
/// index (the scheduled, claim and sending indexes, and the failed one).
pub const LIVE_JOBS: &str = concat!(
    "
select 'scheduled', channel, count(*) from public.notification_jobs where status = 'scheduled' group by channel
union all
select 'due', channel, count(*) from public.notification_jobs where status = 'due' group by channel
union all
select 'sending', channel, count(*) from public.notification_jobs where status = 'sending' group by channel
union all
select status, channel, count(*) from public.notification_jobs where status in (",
    crate::domain::failed_statuses_sql!(),
    ") group by status, channel"
);

/// How often the job gauges are refreshed, and how long one refresh may
/// wait for a connection and run.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(15);
const GAUGE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn set_listener_gauge(listener: &ListenerState) {
    metrics::gauge!("leadrelay_listener_connected").set(if listener.is_connected() {
        1.0
    } else {
        0.0
    });
}

/// Sets the job gauges from the database (every known pair, so a count that
/// drops to zero shows zero). A refresh that cannot get a connection or an
/// answer in time is skipped: the gauges keep their last values and
/// `leadrelay_job_gauges_updated_seconds` says how old they are.
pub async fn refresh_job_gauges(pool: &deadpool_postgres::Pool) {
    let rows = tokio::time::timeout(GAUGE_TIMEOUT, async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .query(LIVE_JOBS, &[])
            .await
            .map_err(|e| crate::store::describe(&e))
    })
    .await;
    let rows = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "job gauges not refreshed");
            return;
        }
        Err(_) => {
            tracing::warn!("job gauges not refreshed within 5 s");
            return;
        }
    };
    for status in STATUSES {
        for channel in CHANNELS {
            let n: i64 = rows
                .iter()
                .find(|r| r.get::<_, &str>(0) == status && r.get::<_, &str>(1) == channel)
                .map(|r| r.get(2))
                .unwrap_or(0);
            metrics::gauge!("leadrelay_jobs", "status" => status, "channel" => channel)
                .set(n as f64);
        }
    }
    metrics::gauge!("leadrelay_job_gauges_updated_seconds")
        .set(chrono::Utc::now().timestamp() as f64);
}

/// Refreshes the job gauges every `GAUGE_INTERVAL` until cancelled.
pub async fn gauges_loop(pool: deadpool_postgres::Pool, stop: CancellationToken) {
    loop {
        refresh_job_gauges(&pool).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
}
