//! The mock providers: Resend (single and batch, rate-limited when asked) and Mobizon.

use super::*;

pub(crate) struct Mock {
    pub(crate) emails: AtomicU64,
    /// requests to the batch endpoint
    pub(crate) batches: AtomicU64,
    pub(crate) sms: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    /// job id → when its email request arrived
    pub(crate) seen: Mutex<HashMap<i64, (Instant, SystemTime)>>,
    /// Resend's limit to enforce, requests per second (0: none)
    pub(crate) limit: AtomicU64,
    pub(crate) window: Mutex<(Instant, u64)>,
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
    pub(crate) fn over_limit(
        &self,
    ) -> Result<[(&'static str, String); 3], Box<axum::response::Response>> {
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

    pub(crate) fn saw(&self, job_id: Option<i64>) {
        self.emails.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = job_id {
            self.seen
                .lock()
                .unwrap()
                .insert(id, (Instant::now(), SystemTime::now()));
        }
    }
}

pub(crate) async fn resend(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let limits = match mock.over_limit() {
        Ok(limits) => limits,
        Err(refused) => return *refused,
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let email: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    mock.saw(job_of(&email));
    (
        limits,
        axum::Json(serde_json::json!({ "id": format!("email-{key}") })),
    )
        .into_response()
}

/// The job an email was sent for: its `leadrelay_job` tag (the key is the
/// lead's uuid and the template, not the job id).
fn job_of(email: &serde_json::Value) -> Option<i64> {
    email["tags"].as_array().and_then(|tags| {
        tags.iter()
            .find(|t| t["name"] == "leadrelay_job")
            .and_then(|t| t["value"].as_str()?.parse().ok())
    })
}

/// `POST /emails/batch`: one request against the limit for up to 100 emails;
/// each email's job id is in its `leadrelay_job` tag.
pub(crate) async fn resend_batch(
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
        mock.saw(job_of(email));
        data.push(serde_json::json!({ "id": format!("email-{key}-{i}") }));
    }
    (limits, axum::Json(serde_json::json!({ "data": data }))).into_response()
}

pub(crate) async fn mobizon(State(mock): State<Arc<Mock>>) -> axum::Json<serde_json::Value> {
    let n = mock.sms.fetch_add(1, Ordering::Relaxed);
    axum::Json(
        serde_json::json!({"code": 0, "data": {"campaignId": "1", "messageId": n.to_string(), "status": 2}, "message": ""}),
    )
}

pub(crate) async fn start_mock(mock: Arc<Mock>) -> String {
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
