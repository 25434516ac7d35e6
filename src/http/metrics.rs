//! Prometheus metrics: jobs by status and channel (read from the database at
//! each scrape), sends by provider and outcome, provider request latency,
//! webhook events by outcome, listener reconnects.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::worker::listener::ListenerState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const STATUSES: [&str; 7] = [
    "scheduled",
    "due",
    "sending",
    "sent",
    "failed",
    "invalid",
    "cancelled",
];
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

pub const JOBS_BY_STATUS: &str =
    "select status, channel, count(*) from public.notification_jobs group by 1, 2";

/// Sets the job gauges from the table (every known pair, so a count that
/// drops to zero shows zero) and the listener's figures.
pub async fn refresh_job_gauges(pool: &deadpool_postgres::Pool, listener: &ListenerState) {
    metrics::gauge!("leadrelay_listener_connected").set(if listener.is_connected() {
        1.0
    } else {
        0.0
    });
    let Ok(client) = pool.get().await else {
        return;
    };
    let Ok(rows) = client.query(JOBS_BY_STATUS, &[]).await else {
        return;
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
}
