//! Local stand-ins for Resend and Mobizon, for `leadrelay dev`: they record
//! every email and SMS as files under `.leadrelay/outbox/` instead of sending
//! them, answer as the real APIs do (the same idempotency key gets the same
//! email id), a second later post a signed delivery report to our own
//! webhooks (again, with backoff, until it is taken, as the real ones do),
//! and Mobizon's stand-in answers `message/list`, so the look-up of an SMS
//! whose answer was lost works here too; Resend's answers `GET /emails` and
//! `GET /emails/{id}` with what it sent, so `leadrelay reconcile` does too:
//! a new user sees the whole flow with no accounts.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};

use super::books::{MobizonBook, ResendBook};
use crate::domain::Secret;
use crate::ingest::svix::SigningKey;

struct StandInState {
    outbox: PathBuf,
    resend_key: SigningKey,
    mobizon_token: Secret,
    /// The Mobizon webhook's secret key: reports carry its `sign`.
    mobizon_secret: Secret,
    /// Where our webhooks are, known once the server is up.
    webhooks: OnceLock<String>,
    /// How Resend answers (`books`).
    resend: ResendBook,
    /// Every SMS taken, for `message/list` and `getsmsstatus`; each is
    /// reported delivered.
    mobizon: MobizonBook,
    http: reqwest::Client,
}

pub struct StandIn {
    pub url: String,
    state: Arc<StandInState>,
}

impl StandIn {
    /// Tells the stand-ins where to post delivery reports.
    pub fn deliver_reports_to(&self, base_url: String) {
        let _ = self.state.webhooks.set(base_url);
    }
}

pub async fn start(
    outbox: PathBuf,
    resend_key: SigningKey,
    mobizon_token: Secret,
    mobizon_secret: Secret,
) -> std::io::Result<StandIn> {
    std::fs::create_dir_all(&outbox)?;
    let state = Arc::new(StandInState {
        outbox,
        resend_key,
        mobizon_token,
        mobizon_secret,
        webhooks: OnceLock::new(),
        resend: ResendBook::default(),
        mobizon: MobizonBook::with_status("DELIVRD"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
    });
    let app = Router::new()
        .route("/emails", post(email).get(email_list))
        .route("/emails/batch", post(email_batch))
        .route("/emails/{id}", get(email_get))
        .route("/service/message/sendsmsmessage", post(sms))
        .route("/service/message/getsmsstatus", post(sms_status))
        .route("/service/message/list", post(sms_list))
        .with_state(Arc::clone(&state))
        // `leadrelay doctor` recognises the stand-ins by this header and does
        // not take their answers for the real providers'.
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    crate::cli::doctor::STAND_IN_HEADER,
                    axum::http::HeaderValue::from_static("dev"),
                );
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "stand-in providers stopped");
        }
    });
    Ok(StandIn { url, state })
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S%.3f").to_string()
}

fn write(state: &StandInState, name: &str, contents: &[u8]) {
    let path = state.outbox.join(name);
    if let Err(e) = std::fs::write(&path, contents) {
        tracing::warn!(path = %path.display(), error = %e, "could not write to the outbox");
    }
}

async fn email(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    resend_answer(&state, false, &headers, &body)
}

/// `GET /emails` (`ResendBook::list`).
async fn email_list(
    State(state): State<Arc<StandInState>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    json_answer(state.resend.list(uri.query().unwrap_or("")))
}

/// `GET /emails/{id}` (`ResendBook::get`).
async fn email_get(
    State(state): State<Arc<StandInState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::response::Response {
    json_answer(state.resend.get(&id))
}

fn json_answer((status, answer): super::books::Answer) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer)).into_response()
}

async fn email_batch(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    resend_answer(&state, true, &headers, &body)
}

/// Resend's answer (`ResendBook`), each email newly sent written to the
/// outbox and reported delivered.
fn resend_answer(
    state: &Arc<StandInState>,
    batch: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> axum::response::Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    json_answer(state.resend.answer(batch, key, body, |id, email| {
        deliver_email(state, id, email)
    }))
}

/// Writes email `id` to the outbox and reports it delivered a second later.
fn deliver_email(state: &Arc<StandInState>, id: &str, message: &serde_json::Value) {
    let record = serde_json::json!({
        "provider": "resend (stand-in)", "email_id": id,
        "from": message["from"], "to": message["to"], "subject": message["subject"],
        "text": message["text"], "headers": message["headers"], "received_at": chrono::Utc::now(),
    });
    let name = format!("{}-email-{id}", stamp());
    write(
        state,
        &format!("{name}.json"),
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    );
    if let Some(html) = message["html"].as_str() {
        write(state, &format!("{name}.html"), html.as_bytes());
    }
    let report_state = Arc::clone(state);
    let email_id = id.to_string();
    tokio::spawn(async move { report_email_delivered(report_state, email_id).await });
}

async fn report_email_delivered(state: Arc<StandInState>, email_id: String) {
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "email.delivered", "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": email_id}
    }))
    .unwrap_or_default();
    let svix_id = format!("msg_standin_{}", uuid::Uuid::new_v4().simple());
    state.resend.set_last_event(&email_id, "delivered");
    post_report(&state, |http, base| {
        // Svix signs each delivery attempt with its own timestamp.
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = state.resend_key.signature(&svix_id, &timestamp, &body);
        http.post(format!("{base}/webhooks/resend"))
            .header("svix-id", svix_id.as_str())
            .header("svix-timestamp", timestamp)
            .header("svix-signature", signature)
            .header("content-type", "application/json")
            .body(body.clone())
    })
    .await;
}

/// Posts a delivery report a second after the message, and again with
/// backoff (2, 4, 8, 16 s) while our webhook does not take it.
async fn post_report(
    state: &StandInState,
    request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) {
    let mut wait = Duration::from_secs(1);
    for _ in 0..5 {
        tokio::time::sleep(wait).await;
        wait *= 2;
        let Some(base) = state.webhooks.get() else {
            continue;
        };
        match request(&state.http, base).send().await {
            Ok(answer) if answer.status().is_success() => return,
            Ok(answer) => {
                tracing::debug!(status = %answer.status(), "stand-in report refused; trying again")
            }
            Err(e) => tracing::debug!(error = %e, "stand-in report not delivered; trying again"),
        }
    }
}

async fn sms(State(state): State<Arc<StandInState>>, body: Bytes) -> axum::Json<serde_json::Value> {
    let sms = state.mobizon.take(&body);
    let id = sms.id.clone();
    let record = serde_json::json!({
        "provider": "mobizon (stand-in)", "message_id": id,
        "recipient": sms.to, "from": sms.from, "text": sms.text,
        "received_at": sms.taken_at,
    });
    write(
        &state,
        &format!("{}-sms-{id}.json", stamp()),
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    );
    let report_state = Arc::clone(&state);
    let message_id = id.clone();
    tokio::spawn(async move {
        let event_id = format!("standin-{message_id}");
        let created = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
        let sign = crate::ingest::mobizon::mobizon_sign(
            &event_id,
            "1",
            &created,
            report_state.mobizon_secret.expose(),
        );
        let report = serde_json::json!({
            "eventId": event_id, "eventType": "sms-delivery-report",
            "eventCreateTs": created,
            "webhookId": 0, "attempt": 1,
            "data": {"messageId": message_id, "status": "DELIVRD", "segNum": 1,
                     "statusUpdateTs": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()},
            "sign": sign
        });
        let token = report_state.mobizon_token.expose().to_string();
        post_report(&report_state, |http, base| {
            http.post(format!("{base}/webhooks/mobizon?token={token}"))
                .json(&report)
        })
        .await;
    });
    axum::Json(MobizonBook::sent_answer(&sms))
}

/// `message/list` (`MobizonBook::list`).
async fn sms_list(
    State(state): State<Arc<StandInState>>,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    axum::Json(state.mobizon.list(&body))
}

async fn sms_status(
    State(state): State<Arc<StandInState>>,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    axum::Json(state.mobizon.statuses(&body, "DELIVRD"))
}
