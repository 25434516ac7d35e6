//! The benchmark: `cargo bench --bench leadrelay`.
//!
//! Starts its own throwaway PostgreSQL cluster (pg_cron preloaded when
//! installed), a local mock Resend and Mobizon that answer at once, and the
//! real release binary (`leadrelay serve`), then runs every scenario and
//! prints one table: each figure, the reference measured in the same run, the
//! ratio and the target. References: PostgreSQL itself (the same INSERT on
//! the landing's table as the landing made it, its primary key only; a no-op
//! HTTP route) and graphile-worker
//! 0.16, installed from the npm registry into a temporary directory at run
//! time (never committed; skipped with a note when Node or npm is missing).
//!
//! Figures, never assertions: nothing here fails on a slow machine.

mod burst;
mod console;
mod graphile;
mod insert;
mod latency;
mod migration;
mod mock;
mod profile;
mod reconcile;
mod render;
mod scale;
mod setup;
mod table;
mod webhooks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use leadrelay::cli::dev;
use leadrelay::ingest::svix::SigningKey;
use leadrelay::store;
use leadrelay::store::cluster::{Cluster, ClusterOptions};
use rand::seq::SliceRandom;
use tokio_postgres::Client;

use burst::*;
use console::*;
use graphile::*;
use insert::*;
use latency::*;
use migration::*;
use mock::*;
use profile::*;
use reconcile::*;
use render::*;
use scale::*;
use setup::*;
use table::*;
use webhooks::*;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const LANDING_INSERT: &str = "\\set id random(1, 1000000000)\n\
insert into TABLE (name, email, phone, source, metadata) values ('Айгерим', 'lead' || :id || '@gmail.com', '+7 (705) 123-45-67', 'proftest_main', '{\"answers\": [3, 1, 4, 1, 5], \"utm_source\": \"instagram\"}');\n";

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let jobs: i64 = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let concurrency = std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "5".into());
    // 1: every email on its own (the single endpoint), as without bursts
    let email_batch = std::env::var("BENCH_EMAIL_BATCH").unwrap_or_else(|_| "100".into());
    let mut rows = Vec::new();

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
    println!(
        "leadrelay benchmark: {} cores, PostgreSQL 15 {} pg_cron, everything on this machine (loopback)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if cluster.has_pg_cron() {
            "with"
        } else {
            "without"
        }
    );

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let profile = std::env::var("BENCH_PROFILE").is_ok();
    if profile {
        let admin = store::connect(&cluster.url("postgres")).await.unwrap();
        admin
            .batch_execute(
                "alter system set shared_preload_libraries = 'pg_cron', 'pg_stat_statements'",
            )
            .await
            .unwrap();
        drop(admin);
        cluster
            .stop(leadrelay::store::cluster::StopMode::Fast)
            .expect("stop");
        cluster.restart().expect("restart with pg_stat_statements");
        // planning shows apart from running: a statement planned on every
        // execution (custom plans) is a candidate for a generic one
        alter_system(
            &cluster,
            None,
            &[
                "pg_stat_statements.track = 'all'",
                "pg_stat_statements.track_planning = on",
                "track_functions = 'all'",
            ],
        )
        .await;
    }
    let explain = std::env::var("BENCH_EXPLAIN").is_ok();
    if explain {
        explain_plans(&cluster).await;
    }
    // graphile-worker, the reference of several scenarios
    let graphile = if only.is_empty() || ["insert", "processing", "serve"].contains(&only.as_str())
    {
        Graphile::install()
    } else {
        Err("not needed by this scenario".into())
    };
    // 1. Lead insert cost.
    if only.is_empty() || only == "insert" {
        rows.extend(lead_insert_cost(&cluster, &graphile).await);
        if only == "insert" {
            print_table(&rows);
            return;
        }
    }

    // The service, as deployed: the release binary against the mock providers.
    let client = database(&cluster, "postgres").await;
    client
        .batch_execute("update notification_rules set enabled = (channel <> 'lead_tracking'), delay = interval '1 day'")
        .await
        .unwrap();
    if let Ok(sql) = std::env::var("BENCH_SQL_EXPERIMENT") {
        client.batch_execute(&sql).await.unwrap();
    }
    let mock = Arc::new(Mock::default());
    let mock_url = start_mock(Arc::clone(&mock)).await;
    if only.is_empty() || only == "render" {
        rows.push(render_cost(&client).await);
        if only == "render" {
            print_table(&rows);
            return;
        }
    }
    if only == "scale" {
        rows.extend(scale(&cluster).await);
        print_table(&rows);
        return;
    }
    if only == "migrate" {
        rows.extend(migrate_under_load(&cluster).await);
        print_table(&rows);
        return;
    }
    if only == "reconcile" {
        rows.extend(reconcile_rate(&cluster).await);
        print_table(&rows);
        return;
    }
    if only == "console" {
        rows.extend(console(&cluster, &mock_url).await);
        print_table(&rows);
        return;
    }
    if only == "burst" {
        rows.push(email_burst(&cluster, &client, &mock, &mock_url).await);
        print_table(&rows);
        return;
    }
    if only == "webhooks" {
        // Sent emails to report on, without the processing run.
        client
            .batch_execute(
                "insert into landing_leads (name, email, source)
                 select 'Lead ' || g, 'lead' || g || '@mail.ru', 'proftest_bench' from generate_series(1, 5000) g;
                 update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(),
                        provider_message_id = 'email-bench-' || id where channel = 'email';",
            )
            .await
            .unwrap();
        let serve = spawn_serve(&cluster.url("postgres"), &mock_url, &[]);
        serve.ready().await;
        if profile {
            statement_profile(&client, "before webhooks").await;
        }
        rows.push(webhook_ingestion(&client, &serve.base).await);
        if profile {
            statement_profile(&client, "webhooks").await;
        }
        print_table(&rows);
        return;
    }
    if only == "latency" {
        // pickup and timing alone, without the processing run (graphile's
        // figures are then not measured)
        let serve = spawn_serve(&cluster.url("postgres"), &mock_url, &[]);
        serve.ready().await;
        let none = |_: &[&str]| {
            Err::<serde_json::Value, String>("not measured with BENCH_ONLY=latency".into())
        };
        if profile {
            reset_statement_profile(&client).await;
        }
        rows.push(pickup_latency(&client, &mock, &none).await);
        if profile {
            statement_profile(&client, "pickup").await;
        }
        rows.push(timing_accuracy(&client, &mock, &none).await);
        if explain || std::env::var("BENCH_KEEP_LOG").is_ok() {
            keep_log(&cluster, "timing");
        }
        print_table(&rows);
        return;
    }
    let spawned = Instant::now();
    let serve = spawn_serve(
        &cluster.url("postgres"),
        &mock_url,
        &[
            ("WORKER_CONCURRENCY", &concurrency),
            ("RESEND_BATCH_SIZE", &email_batch),
        ],
    );
    serve.ready().await;
    let startup = spawned.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(serve.child.id());

    // 2. Processing rate: `jobs` due jobs (half email, half SMS) drained end to end.
    client
        .execute(
            "insert into landing_leads (name, email, phone, source)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 ' || lpad((g % 10000000)::text, 7, '0'), 'proftest_bench'
             from generate_series(1, $1::int) g",
            &[&((jobs / 2) as i32)],
        )
        .await
        .unwrap();
    // Due at one moment two seconds ahead: the service's own timer wakes its
    // lanes then, as for leads due ten minutes after they came, and the run
    // is timed from that moment (graphile-worker's from its runner's start,
    // its jobs due already).
    let due_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    client
        .execute(
            "update notification_jobs set due_at = $1 where status = 'scheduled'",
            &[&due_at],
        )
        .await
        .unwrap();
    // Statistics, as a table in service has them: the service's sessions
    // keep generic plans, and those it made on the empty tables at its
    // start read the tables whole (ANALYZE makes every session plan again).
    client
        .batch_execute("analyze notification_jobs, landing_leads")
        .await
        .unwrap();
    // one prepared statement (planned once), so that polling costs the run
    // little: jobs not sent yet, whether promoted or past their moment
    let busy = client
        .prepare(
            "select exists (select 1 from notification_jobs where status in ('due', 'sending'))
                 or exists (select 1 from notification_jobs where status = 'scheduled' and due_at <= now())",
        )
        .await
        .unwrap();
    let until_due = (due_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_due).await;
    let t0 = Instant::now();
    let mut peak_rss = idle_rss;
    until(Duration::from_secs(300), || {
        peak_rss = peak_rss.max(rss_kib(serve.child.id()));
        let (client, busy) = (&client, &busy);
        async move { !client.query_one(busy, &[]).await.unwrap().get::<_, bool>(0) }
    })
    .await;
    let drained = t0.elapsed();
    let sent = count(
        &client,
        "select count(*) from notification_jobs where status = 'sent'",
    )
    .await;
    let rate = sent as f64 / drained.as_secs_f64();
    // statistics of the drained queue, as autovacuum would take them within
    // the minute: the plans the next scenarios make must not expect 10,000
    // scheduled jobs
    client
        .batch_execute("analyze notification_jobs, landing_leads")
        .await
        .unwrap();
    // each lane's span: the one that finishes last is what to speed up
    for row in client
        .query(
            "select channel, count(*), extract(epoch from max(sent_at) - min(sent_at))::float8
             from notification_jobs where status = 'sent' group by 1",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "-- {}: {} sent over {:.2} s",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, f64>(2)
        );
    }

    let graphile_url = {
        let admin = store::connect(&cluster.url("postgres")).await.unwrap();
        admin
            .batch_execute("create database bench_graphile")
            .await
            .unwrap();
        cluster.url("bench_graphile")
    };
    let reference = |args: &[&str]| match &graphile {
        Ok(g) => g.run(&graphile_url, args),
        Err(e) => Err(e.clone()),
    };
    let g_throughput = reference(&["throughput", &jobs.to_string(), "10"]);
    rows.push(row_against(
        &format!("processing rate, {jobs} due jobs"),
        format!(
            "{rate:.0} jobs/s ({concurrency} per channel, 2 channels, emails in batches of up to {email_batch})"
        ),
        against(
            &g_throughput,
            |v| {
                format!(
                    "graphile-worker: {:.0} jobs/s (concurrency 10)",
                    v["jobs_per_second"].as_f64().unwrap_or(f64::NAN)
                )
            },
            rate,
            "jobs_per_second",
            "",
        ),
        ">= 2.5x graphile-worker (median of 3 runs)",
    ));

    if profile {
        statement_profile(&client, "processing").await;
    }
    if explain || std::env::var("BENCH_KEEP_LOG").is_ok() {
        keep_log(&cluster, "processing");
    }
    if only == "processing" {
        print_table(&rows);
        return;
    }

    // 3. Pickup latency: promotion commit → provider request, one job at a time.
    rows.push(pickup_latency(&client, &mock, &reference).await);
    if profile {
        statement_profile(&client, "pickup").await;
    }

    // 4. Timing accuracy: 200 jobs due at the same future moment.
    rows.push(timing_accuracy(&client, &mock, &reference).await);
    if explain || std::env::var("BENCH_KEEP_LOG").is_ok() {
        keep_log(&cluster, "timing");
    }

    // 5. Webhook ingestion: signed Resend events for sent emails, stored and applied.
    rows.push(webhook_ingestion(&client, &serve.base).await);

    // 6. Footprint.
    rows.push(row(
        "footprint",
        format!(
            "RSS {:.1} MB idle, {:.1} MB peak while processing; start-up {:.0} ms to /readyz",
            idle_rss as f64 / 1024.0,
            peak_rss as f64 / 1024.0,
            startup.as_secs_f64() * 1000.0
        ),
        "-".into(),
        "-".into(),
        "<= 30 MB idle",
    ));

    if only == "serve" {
        print_table(&rows);
        return;
    }

    // 7. Email burst against a Resend that enforces 2 requests/s.
    drop(serve);
    rows.push(email_burst(&cluster, &client, &mock, &mock_url).await);

    // 8. Scale: claim latency with 10k and with 1M rows, mostly finished.
    rows.extend(scale(&cluster).await);

    // 9. The ops console with 1M leads and 3M jobs.
    rows.extend(console(&cluster, &mock_url).await);

    // 10. `leadrelay migrate` of the index-building migrations at 1M leads.
    rows.extend(migrate_under_load(&cluster).await);

    println!();
    print_table(&rows);
    println!("\n(took {:.0} s)", started.elapsed().as_secs_f64());
}
