//! The benchmark: `cargo bench --bench leadrelay`.
//!
//! Starts its own throwaway PostgreSQL cluster (pg_cron preloaded when
//! installed), a local mock Resend and Mobizon that answer at once, and the
//! real release binary (`leadrelay serve`), then runs every scenario and
//! prints one table: each figure, the reference measured in the same run, the
//! ratio and the target. References: PostgreSQL itself (the same INSERT on a
//! table without leadrelay's trigger; a no-op HTTP route) and graphile-worker
//! 0.16, installed from the npm registry into a temporary directory at run
//! time (never committed; skipped with a note when Node or npm is missing).
//!
//! Figures, never assertions: nothing here fails on a slow machine.

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

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LANDING_INSERT: &str = "\\set id random(1, 1000000000)\n\
insert into TABLE (name, email, phone, source, metadata) values ('Айгерим', 'lead' || :id || '@gmail.com', '+7 (705) 123-45-67', 'proftest_main', '{\"answers\": [3, 1, 4, 1, 5], \"utm_source\": \"instagram\"}');\n";

// ------------------------------------------------------------ the table

struct Row {
    scenario: String,
    measured: String,
    reference: String,
    ratio: String,
    target: String,
}

fn row(scenario: &str, measured: String, reference: String, ratio: String, target: &str) -> Row {
    println!("{scenario}: {measured} | {reference} | {ratio} | target {target}");
    Row {
        scenario: scenario.into(),
        measured,
        reference,
        ratio,
        target: target.into(),
    }
}

fn print_table(rows: &[Row]) {
    let headers = [
        "scenario",
        "measured",
        "reference (same run)",
        "ratio",
        "target",
    ];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.as_str(),
                r.measured.as_str(),
                r.reference.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: [&str; 5]| {
        let parts: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{}", line(headers));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in cells {
        println!("{}", line(c));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// The reference and ratio cells for a figure graphile-worker also
/// measured: `describe` writes its figure, the ratio is `ours` over its `key`.
fn against(
    reference: &Result<serde_json::Value, String>,
    describe: impl Fn(&serde_json::Value) -> String,
    ours: f64,
    key: &str,
    suffix: &str,
) -> (String, String) {
    match reference {
        Ok(v) => (
            describe(v),
            format!("{:.2}x{suffix}", ours / v[key].as_f64().unwrap_or(f64::NAN)),
        ),
        Err(e) => (format!("graphile-worker not run: {e}"), "-".into()),
    }
}

fn row_against(scenario: &str, measured: String, cells: (String, String), target: &str) -> Row {
    row(scenario, measured, cells.0, cells.1, target)
}

// ------------------------------------------------------------ the mock providers

struct Mock {
    emails: AtomicU64,
    /// requests to the batch endpoint
    batches: AtomicU64,
    sms: AtomicU64,
    rate_limited: AtomicU64,
    /// job id → when its email request arrived
    seen: Mutex<HashMap<i64, (Instant, SystemTime)>>,
    /// Resend's limit to enforce, requests per second (0: none)
    limit: AtomicU64,
    window: Mutex<(Instant, u64)>,
}

impl Default for Mock {
    fn default() -> Self {
        Mock {
            emails: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            sms: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            limit: AtomicU64::new(0),
            window: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl Mock {
    /// Resend's per-team limit, a fixed one-second window: the 429 it
    /// answers past the limit, or the rate-limit headers Resend sends with
    /// every answer (`ratelimit-reset` in whole seconds, as Resend sends it).
    fn over_limit(&self) -> Result<[(&'static str, String); 3], Box<axum::response::Response>> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Ok([
                ("ratelimit-limit", "1000000".into()),
                ("ratelimit-remaining", "1000000".into()),
                ("ratelimit-reset", "1".into()),
            ]);
        }
        let mut window = self.window.lock().unwrap();
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        let reset = (Duration::from_secs(1).saturating_sub(window.0.elapsed()))
            .as_secs_f64()
            .ceil()
            .max(1.0)
            .to_string();
        if window.1 >= limit {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(
                (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", reset.clone()),
                    ("ratelimit-limit", limit.to_string()),
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", reset),
                ],
                axum::Json(serde_json::json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"})),
            )
                .into_response(),
            ));
        }
        window.1 += 1;
        Ok([
            ("ratelimit-limit", limit.to_string()),
            ("ratelimit-remaining", (limit - window.1).to_string()),
            ("ratelimit-reset", reset),
        ])
    }

    fn saw(&self, job_id: Option<i64>) {
        self.emails.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = job_id {
            self.seen
                .lock()
                .unwrap()
                .insert(id, (Instant::now(), SystemTime::now()));
        }
    }
}

async fn resend(State(mock): State<Arc<Mock>>, headers: HeaderMap) -> axum::response::Response {
    let limits = match mock.over_limit() {
        Ok(limits) => limits,
        Err(refused) => return *refused,
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    mock.saw(
        key.strip_prefix("leadrelay-job-")
            .and_then(|id| id.parse::<i64>().ok()),
    );
    (
        limits,
        axum::Json(serde_json::json!({ "id": format!("email-{key}") })),
    )
        .into_response()
}

/// `POST /emails/batch`: one request against the limit for up to 100 emails;
/// each email's job id is in its `leadrelay_job` tag.
async fn resend_batch(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let limits = match mock.over_limit() {
        Ok(limits) => limits,
        Err(refused) => return *refused,
    };
    mock.batches.fetch_add(1, Ordering::Relaxed);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let emails: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    let mut data = Vec::with_capacity(emails.len());
    for (i, email) in emails.iter().enumerate() {
        let job_id = email["tags"].as_array().and_then(|tags| {
            tags.iter()
                .find(|t| t["name"] == "leadrelay_job")
                .and_then(|t| t["value"].as_str()?.parse().ok())
        });
        mock.saw(job_id);
        data.push(serde_json::json!({ "id": format!("email-{key}-{i}") }));
    }
    (limits, axum::Json(serde_json::json!({ "data": data }))).into_response()
}

async fn mobizon(State(mock): State<Arc<Mock>>) -> axum::Json<serde_json::Value> {
    let n = mock.sms.fetch_add(1, Ordering::Relaxed);
    axum::Json(
        serde_json::json!({"code": 0, "data": {"campaignId": "1", "messageId": n.to_string(), "status": 2}, "message": ""}),
    )
}

async fn start_mock(mock: Arc<Mock>) -> String {
    let app = Router::new()
        .route("/emails", post(resend))
        .route("/emails/batch", post(resend_batch))
        .route("/service/message/sendsmsmessage", post(mobizon))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

// ------------------------------------------------------------ helpers

async fn database(cluster: &Cluster, name: &str) -> Client {
    dev::create_migrated_database(cluster, name)
        .await
        .expect("migrated database")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn until<F, Fut>(limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    /// Waits until `/readyz` answers 2xx.
    async fn ready(&self) {
        let http = reqwest::Client::new();
        until(Duration::from_secs(30), || async {
            http.get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(db_url: &str, mock_url: &str, extra: &[(&str, &str)]) -> Serve {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadrelay"));
    cmd.arg("serve")
        .env("DATABASE_URL", db_url)
        .env("RESEND_API_KEY", "re_bench")
        .env("RESEND_API_URL", mock_url)
        .env("EMAIL_FROM", "bench@academy.kz")
        .env("RESEND_MAX_RPS", "100000")
        .env("MOBIZON_API_KEY", "kz_bench")
        .env("MOBIZON_API_URL", mock_url)
        .env("MOBIZON_MAX_RPS", "100000")
        .env("PRODUCT_URL", "https://academy.kz/product")
        .env("RESEND_WEBHOOK_SECRET", SECRET)
        .env("MOBIZON_WEBHOOK_TOKEN", "bench-token-0123456789")
        .env("ADMIN_TOKEN", "bench-admin-0123456789")
        .env("MOBIZON_POLL_INTERVAL", "off")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        // one log line per state change would measure the terminal
        .env("LEADRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Serve {
        child: cmd.spawn().expect("spawn leadrelay serve"),
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// 1,000 leads due at once against a mock Resend that allows 2 requests per
/// second and answers 429 past that: emails per second from the promotion to
/// the last email, and the 429s.
async fn email_burst(cluster: &Cluster, client: &Client, mock: &Mock, mock_url: &str) -> Row {
    let burst: i32 = 1000;
    mock.limit.store(2, Ordering::Relaxed);
    *mock.window.lock().unwrap() = (Instant::now(), 0);
    let before = mock.emails.load(Ordering::Relaxed);
    let batches_before = mock.batches.load(Ordering::Relaxed);
    let limited_before = mock.rate_limited.load(Ordering::Relaxed);
    let serve = spawn_serve(
        &cluster.url("postgres"),
        mock_url,
        &[("RESEND_MAX_RPS", "2"), ("WORKER_CONCURRENCY", "4")],
    );
    serve.ready().await;
    client
        .execute(
            "insert into landing_leads (name, email, source) select 'Burst ' || g, 'b' || g || '@mail.ru', 'proftest_burst' from generate_series(1, $1::int) g",
            &[&burst],
        )
        .await
        .unwrap();
    client
        .batch_execute("update notification_jobs set due_at = now() where status = 'scheduled' and channel = 'email'")
        .await
        .unwrap();
    let t0 = Instant::now();
    client
        .batch_execute("select promote_due_notification_jobs(100000)")
        .await
        .unwrap();
    until(Duration::from_secs(120), || async {
        mock.emails.load(Ordering::Relaxed) - before >= burst as u64
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let emails = mock.emails.load(Ordering::Relaxed) - before;
    let requests = mock.batches.load(Ordering::Relaxed) - batches_before;
    let limited = mock.rate_limited.load(Ordering::Relaxed) - limited_before;
    drop(serve);
    row(
        &format!("email burst, {burst} leads due at once, Resend enforcing 2 req/s"),
        format!(
            "{:.0} emails/s ({emails} emails in {elapsed:.1} s, {requests} batch requests), {limited} 429s",
            emails as f64 / elapsed
        ),
        "-".into(),
        "-".into(),
        ">= 100 emails/s (batch endpoint), no 429 after the first",
    )
}

/// BENCH_PROFILE: the statements that took the most time since the last
/// call, from pg_stat_statements (functions' inner statements included).
async fn statement_profile(client: &Client, phase: &str) {
    client
        .batch_execute("create extension if not exists pg_stat_statements")
        .await
        .unwrap();
    println!("-- statement profile: {phase}");
    for row in client
        .query(
            "select calls, round(total_exec_time::numeric, 1)::text, round(mean_exec_time::numeric, 3)::text,
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
             from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
             order by total_exec_time desc limit 12",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "{:>8} calls {:>9} ms total {:>7} ms mean  {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }
    client
        .batch_execute("select pg_stat_statements_reset()")
        .await
        .unwrap();
}

/// Signed Resend events (four per sent email, shuffled) posted by 32
/// concurrent clients; each answered 2xx only once stored and applied.
async fn webhook_ingestion(client: &Client, base: &str) -> Row {
    let message_ids: Vec<String> = client
        .query("select provider_message_id from notification_jobs where channel = 'email' and status = 'sent' limit 5000", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let key = SigningKey::parse(SECRET).unwrap();
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
    let load = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .unwrap();
    let now = chrono::Utc::now().timestamp().to_string();
    let signed: Vec<reqwest::RequestBuilder> = events
        .iter()
        .enumerate()
        .map(|(i, (email_id, kind))| {
            let body = serde_json::to_vec(&serde_json::json!({"type": kind, "created_at": chrono::Utc::now().to_rfc3339(), "data": {"email_id": email_id}})).unwrap();
            let svix_id = format!("msg_bench_{i}");
            let signature = key.signature(&svix_id, &now, &body);
            load.post(format!("{}/webhooks/resend", base))
                .header("svix-id", svix_id)
                .header("svix-timestamp", now.clone())
                .header("svix-signature", signature)
                .body(body)
        })
        .collect();
    let total = signed.len();
    let (took, ok) = drive(32, signed).await;
    let noop: Vec<_> = (0..total)
        .map(|_| load.get(format!("{}/healthz", base)))
        .collect();
    let (noop_took, noop_ok) = drive(32, noop).await;
    let ingest = ok as f64 / took.as_secs_f64();
    let noop_rate = noop_ok as f64 / noop_took.as_secs_f64();
    row(
        &format!("webhook ingestion, {total} signed events"),
        format!("{ingest:.0} events/s stored ({ok} ok)"),
        format!("no-op route: {noop_rate:.0} requests/s"),
        format!("{:.2}x", ingest / noop_rate),
        ">= 5,000 events/s",
    )
}

// ------------------------------------------------------------ graphile-worker

struct Graphile {
    dir: PathBuf,
}

impl Graphile {
    fn install() -> Result<Graphile, String> {
        let dir = tempfile::Builder::new()
            .prefix("leadrelay-graphile-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/graphile");
        for file in ["package.json", "reference.mjs"] {
            std::fs::copy(source.join(file), dir.join(file)).map_err(|e| e.to_string())?;
        }
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm install graphile-worker failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Graphile { dir })
    }

    fn run(&self, url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new("node")
            .arg("reference.mjs")
            .arg(url)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("node: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                format!(
                    "graphile-worker {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("no output")
                )
            })
    }
}

// ------------------------------------------------------------ scenarios

/// pgbench of the Node-style INSERT, with and without leadrelay's trigger.
fn pgbench(
    cluster: &Cluster,
    db_name: &str,
    table: &str,
    clients: u32,
    seconds: u32,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, LANDING_INSERT.replace("TABLE", table)).unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .args([
            "-l",
            "--log-prefix",
            &dir.path().join("log").display().to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(db_name)
        .output()
        .expect("pgbench (Debian package postgresql-15 or postgresql-client-15)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let mut latencies: Vec<f64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("log"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    (tps, percentile(&latencies, 0.99))
}

/// Claim latency (ms, p50) with `total` rows in notification_jobs, of which
/// 100 are due and the rest finished.
/// A database with `total` jobs in notification_jobs, 100 of them due and
/// the rest sent, vacuumed and checkpointed, ready for claims.
async fn jobs_database(cluster: &Cluster, name: &str, total: i64) -> Client {
    let client = database(cluster, name).await;
    client
        .execute(
            "insert into notification_jobs (lead_id, channel, template, recipient, status, due_at, sent_at, finished_at)
             select gen_random_uuid(), 'email', 'proftest_result', 'a@b.kz',
                    case when g <= 100 then 'due' else 'sent' end, now() - interval '1 day',
                    case when g > 100 then now() end, case when g > 100 then now() end
             from generate_series(1, $1::bigint) g",
            &[&total],
        )
        .await
        .unwrap();
    // and the checkpoint that many new rows call for, before measuring
    for sql in ["vacuum analyze notification_jobs", "checkpoint"] {
        client.batch_execute(sql).await.unwrap();
    }
    client
}

/// Claims 10 of the due jobs `rounds` times (each put back by an untimed
/// statement); the time of each claim in ms.
async fn claim_times(client: &Client, rounds: usize) -> Vec<f64> {
    let claim = client
        .prepare(leadrelay::store::queue::CLAIM)
        .await
        .unwrap();
    let reset = client
        // through the index of jobs in flight: a scan of the whole table between
        // claims would measure the scan's wake, not the claim
        .prepare("update notification_jobs set status = 'due', locked_by = null, locked_until = null, attempts = 0 where status = 'sending' and locked_by = 'bench'")
        .await
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let rows = client
            .query(
                &claim,
                &[&"email", &10i64, &"bench", &60.0f64, &None::<&str>],
            )
            .await
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(!rows.is_empty());
        client.execute(&reset, &[]).await.unwrap();
    }
    times
}

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
        let admin = store::connect(&cluster.url("postgres")).await.unwrap();
        admin
            .batch_execute("alter system set pg_stat_statements.track = 'all'")
            .await
            .unwrap();
        admin
            .batch_execute("select pg_reload_conf()")
            .await
            .unwrap();
    }
    // 1. Lead insert cost.
    if only.is_empty() || only == "insert" {
        let insert_db = database(&cluster, "bench_insert").await;
        insert_db
            .batch_execute("create table landing_leads_bare (like landing_leads including all)")
            .await
            .unwrap();
        for clients in [1, 8] {
            let (bare_tps, bare_p99) =
                pgbench(&cluster, "bench_insert", "landing_leads_bare", clients, 8);
            let (tps, p99) = pgbench(&cluster, "bench_insert", "landing_leads", clients, 8);
            rows.push(row(
                &format!("lead insert, {clients} client(s)"),
                format!("{tps:.0} tps, p99 {p99:.2} ms"),
                format!("no trigger: {bare_tps:.0} tps, p99 {bare_p99:.2} ms"),
                format!("{:.2}x cost, +{:.2} ms p99", bare_tps / tps, p99 - bare_p99),
                "<= 1.3x, <= +1 ms",
            ));
        }
        drop(insert_db);
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
    let mock = Arc::new(Mock::default());
    let mock_url = start_mock(Arc::clone(&mock)).await;
    if only == "scale" {
        rows.push(scale(&cluster).await);
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
        rows.push(webhook_ingestion(&client, &serve.base).await);
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
    client
        .batch_execute("update notification_jobs set due_at = now() - interval '1 second' where status = 'scheduled'")
        .await
        .unwrap();
    let t0 = Instant::now();
    client
        .batch_execute("select promote_due_notification_jobs(1000000)")
        .await
        .unwrap();
    let mut peak_rss = idle_rss;
    until(Duration::from_secs(300), || {
        peak_rss = peak_rss.max(rss_kib(serve.child.id()));
        let client = &client;
        async move {
            // one index probe, so that polling costs the run little
            !client
                .query_one(
                    "select exists (select 1 from notification_jobs where status in ('due', 'sending'))",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    })
    .await;
    let drained = t0.elapsed();
    let sent = count(
        &client,
        "select count(*) from notification_jobs where status = 'sent'",
    )
    .await;
    let rate = sent as f64 / drained.as_secs_f64();

    let graphile = Graphile::install();
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
        ">= 2x graphile-worker",
    ));

    if profile {
        statement_profile(&client, "processing").await;
    }
    if only == "processing" {
        print_table(&rows);
        return;
    }

    // 3. Pickup latency: promotion commit → provider request, one job at a time.
    client
        .batch_execute("update notification_rules set enabled = (channel = 'email')")
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, source) select 'Latency ' || g, 'lat' || g || '@mail.ru', 'proftest_latency' from generate_series(1, 1000) g",
            &[],
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
    let mut pickup = Vec::new();
    for id in &ids {
        client.execute(&make_due, &[id]).await.unwrap();
        // from the promotion call: it includes the promotion's own round
        // trip, so the figure is an upper bound of commit → request
        let t0 = Instant::now();
        client.query_one(&promote, &[]).await.unwrap();
        let got = until(Duration::from_secs(10), || {
            let seen = mock.seen.lock().unwrap().get(id).map(|s| s.0);
            async move { seen.is_some() }
        })
        .await;
        if got {
            let at = mock.seen.lock().unwrap()[id].0;
            pickup.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    pickup.sort_by(|a, b| a.total_cmp(b));
    let g_latency = reference(&["latency", "1000"]);
    rows.push(row_against(
        "pickup latency, 1,000 jobs one by one",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&pickup, 0.5),
            percentile(&pickup, 0.99),
            pickup.last().copied().unwrap_or(f64::NAN)
        ),
        against(
            &g_latency,
            |v| {
                format!(
                    "graphile-worker add → start: p50 {:.2} ms, p99 {:.2} ms",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            },
            percentile(&pickup, 0.99),
            "p99_ms",
            " (p99)",
        ),
        "p99 <= 5 ms",
    ));

    // 4. Timing accuracy: 200 jobs due at the same future moment.
    let due_at = chrono::Utc::now() + chrono::Duration::seconds(4);
    client
        .execute(
            "insert into landing_leads (name, email, source, created_at)
             select 'Timing ' || g, 'at' || g || '@mail.ru', 'proftest_timing', $1::timestamptz - interval '1 day' from generate_series(1, 200) g",
            &[&due_at],
        )
        .await
        .unwrap();
    let timing_ids: Vec<i64> = client
        .query("select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id where l.source = 'proftest_timing'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected = timing_ids.len();
    until(Duration::from_secs(30), || {
        let n = timing_ids
            .iter()
            .filter(|id| mock.seen.lock().unwrap().contains_key(id))
            .count();
        async move { n == expected }
    })
    .await;
    let due_system: SystemTime = due_at.into();
    let mut late: Vec<f64> = timing_ids
        .iter()
        .filter_map(|id| mock.seen.lock().unwrap().get(id).map(|s| s.1))
        .map(|at| match at.duration_since(due_system) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -(e.duration().as_secs_f64() * 1000.0),
        })
        .collect();
    late.sort_by(|a, b| a.total_cmp(b));
    let g_timing = reference(&["timing", "200", "4000"]);
    rows.push(row_against(
        "timing accuracy, 200 jobs due at once",
        format!(
            "late p50 {:.1} ms, p99 {:.1} ms",
            percentile(&late, 0.5),
            percentile(&late, 0.99)
        ),
        against(
            &g_timing,
            |v| {
                format!(
                    "graphile-worker run_at: late p50 {:.0} ms, p99 {:.0} ms",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            },
            percentile(&late, 0.99),
            "p99_ms",
            " (p99)",
        ),
        "p99 <= 100 ms late",
    ));

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

    // 7. Email burst against a Resend that enforces 2 requests/s.
    drop(serve);
    rows.push(email_burst(&cluster, &client, &mock, &mock_url).await);

    // 8. Scale: claim latency with 10k and with 1M rows, mostly finished.
    rows.push(scale(&cluster).await);

    println!();
    print_table(&rows);
    println!("\n(took {:.0} s)", started.elapsed().as_secs_f64());
}

/// Claim latency with 10k and with 1M rows in notification_jobs, mostly
/// finished: the claim must not grow with the history.
async fn scale(cluster: &Cluster) -> Row {
    let small_db = jobs_database(cluster, "bench_scale_10k", 10_000).await;
    let scale = jobs_database(cluster, "bench_scale_1m", 1_000_000).await;
    // Alternating rounds, so that both sizes meet the same machine (other
    // work, cache, autovacuum) rather than one after the other; the ratio is
    // the median of the rounds' ratios, so one disturbed round does not
    // decide it.
    let (mut small, mut large, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut s = claim_times(&small_db, 60).await;
        let mut l = claim_times(&scale, 60).await;
        s.sort_by(|a, b| a.total_cmp(b));
        l.sort_by(|a, b| a.total_cmp(b));
        ratios.push(percentile(&l, 0.5) / percentile(&s, 0.5));
        small.extend(s);
        large.extend(l);
    }
    for times in [&mut small, &mut large, &mut ratios] {
        times.sort_by(|a, b| a.total_cmp(b));
    }
    let (small, large) = (percentile(&small, 0.5), percentile(&large, 0.5));
    let ratio = percentile(&ratios, 0.5);
    if std::env::var("BENCH_PROFILE").is_ok() {
        // The plan of the claim at 1M rows, run inside a transaction that is
        // rolled back, so it claims nothing.
        let sql = format!(
            "explain (analyze, buffers, costs off) {}",
            leadrelay::store::queue::CLAIM
        );
        scale.batch_execute("begin").await.unwrap();
        println!("-- the claim at 1M rows");
        for row in scale
            .query(&sql, &[&"email", &10i64, &"bench", &60.0f64, &None::<&str>])
            .await
            .unwrap()
        {
            println!("{}", row.get::<_, String>(0));
        }
        scale.batch_execute("rollback").await.unwrap();
    }
    row(
        "claim latency, 10 of 100 due jobs",
        format!("1M rows: p50 {large:.3} ms"),
        format!("10k rows: p50 {small:.3} ms"),
        format!(
            "{ratio:.2}x (median of 10 alternating rounds; {:.2}x to {:.2}x)",
            ratios[0],
            ratios[ratios.len() - 1]
        ),
        "<= 1.5x",
    )
}

async fn drive(concurrency: usize, requests: Vec<reqwest::RequestBuilder>) -> (Duration, usize) {
    let queue = Arc::new(Mutex::new(requests));
    let ok = Arc::new(AtomicU64::new(0));
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
    (started.elapsed(), ok.load(Ordering::Relaxed) as usize)
}
