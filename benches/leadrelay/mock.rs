//! The stand-in providers of the benchmark: Resend (single and batch,
//! rate-limited when asked) and Mobizon, answering as every stand-in does
//! (`leadrelay::cli::dev::books`), with the counters the scenarios read.

use leadrelay::cli::dev::books::{MobizonBook, RateWindow, ResendBook};

use super::*;

#[derive(Default)]
pub(crate) struct Mock {
    pub(crate) emails: AtomicU64,
    /// requests to the batch endpoint
    pub(crate) batches: AtomicU64,
    pub(crate) sms: AtomicU64,
    /// job id → when its email request arrived
    pub(crate) seen: Mutex<HashMap<i64, (Instant, SystemTime)>>,
    /// Resend's limit to enforce (`rate.limit`, requests per second; 0: none)
    pub(crate) rate: RateWindow,
    resend: ResendBook,
    mobizon: MobizonBook,
}

impl Mock {
    pub(crate) fn saw(&self, job_id: Option<i64>) {
        self.emails.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = job_id {
            self.seen
                .lock()
                .unwrap()
                .insert(id, (Instant::now(), SystemTime::now()));
        }
    }

    /// Resend's answer to `/emails` (`batch`: `/emails/batch`), within its
    /// rate limit.
    fn resend_answer(
        &self,
        batch: bool,
        headers: &HeaderMap,
        body: &[u8],
    ) -> axum::response::Response {
        let limits = match self.rate.admit() {
            Ok(limits) => limits,
            Err((headers, body)) => return answer(429, headers, body),
        };
        if batch {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
        let (status, body) = self
            .resend
            .answer(batch, key, body, |_, email| self.saw(job_of(email)));
        answer(status, limits, body)
    }
}

/// An answer with the rate window's headers.
pub(crate) fn answer(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: serde_json::Value,
) -> axum::response::Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
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

pub(crate) async fn resend(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    mock.resend_answer(false, &headers, &body)
}

/// `POST /emails/batch`: one request against the limit for up to 100 emails;
/// each email's job id is in its `leadrelay_job` tag.
pub(crate) async fn resend_batch(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    mock.resend_answer(true, &headers, &body)
}

pub(crate) async fn mobizon(
    State(mock): State<Arc<Mock>>,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    mock.sms.fetch_add(1, Ordering::Relaxed);
    axum::Json(MobizonBook::sent_answer(&mock.mobizon.take(&body)))
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
