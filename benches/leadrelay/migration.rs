//! `leadrelay migrate` of the index-building migrations (the console's and
//! the landing-writes repair) on a database of 1M leads and 3M jobs, while
//! one client inserts leads as `service_role` as fast as it can: how long
//! each insert waited during the migration, beside the same client with no
//! migration running, and beside the same builds in one transaction each
//! (what `supabase db push` of the exported files does).

use leadrelay::cli::dev::Privileges;
use leadrelay::store::migrate;
use std::sync::atomic::AtomicBool;

use super::*;

/// The first migration that builds indexes on the landing's tables.
const FIRST_INDEX_BUILDING: &str = "20261202090000";

/// Each insert's wait, in milliseconds, from a client that inserts leads
/// back to back as `service_role` until `stop` is set.
fn insert_waits(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let client = store::connect(&url).await.unwrap();
        client.batch_execute("set role service_role").await.unwrap();
        let insert = client
            .prepare(
                "insert into public.landing_leads (name, email, phone, source)
                 values ('Айгерим', 'migrate' || $1::bigint || '@gmail.com', '+7 (705) 123-45-67', 'proftest_main')",
            )
            .await
            .unwrap();
        let mut waits = Vec::new();
        let mut n: i64 = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let t0 = Instant::now();
            client.execute(&insert, &[&n]).await.unwrap();
            waits.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        waits.sort_by(|a, b| a.total_cmp(b));
        waits
    })
}

fn summary(waits: &[f64]) -> String {
    let at = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)];
    format!(
        "longest {:.0} ms, p99 {:.1} ms, p50 {:.1} ms ({} inserts)",
        waits.last().copied().unwrap_or(f64::NAN),
        at(0.99),
        at(0.5),
        waits.len()
    )
}

/// Runs `work` while the inserting client runs; its waits meanwhile.
async fn waits_during<F: std::future::Future<Output = ()>>(url: &str, work: F) -> Vec<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = insert_waits(url.to_string(), Arc::clone(&stop));
    // the client is inserting before the work begins
    tokio::time::sleep(Duration::from_millis(500)).await;
    work.await;
    stop.store(true, Ordering::Relaxed);
    inserter.await.unwrap()
}

pub(crate) async fn migrate_under_load(cluster: &Cluster) -> Vec<Row> {
    let admin = store::connect(&cluster.url("postgres")).await.unwrap();
    admin
        .batch_execute("create database bench_migrate")
        .await
        .unwrap();
    let url = cluster.url("bench_migrate");
    let mut client = store::connect(&url).await.unwrap();
    client
        .batch_execute(&Privileges::SupabaseCurrent.before_migrations())
        .await
        .unwrap();
    let all = migrate::embedded().unwrap();
    let (earlier, building): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .partition(|m| m.version.as_str() < FIRST_INDEX_BUILDING);
    migrate::apply(&mut client, &earlier).await.unwrap();
    load_a_year_of_leads(&client).await;
    let indexes_before: Vec<String> = client
        .query(
            "select indexrelid::regclass::text from pg_index where indrelid in
               ('public.landing_leads'::regclass, 'public.notification_jobs'::regclass, 'public.notification_events'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let quiet = waits_during(&url, tokio::time::sleep(Duration::from_secs(10))).await;

    // The release binary, as an operator runs it.
    let mut took = Duration::ZERO;
    let during = waits_during(&url, async {
        let t0 = Instant::now();
        let binary = env!("CARGO_BIN_EXE_leadrelay").to_string();
        let url = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(binary)
                .arg("migrate")
                .env("DATABASE_URL", url)
                .env("LEADRELAY_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took = t0.elapsed();
    })
    .await;

    // The same builds as the Supabase CLI runs the exported files: each file
    // in one transaction.
    let built: Vec<String> = client
        .query(
            "select indexrelid::regclass::text from pg_index where indrelid in
               ('public.landing_leads'::regclass, 'public.notification_jobs'::regclass, 'public.notification_events'::regclass)
               and not (indexrelid::regclass::text = any($1))",
            &[&indexes_before],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in &built {
        client
            .batch_execute(&format!("drop index {index}"))
            .await
            .unwrap();
    }
    let mut cli_took = Duration::ZERO;
    let one_transaction = waits_during(&url, async {
        let t0 = Instant::now();
        for m in &building {
            let sql = migrate::for_one_transaction(&m.sql).unwrap();
            client
                .batch_execute(&format!("begin; {sql}; commit;"))
                .await
                .unwrap();
        }
        cli_took = t0.elapsed();
    })
    .await;

    let longest = during.last().copied().unwrap_or(f64::NAN);
    vec![
        row(
            "migrate at 1M leads: the landing's INSERT wait",
            format!(
                "during `leadrelay migrate` ({:.0} s, {} indexes built concurrently): {}",
                took.as_secs_f64(),
                built.len(),
                summary(&during)
            ),
            format!("no migration: {}", summary(&quiet)),
            format!(
                "{:.2}x the quiet longest",
                longest / quiet.last().copied().unwrap_or(f64::NAN)
            ),
            "no insert waits > 1 s",
        ),
        row(
            "the same builds in one transaction per file (the CLI path)",
            format!(
                "{:.0} s: {}",
                cli_took.as_secs_f64(),
                summary(&one_transaction)
            ),
            "-".into(),
            "-".into(),
            "-",
        ),
    ]
}
