//! Webhook ingestion benchmark: `cargo bench --bench webhooks`.
//!
//! Starts a throwaway PostgreSQL cluster and the real `Application`, gives it
//! 5,000 sent emails, then posts 20,000 Svix-signed Resend events for them
//! (sent, delivered, opened, clicked, shuffled) from a load generator on
//! loopback, and prints events stored per second: verified, written to
//! `notification_events` and applied to the jobs. The reference is the same
//! server answering `GET /healthz` at the same concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use leadrelay::cluster::{Cluster, ClusterOptions};
use leadrelay::config::{MobizonSettings, ResendSettings, Secret, ServeConfig, WorkerSettings};
use leadrelay::retry::Backoff;
use leadrelay::serve::Application;
use leadrelay::svix::SigningKey;
use leadrelay::{db, dev, migrate};
use rand::seq::SliceRandom;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn drive(concurrency: usize, requests: Vec<reqwest::RequestBuilder>) -> (Duration, usize) {
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = Arc::clone(&queue);
        let ok = Arc::clone(&ok);
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(request) = next else { break };
                if let Ok(response) = request.send().await
                    && response.status().is_success()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    (started.elapsed(), ok.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let emails: usize = std::env::var("BENCH_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
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
    client
        .batch_execute(
            "update notification_rules set enabled = (channel = 'email'), delay = interval '1 day'",
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, source) select 'L' || g, 'l' || g || '@mail.ru', 'proftest_bench' from generate_series(1, $1::int) g",
            &[&(emails as i32)],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'bench-' || id",
        )
        .await
        .unwrap();
    let message_ids: Vec<String> = client
        .query("select provider_message_id from notification_jobs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let config = ServeConfig {
        database_url: Secret::new(url.clone()),
        lead_tracking_database_url: None,
        resend: ResendSettings {
            api_key: Secret::new("re_bench"),
            api_url: "http://127.0.0.1:9".into(),
            from: "bench@academy.kz".into(),
            max_rps: 2.0,
        },
        mobizon: MobizonSettings {
            api_key: Secret::new("kz_bench"),
            api_url: "http://127.0.0.1:9".into(),
            from: None,
            max_rps: 2.0,
        },
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        product_url: "https://academy.kz/product".into(),
        worker: WorkerSettings {
            sweep_interval: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            provider_timeout: Duration::from_secs(10),
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
            concurrency: 4,
            shutdown_grace: Duration::from_secs(5),
        },
        resend_webhook_key: SigningKey::parse(SECRET).unwrap(),
        mobizon_webhook_token: Secret::new("bench-token-0123456789"),
        admin_token: Secret::new("bench-admin-0123456789"),
        mobizon_poll_interval: None,
        dev_outbox: None,
    };
    let app = Application::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let key = SigningKey::parse(SECRET).unwrap();

    println!(
        "leadrelay webhook benchmark ({} cores; server, PostgreSQL and load generator on one machine, loopback)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Reference: a route that does nothing, same server, same concurrency.
    let noop: Vec<_> = (0..emails * 4)
        .map(|_| http.get(format!("{base}/healthz")))
        .collect();
    let (noop_time, noop_ok) = drive(concurrency, noop).await;
    let noop_rate = noop_ok as f64 / noop_time.as_secs_f64();

    let mut events = Vec::new();
    for id in &message_ids {
        for kind in [
            "email.sent",
            "email.delivered",
            "email.opened",
            "email.clicked",
        ] {
            events.push((id.clone(), kind));
        }
    }
    events.shuffle(&mut rand::rng());
    let now = chrono::Utc::now().timestamp().to_string();
    let requests: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, (email_id, kind))| {
            let body = serde_json::to_vec(&serde_json::json!({
                "type": kind, "created_at": chrono::Utc::now().to_rfc3339(),
                "data": {"email_id": email_id, "from": "bench@academy.kz", "to": ["l@mail.ru"], "subject": "Тест пройден"}
            }))
            .unwrap();
            let svix_id = format!("msg_bench_{i}");
            let signature = key.signature(&svix_id, &now, &body);
            http.post(format!("{base}/webhooks/resend"))
                .header("svix-id", svix_id)
                .header("svix-timestamp", now.clone())
                .header("svix-signature", signature)
                .header("content-type", "application/json")
                .body(body)
        })
        .collect();
    let total = requests.len();
    let (time, ok) = drive(concurrency, requests).await;
    let rate = ok as f64 / time.as_secs_f64();
    let stored: i64 = client
        .query_one("select count(*) from notification_events", &[])
        .await
        .unwrap()
        .get(0);
    let clicked: i64 = client
        .query_one(
            "select count(*) from notification_jobs where delivery_status = 'clicked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("concurrency {concurrency}");
    println!(
        "signed Resend events stored and applied: {ok} of {total} in {:.2} s = {rate:.0} events/s ({stored} rows in notification_events; {clicked} of {} jobs end at 'clicked' whatever the order)",
        time.as_secs_f64(),
        message_ids.len()
    );
    println!("reference, GET /healthz on the same server: {noop_rate:.0} requests/s");
    println!("ratio: {:.2} of the no-op route", rate / noop_rate);
    app.shutdown().await;
}
