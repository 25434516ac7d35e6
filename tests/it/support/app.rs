//! Running leadrelay against local mock providers: in-process
//! (`Application::build` on port 0) or as the real binary, for kill tests.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use leadrelay::cli::dev::books::{MobizonBook, RateWindow, ResendBook, SentEmail, TakenSms};
use leadrelay::config::{MobizonSettings, ResendSettings, ServeConfig};
use leadrelay::domain::Secret;
use leadrelay::serve::Application;
use leadrelay::worker::WorkerSettings;
use leadrelay::worker::retry::Backoff;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const PRODUCT_URL: &str = "https://academy.kz/product";
pub const RESEND_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const MOBIZON_WEBHOOK_TOKEN: &str = "mobizon-callback-token-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// Where the tests' service says people reach it (the unsubscribe links'
/// host; the tests post their path to the service's own address).
pub const PUBLIC_URL: &str = "https://leadrelay.academy.kz";

/// Answers like Resend, on `/emails` and `/emails/batch`, as every stand-in
/// does (`ResendBook`: the email id derived from the idempotency key, the
/// same key with the same body gets the first answer again, another body a
/// 409), after `delay`; a request without a key is refused.
pub struct ResendLike {
    book: ResendBook,
    pub delay: Duration,
}

impl ResendLike {
    pub fn new(delay: Duration) -> ResendLike {
        ResendLike {
            book: ResendBook::requiring_keys(),
            delay,
        }
    }

    /// Keeps what it sends in `book` (which `Providers` lists).
    pub fn into_book(mut self, book: &ResendBook) -> ResendLike {
        let mut shared = book.clone();
        shared.require_key = true;
        self.book = shared;
        self
    }
}

/// Resend's `GET /emails` and `GET /emails/{id}`, answered from the book,
/// within the rate window (`RateWindow`: limit 0, none).
pub struct ResendListing {
    pub book: ResendBook,
    pub window: std::sync::Arc<RateWindow>,
}

impl Respond for ResendListing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (headers, (status, body)) = match self.window.admit() {
            Ok(headers) => {
                let path = request.url.path();
                let answer = match path.strip_prefix("/emails/") {
                    Some(id) => self.book.get(id),
                    None => self.book.list(request.url.query().unwrap_or("")),
                };
                (headers, answer)
            }
            Err((headers, body)) => (headers, (429, body)),
        };
        let mut template = ResponseTemplate::new(status).set_body_json(body);
        for (name, value) in headers {
            template = template.insert_header(name, value.as_str());
        }
        template
    }
}

impl Respond for ResendLike {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok());
        let batch = request.url.path().ends_with("/batch");
        let (status, answer) = self.book.answer(batch, key, &request.body, |_, _| {});
        let template = ResponseTemplate::new(status).set_body_json(answer);
        if status == 200 {
            template
                .insert_header("ratelimit-limit", "50")
                .set_delay(self.delay)
        } else {
            template
        }
    }
}

/// Mobizon's `message/list`, answered from the book (`MobizonBook::list`).
struct Listing(MobizonBook);

impl Respond for Listing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(self.0.list(&request.body))
    }
}

/// Answers like Mobizon's sendSmsMessage: code 0 and a new message id, the
/// message taken into its book first. Requests for which `hang(n)` holds
/// (n from 1) are taken and answered only after `hang_for`: a Mobizon that
/// took the message and answered too late.
pub struct MobizonLike {
    next: AtomicU64,
    pub delay: Duration,
    book: MobizonBook,
    hang: Box<dyn Fn(u64) -> bool + Send + Sync>,
    hang_for: Duration,
}

impl MobizonLike {
    pub fn new(delay: Duration) -> MobizonLike {
        MobizonLike {
            next: AtomicU64::new(1),
            delay,
            book: MobizonBook::default(),
            hang: Box::new(|_| false),
            hang_for: Duration::ZERO,
        }
    }

    /// Takes its messages into `book` (which `Providers` lists).
    pub fn into_book(mut self, book: &MobizonBook) -> MobizonLike {
        self.book = book.clone();
        self
    }

    pub fn hanging(
        mut self,
        hang: impl Fn(u64) -> bool + Send + Sync + 'static,
        hang_for: Duration,
    ) -> MobizonLike {
        self.hang = Box::new(hang);
        self.hang_for = hang_for;
        self
    }
}

impl Respond for MobizonLike {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let sms = self.book.take(&request.body);
        let delay = if (self.hang)(n) {
            self.hang_for
        } else {
            self.delay
        };
        ResponseTemplate::new(200)
            .set_body_json(MobizonBook::sent_answer(&sms))
            .set_delay(delay)
    }
}

pub struct Providers {
    pub resend: MockServer,
    pub mobizon: MockServer,
    /// What Mobizon's stand-in took, listed by its `message/list`.
    pub book: MobizonBook,
    /// What Resend's stand-in sent, listed by its `GET /emails`.
    pub emails_book: ResendBook,
    /// The rate limit of Resend's list (limit 0: none).
    pub list_window: std::sync::Arc<RateWindow>,
}

impl Providers {
    /// Both providers answering at once, successfully.
    pub async fn healthy() -> Providers {
        Providers::with_delays(Duration::ZERO, Duration::ZERO).await
    }

    pub async fn with_delays(email: Duration, sms: Duration) -> Providers {
        let providers = Providers::empty().await;
        providers
            .mount_resend(ResendLike::new(email).into_book(&providers.emails_book))
            .await;
        providers
            .mount_mobizon(MobizonLike::new(sms).into_book(&providers.book))
            .await;
        providers
    }

    /// Resend answers `first` once, then as Resend does; Mobizon at once.
    pub async fn resend_fails_once(first: impl Respond + 'static) -> Providers {
        let providers = Providers::empty().await;
        Mock::given(method("POST"))
            .and(path("/emails"))
            .respond_with(first)
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&providers.resend)
            .await;
        providers
            .mount_resend(ResendLike::new(Duration::ZERO).into_book(&providers.emails_book))
            .await;
        providers
            .mount_mobizon(MobizonLike::new(Duration::ZERO).into_book(&providers.book))
            .await;
        providers
    }

    /// No send endpoint yet; Mobizon's `message/list` answers from `book`,
    /// Resend's `GET /emails` from `emails_book`.
    pub async fn empty() -> Providers {
        let providers = Providers {
            resend: MockServer::start().await,
            mobizon: MockServer::start().await,
            book: MobizonBook::default(),
            emails_book: ResendBook::default(),
            list_window: Default::default(),
        };
        Mock::given(method("POST"))
            .and(path("/service/message/list"))
            .respond_with(Listing(providers.book.clone()))
            .mount(&providers.mobizon)
            .await;
        Mock::given(method("GET"))
            .and(path_regex("^/emails(/[^/]+)?$"))
            .respond_with(ResendListing {
                book: providers.emails_book.clone(),
                window: std::sync::Arc::clone(&providers.list_window),
            })
            .mount(&providers.resend)
            .await;
        providers
    }

    /// On both `/emails` and `/emails/batch`.
    pub async fn mount_resend(&self, responder: impl Respond + 'static) {
        Mock::given(method("POST"))
            .and(path_regex("^/emails(/batch)?$"))
            .respond_with(responder)
            .mount(&self.resend)
            .await;
    }

    pub async fn mount_mobizon(&self, responder: impl Respond + 'static) {
        Mock::given(method("POST"))
            .and(path("/service/message/sendsmsmessage"))
            .respond_with(responder)
            .mount(&self.mobizon)
            .await;
    }

    /// Mobizon's `getsmsstatus`, answering `status` for every id it is asked
    /// about (how a failure report is confirmed).
    pub async fn mount_mobizon_statuses(&self, status: &'static str) {
        Mock::given(method("POST"))
            .and(path("/service/message/getsmsstatus"))
            .respond_with(move |request: &Request| {
                // every id answered `status`, as if the book held none
                let answer = MobizonBook::default().statuses(&request.body, status);
                ResponseTemplate::new(200).set_body_json(answer)
            })
            .mount(&self.mobizon)
            .await;
    }

    /// The send requests Resend's stand-in received (list reads aside).
    pub async fn emails(&self) -> Vec<Request> {
        self.resend
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.method == wiremock::http::Method::POST)
            .collect()
    }

    /// Resend's list reads (`GET /emails…`).
    pub async fn email_list_reads(&self) -> Vec<Request> {
        self.resend
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.method == wiremock::http::Method::GET)
            .collect()
    }

    /// The send requests Mobizon's stand-in received (look-ups and status
    /// questions aside).
    pub async fn sms(&self) -> Vec<Request> {
        self.mobizon_requests("sendsmsmessage").await
    }

    /// Requests to Mobizon's `service/message/{method}`.
    pub async fn mobizon_requests(&self, method: &str) -> Vec<Request> {
        let path = format!("/service/message/{method}");
        self.mobizon
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == path)
            .collect()
    }
}

pub fn fast_worker() -> WorkerSettings {
    WorkerSettings {
        sweep_interval: Duration::from_secs(1),
        lease: Duration::from_secs(10),
        provider_timeout: Duration::from_secs(2),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        },
        concurrency: 4,
        shutdown_grace: Duration::from_secs(5),
        sms_unknown_outcome: Default::default(),
    }
}

pub fn config(db_url: &str, providers: &Providers) -> ServeConfig {
    ServeConfig {
        database_url: Secret::new(db_url),
        lead_tracking_database_url: None,
        resend: ResendSettings {
            api_key: Secret::new("re_test_key"),
            api_url: providers.resend.uri(),
            from: "Академия <hello@academy.kz>".into(),
            max_rps: 100.0,
            // The single-email path; the batch tests turn batching on.
            batch_size: 1,
        },
        mobizon: MobizonSettings {
            api_key: Secret::new("kz_test_key"),
            api_url: providers.mobizon.uri(),
            from: Some("Academy".into()),
            max_rps: 100.0,
        },
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        product_url: PRODUCT_URL.into(),
        worker: fast_worker(),
        resend_webhook_key: leadrelay::ingest::svix::SigningKey::parse(RESEND_WEBHOOK_SECRET)
            .unwrap(),
        mobizon_webhook_token: Secret::new(MOBIZON_WEBHOOK_TOKEN),
        mobizon_webhook_secret: None,
        admin_token: Secret::new(ADMIN_TOKEN),
        mobizon_poll_interval: None,
        dev_outbox: None,
        console: Default::default(),
        metrics_addr: None,
        public_url: Some(PUBLIC_URL.into()),
        unsubscribe_secret: None,
    }
}

/// The preamble most tests share: a database of their own (a clone of the
/// migrated template) with `setup` run on it first (`NO_DELAY`,
/// `LEAD_TRACKING_TABLE`…), a client on it, the stand-in providers, and the
/// service running on them in this process.
pub struct TestApp {
    pub db: crate::harness::TestDb,
    pub client: tokio_postgres::Client,
    pub providers: Providers,
    pub app: Application,
}

impl TestApp {
    pub async fn start(setup: &[&str], providers: Providers) -> TestApp {
        let db = crate::harness::fresh_db().await;
        let client = db.client().await;
        for sql in setup {
            client.batch_execute(sql).await.unwrap();
        }
        let app = start(config(&db.url, &providers)).await;
        TestApp {
            db,
            client,
            providers,
            app,
        }
    }
}

pub async fn start(config: ServeConfig) -> Application {
    Application::build(config)
        .await
        .expect("application starts")
}

/// The dashboard's table, as it looks in the tracking project.
pub const LEAD_TRACKING_TABLE: &str = leadrelay::worker::lead_tracking::DASHBOARD_TABLE;

/// Rules with no delay, so inserted leads are due at once.
pub const NO_DELAY: &str = "update public.notification_rules set delay = interval '0'";
/// Every rule waits an hour: only what the test does moves the new jobs.
pub const HOUR_DELAY: &str = "update public.notification_rules set delay = interval '1 hour'";

/// A lead's job on `channel`: its id and status.
pub async fn lead_job(
    client: &tokio_postgres::Client,
    lead: uuid::Uuid,
    channel: &str,
) -> (i64, String) {
    let row = client
        .query_one(
            "select id, status from notification_jobs where lead_id = $1 and channel = $2",
            &[&lead, &channel],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Waits until `check` returns true, polling; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Jobs not finished yet (scheduled, due or sending).
pub async fn unfinished(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "select count(*) from notification_jobs where status in ('scheduled', 'due', 'sending')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The real `leadrelay serve` process; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
}

impl ServeProcess {
    pub fn start(db_url: &str, providers: &Providers, extra: &[(&str, &str)]) -> ServeProcess {
        ServeProcess::start_limited(db_url, providers, extra, None)
    }

    /// The same, with the process's open-file limit (`ulimit -n`) set to
    /// `file_limit` when given, as systemd's `LimitNOFILE` would.
    pub fn start_limited(
        db_url: &str,
        providers: &Providers,
        extra: &[(&str, &str)],
        file_limit: Option<u64>,
    ) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadrelay"));
        if let Some(limit) = file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("RESEND_API_KEY", "re_test_key")
            .env("RESEND_API_URL", providers.resend.uri())
            .env("RESEND_MAX_RPS", "100")
            // the single-email path unless a test asks for batches
            .env("RESEND_BATCH_SIZE", "1")
            .env("EMAIL_FROM", "hello@academy.kz")
            .env("MOBIZON_API_KEY", "kz_test_key")
            .env("MOBIZON_API_URL", providers.mobizon.uri())
            .env("MOBIZON_MAX_RPS", "100")
            .env("PRODUCT_URL", PRODUCT_URL)
            .env("RESEND_WEBHOOK_SECRET", RESEND_WEBHOOK_SECRET)
            .env("MOBIZON_WEBHOOK_TOKEN", MOBIZON_WEBHOOK_TOKEN)
            .env("MOBIZON_WEBHOOK_SECRET", "mobizon-webhook-secret-key")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("MOBIZON_POLL_INTERVAL", "off")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("SWEEP_INTERVAL", "1s")
            .env("RETRY_BASE_DELAY", "100ms")
            .env("RETRY_MAX_DELAY", "500ms")
            .env("LEADRELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn leadrelay serve");
        // Keep the log readable for a failing test, without blocking the child.
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader};
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[serve {}] {line}", std::process::id());
                }
            });
        }
        ServeProcess { child }
    }

    /// Whether the process is still up (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill_9(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().expect("wait")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Runs the `leadrelay` binary as an operator would, with DATABASE_URL and
/// PRODUCT_URL set and warnings only in its log.
pub fn leadrelay_cli(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("PRODUCT_URL", PRODUCT_URL)
        .env("LEADRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run leadrelay")
}

/// Runs the `leadrelay` binary with the providers' keys and addresses set
/// to `providers`' stand-ins (as `reconcile` and `backfill` need them).
pub fn leadrelay_cli_with_providers(
    db_url: &str,
    providers: &Providers,
    args: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("PRODUCT_URL", PRODUCT_URL)
        .env("RESEND_API_KEY", "re_test_key")
        .env("RESEND_API_URL", providers.resend.uri())
        .env("MOBIZON_API_KEY", "kz_test_key")
        .env("MOBIZON_API_URL", providers.mobizon.uri())
        .env("LEADRELAY_LOG", "warn")
        .env("USER", "operator")
        .stdin(Stdio::null())
        .output()
        .expect("run leadrelay")
}

/// Posts the Resend event `event` to `app`'s webhook as `svix_id`, signed
/// as Svix signs it (with RESEND_WEBHOOK_SECRET, at the current time).
pub async fn post_resend_event(
    app: &Application,
    svix_id: &str,
    event: &serde_json::Value,
) -> reqwest::Response {
    let body = serde_json::to_vec(event).expect("an event");
    let key =
        leadrelay::ingest::svix::SigningKey::parse(RESEND_WEBHOOK_SECRET).expect("the secret");
    let timestamp = chrono::Utc::now().timestamp().to_string();
    reqwest::Client::new()
        .post(format!("http://{}/webhooks/resend", app.local_addr()))
        .header("svix-id", svix_id)
        .header("svix-timestamp", &timestamp)
        .header("svix-signature", key.signature(svix_id, &timestamp, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /webhooks/resend")
}

/// The ops page of `app`, read with ADMIN_TOKEN as a bearer token.
pub async fn ops_page(app: &Application) -> String {
    reqwest::Client::new()
        .get(format!("http://{}/ops", app.local_addr()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /ops")
        .text()
        .await
        .expect("the page")
}

/// `GET /leads/{lead}/status` of `app` with ADMIN_TOKEN, and the message of
/// `channel` in it.
pub async fn lead_status_message(
    app: &Application,
    lead: uuid::Uuid,
    channel: &str,
) -> serde_json::Value {
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/leads/{lead}/status", app.local_addr()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET status")
        .json()
        .await
        .expect("status json");
    status["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["channel"] == channel))
        .cloned()
        .unwrap_or_else(|| panic!("no {channel} message in {status}"))
}
