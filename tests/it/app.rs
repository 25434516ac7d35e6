//! Running leadrelay against local mock providers: in-process
//! (`Application::build` on port 0) or as the real binary, for kill tests.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Answers like Resend, on `/emails` and `/emails/batch`: the email id is
/// derived from the idempotency key (and the position in a batch), the same
/// key with the same body gets the first answer again, and the same key with
/// another body is a 409.
pub struct ResendLike {
    bodies: Mutex<HashMap<String, Vec<u8>>>,
    pub delay: Duration,
}

impl ResendLike {
    pub fn new(delay: Duration) -> ResendLike {
        ResendLike {
            bodies: Mutex::new(HashMap::new()),
            delay,
        }
    }
}

impl Respond for ResendLike {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Some(key) = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return ResponseTemplate::new(422)
                .set_body_json(serde_json::json!({"statusCode": 422, "name": "missing_required_field", "message": "no idempotency key in this test"}));
        };
        let mut bodies = self.bodies.lock().unwrap();
        if let Some(first) = bodies.get(&key)
            && first != &request.body
        {
            return ResponseTemplate::new(409).set_body_json(serde_json::json!({
                "statusCode": 409, "name": "invalid_idempotent_request",
                "message": "Same idempotency key used with a different request payload."}));
        }
        bodies.insert(key.clone(), request.body.clone());
        let answer = if request.url.path().ends_with("/batch") {
            let Ok(emails) = serde_json::from_slice::<Vec<serde_json::Value>>(&request.body) else {
                return ResponseTemplate::new(422).set_body_json(serde_json::json!({
                    "statusCode": 422, "name": "validation_error", "message": "expected a list of emails"}));
            };
            if emails.is_empty() || emails.len() > 100 {
                return ResponseTemplate::new(422).set_body_json(serde_json::json!({
                    "statusCode": 422, "name": "validation_error", "message": "1 to 100 emails"}));
            }
            let data: Vec<_> = (0..emails.len())
                .map(|i| serde_json::json!({"id": format!("email-{key}-{i}")}))
                .collect();
            serde_json::json!({ "data": data })
        } else {
            serde_json::json!({"id": format!("email-{key}")})
        };
        ResponseTemplate::new(200)
            .set_body_json(answer)
            .insert_header("ratelimit-limit", "50")
            .set_delay(self.delay)
    }
}

/// Answers like Mobizon's sendSmsMessage: code 0 and a new message id.
pub struct MobizonLike {
    next: AtomicU64,
    pub delay: Duration,
}

impl MobizonLike {
    pub fn new(delay: Duration) -> MobizonLike {
        MobizonLike {
            next: AtomicU64::new(1000),
            delay,
        }
    }
}

impl Respond for MobizonLike {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"code": 0, "data": {"campaignId": "77", "messageId": id.to_string(), "status": 2}, "message": ""}))
            .set_delay(self.delay)
    }
}

pub struct Providers {
    pub resend: MockServer,
    pub mobizon: MockServer,
}

impl Providers {
    /// Both providers answering at once, successfully.
    pub async fn healthy() -> Providers {
        Providers::with_delays(Duration::ZERO, Duration::ZERO).await
    }

    pub async fn with_delays(email: Duration, sms: Duration) -> Providers {
        let providers = Providers::empty().await;
        providers.mount_resend(ResendLike::new(email)).await;
        providers.mount_mobizon(MobizonLike::new(sms)).await;
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
            .mount_resend(ResendLike::new(Duration::ZERO))
            .await;
        providers
            .mount_mobizon(MobizonLike::new(Duration::ZERO))
            .await;
        providers
    }

    pub async fn empty() -> Providers {
        Providers {
            resend: MockServer::start().await,
            mobizon: MockServer::start().await,
        }
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
                let data: Vec<serde_json::Value> = url::form_urlencoded::parse(&request.body)
                    .filter(|(k, _)| k == "ids[]")
                    .map(|(_, id)| serde_json::json!({"id": id, "status": status}))
                    .collect();
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"code": 0, "data": data, "message": ""}))
            })
            .mount(&self.mobizon)
            .await;
    }

    pub async fn emails(&self) -> Vec<Request> {
        self.resend.received_requests().await.unwrap_or_default()
    }

    pub async fn sms(&self) -> Vec<Request> {
        self.mobizon.received_requests().await.unwrap_or_default()
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadrelay"));
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
