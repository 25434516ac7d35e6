//! Worker benchmark: `cargo bench --bench worker`.
//!
//! Starts a throwaway PostgreSQL cluster, a local mock Resend and Mobizon that
//! answer at once, and the real `Application`, then prints:
//! 1. jobs per second end to end (claim → mock provider → outcome recorded,
//!    mirror updated) for 10,000 due jobs (5,000 leads × email + SMS);
//! 2. promotion → provider request latency (p50, p99, max) over jobs promoted
//!    one at a time.
//!
//! Figures, not assertions: nothing here fails on a slow machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use leadrelay::cluster::{Cluster, ClusterOptions};
use leadrelay::config::{MobizonSettings, ResendSettings, Secret, ServeConfig, WorkerSettings};
use leadrelay::retry::Backoff;
use leadrelay::serve::Application;
use leadrelay::{db, dev, migrate};

#[derive(Default)]
struct MockState {
    emails: AtomicU64,
    sms: AtomicU64,
    /// job id → when its email request arrived
    seen: Mutex<HashMap<i64, Instant>>,
}

async fn resend(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    state.emails.fetch_add(1, Ordering::Relaxed);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if let Some(id) = key
        .strip_prefix("leadrelay-job-")
        .and_then(|id| id.parse::<i64>().ok())
    {
        state.seen.lock().unwrap().insert(id, Instant::now());
    }
    axum::Json(serde_json::json!({ "id": format!("email-{key}") }))
}

async fn mobizon(State(state): State<Arc<MockState>>) -> axum::Json<serde_json::Value> {
    let n = state.sms.fetch_add(1, Ordering::Relaxed);
    axum::Json(
        serde_json::json!({"code": 0, "data": {"campaignId": "1", "messageId": n.to_string(), "status": 2}, "message": ""}),
    )
}

async fn start_mock(state: Arc<MockState>) -> String {
    let app = Router::new()
        .route("/emails", post(resend))
        .route("/service/message/sendsmsmessage", post(mobizon))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let latency_samples: usize = std::env::var("BENCH_LATENCY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);

    let root = tempfile::Builder::new()
        .prefix("leadrelay-bench-")
        .tempdir()
        .unwrap()
        .keep();
    let cluster = Cluster::start(&ClusterOptions {
        root,
        port: None,
        ephemeral: false,
        cron_database: "postgres".into(),
    })
    .expect("start cluster");
    cluster
        .remove_when_process_exits(std::process::id())
        .unwrap();
    let url = cluster.url("postgres");
    let mut client = db::connect(&url).await.unwrap();
    client.batch_execute(dev::SUPABASE_ROLES).await.unwrap();
    migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    // Only the two messages; the jobs are created scheduled, far in the future.
    client
        .batch_execute(
            "update notification_rules set enabled = (channel <> 'lead_tracking'), delay = interval '1 day';
             do $$ begin
               if exists (select 1 from pg_extension where extname = 'pg_cron') then
                 perform cron.unschedule('promote-due-notification-jobs');
               end if;
             end $$;",
        )
        .await
        .unwrap();

    let mock = Arc::new(MockState::default());
    let mock_url = start_mock(Arc::clone(&mock)).await;
    let config = ServeConfig {
        database_url: Secret::new(url.clone()),
        lead_tracking_database_url: None,
        resend: ResendSettings {
            api_key: Secret::new("re_bench"),
            api_url: mock_url.clone(),
            from: "bench@academy.kz".into(),
            max_rps: 1_000_000.0,
        },
        mobizon: MobizonSettings {
            api_key: Secret::new("kz_bench"),
            api_url: mock_url,
            from: None,
            max_rps: 1_000_000.0,
        },
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        product_url: "https://academy.kz/product".into(),
        worker: WorkerSettings {
            sweep_interval: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            provider_timeout: Duration::from_secs(10),
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            concurrency,
            shutdown_grace: Duration::from_secs(10),
        },
        resend_webhook_key: leadrelay::svix::SigningKey::parse(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap(),
        mobizon_webhook_token: Secret::new("bench-token-0123456789"),
        admin_token: Secret::new("bench-admin-0123456789"),
        mobizon_poll_interval: None,
        dev_outbox: None,
    };

    println!(
        "leadrelay worker benchmark ({} cores, PostgreSQL in a throwaway cluster, mock providers on loopback)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("concurrency per channel: {concurrency}");

    // 1. Throughput.
    let leads = jobs / 2;
    client
        .execute(
            "insert into landing_leads (name, email, phone, source)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 ' || lpad((g % 10000000)::text, 7, '0'), 'proftest_bench'
             from generate_series(1, $1::int) g",
            &[&(leads as i32)],
        )
        .await
        .unwrap();
    let app = Application::build(config.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let promoted: i32 = client
        .query_one(
            "with d as (update notification_jobs set due_at = now() - interval '1 second' where status = 'scheduled' returning 1)
             select (select count(*) from d)::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let _: i32 = client
        .query_one("select promote_due_notification_jobs(1000000)", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        let left: i64 = client
            .query_one(
                "select count(*) from notification_jobs where status in ('due', 'sending')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let sent: i64 = client
        .query_one(
            "select count(*) from notification_jobs where status = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!();
    println!(
        "throughput: {sent} of {promoted} jobs sent in {:.2} s = {:.0} jobs/s end to end",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  mock saw {} emails and {} SMS",
        mock.emails.load(Ordering::Relaxed),
        mock.sms.load(Ordering::Relaxed)
    );

    // 2. Pickup latency: one job at a time, promotion commit → request.
    client
        .batch_execute("update notification_rules set enabled = (channel = 'email')")
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, phone, source)
             select 'Latency ' || g, 'lat' || g || '@mail.ru', null, 'proftest_latency'
             from generate_series(1, $1::int) g",
            &[&(latency_samples as i32)],
        )
        .await
        .unwrap();
    let ids: Vec<i64> = client
        .query("select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id where l.source = 'proftest_latency' order by j.id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let make_due = client
        .prepare(
            "update notification_jobs set due_at = now() - interval '1 millisecond' where id = $1",
        )
        .await
        .unwrap();
    let promote = client
        .prepare("select promote_due_notification_jobs()")
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(ids.len());
    for id in &ids {
        client.execute(&make_due, &[id]).await.unwrap();
        let t0 = Instant::now();
        client.query_one(&promote, &[]).await.unwrap();
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if let Some(at) = mock.seen.lock().unwrap().get(id) {
                latencies.push(at.saturating_duration_since(t0));
                break;
            }
            if Instant::now() > deadline {
                println!("job {id} was not picked up within 10 s");
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        println!();
        println!(
            "pickup latency, promotion commit → provider request, {} jobs one at a time: p50 {}, p99 {}, max {}",
            latencies.len(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap())
        );
    }
    app.shutdown().await;
}
