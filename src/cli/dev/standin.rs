//! Local stand-ins for Resend and Mobizon, for `leadrelay dev`: they record
//! every email and SMS as files under `.leadrelay/outbox/` instead of sending
//! them, answer as the real APIs do (the same idempotency key gets the same
//! email id), a second later post a signed delivery report to our own
//! webhooks (again, with backoff, until it is taken, as the real ones do),
//! and Mobizon's stand-in answers `message/list`, so the look-up of an SMS
//! whose answer was lost works here too: a new user sees the whole flow with
//! no accounts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;

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
    email_answers: Mutex<HashMap<String, serde_json::Value>>,
    next_sms: AtomicU64,
    /// Every SMS taken, for `message/list`.
    sms_taken: Mutex<Vec<TakenSms>>,
    http: reqwest::Client,
}

struct TakenSms {
    id: String,
    to: String,
    text: String,
    taken_at: chrono::DateTime<chrono::Utc>,
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
        email_answers: Mutex::new(HashMap::new()),
        next_sms: AtomicU64::new(1),
        sms_taken: Mutex::new(Vec::new()),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
    });
    let app = Router::new()
        .route("/emails", post(email))
        .route("/emails/batch", post(email_batch))
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

/// Resend's idempotency: the first answer under a key is the answer to
/// every later request with that key, and nothing is sent again.
fn answer_once(
    state: &StandInState,
    headers: &HeaderMap,
    send: impl FnOnce() -> serde_json::Value,
) -> serde_json::Value {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut answers = state
        .email_answers
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(answer) = answers.get(&key) {
        return answer.clone();
    }
    let answer = send();
    answers.insert(key, answer.clone());
    answer
}

async fn email(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(answer_once(
        &state,
        &headers,
        || serde_json::json!({ "id": deliver_email(&state, &message) }),
    ))
}

async fn email_batch(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let messages: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(answer_once(&state, &headers, || {
        let data: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({ "id": deliver_email(&state, m) }))
            .collect();
        serde_json::json!({ "data": data })
    }))
}

/// Writes one email to the outbox and reports it delivered a second later;
/// returns its email id.
fn deliver_email(state: &Arc<StandInState>, message: &serde_json::Value) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let record = serde_json::json!({
        "provider": "resend (stand-in)", "email_id": id,
        "from": message["from"], "to": message["to"], "subject": message["subject"],
        "text": message["text"], "received_at": chrono::Utc::now(),
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
    let email_id = id.clone();
    tokio::spawn(async move { report_email_delivered(report_state, email_id).await });
    id
}

async fn report_email_delivered(state: Arc<StandInState>, email_id: String) {
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "email.delivered", "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": email_id}
    }))
    .unwrap_or_default();
    let svix_id = format!("msg_standin_{}", uuid::Uuid::new_v4().simple());
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
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let id = state.next_sms.fetch_add(1, Ordering::Relaxed).to_string();
    let record = serde_json::json!({
        "provider": "mobizon (stand-in)", "message_id": id,
        "recipient": form.get("recipient"), "from": form.get("from"), "text": form.get("text"),
        "received_at": chrono::Utc::now(),
    });
    write(
        &state,
        &format!("{}-sms-{id}.json", stamp()),
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    );
    state
        .sms_taken
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(TakenSms {
            id: id.clone(),
            to: form.get("recipient").cloned().unwrap_or_default(),
            text: form.get("text").cloned().unwrap_or_default(),
            taken_at: chrono::Utc::now(),
        });
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
    axum::Json(
        serde_json::json!({"code": 0, "data": {"campaignId": id, "messageId": id, "status": 2}, "message": ""}),
    )
}

/// `message/list` as Mobizon documents it: `criteria[to]` (all or part of
/// the number), `criteria[text]` (exact), `criteria[campaignCreateTsFrom]`
/// and `criteria[startSendTsFrom]` (`YYYY-MM-DD HH:MM:SS`, read here as
/// UTC), pages from 0.
async fn sms_list(
    State(state): State<Arc<StandInState>>,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let since = [
        "criteria[campaignCreateTsFrom]",
        "criteria[startSendTsFrom]",
    ]
    .iter()
    .filter_map(|key| form.get(*key))
    .filter_map(|v| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S").ok())
    .map(|t| t.and_utc())
    .max();
    let page_size: usize = form
        .get("pagination[pageSize]")
        .and_then(|v| v.parse().ok())
        .filter(|n| [25, 50, 100].contains(n))
        .unwrap_or(25);
    let page: usize = form
        .get("pagination[currentPage]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let taken = state.sms_taken.lock().unwrap_or_else(|e| e.into_inner());
    let found: Vec<&TakenSms> = taken
        .iter()
        .filter(|m| {
            form.get("criteria[to]")
                .is_none_or(|to| m.to.contains(to.as_str()))
        })
        .filter(|m| {
            form.get("criteria[text]")
                .is_none_or(|text| &m.text == text)
        })
        .filter(|m| since.is_none_or(|since| m.taken_at >= since))
        .collect();
    let items: Vec<serde_json::Value> = found
        .iter()
        .skip(page * page_size)
        .take(page_size)
        .map(|m| {
            let ts = m.taken_at.format("%Y-%m-%d %H:%M:%S").to_string();
            serde_json::json!({
                "id": m.id, "campaignId": m.id, "segNum": "1", "from": "",
                "to": m.to, "text": m.text, "status": "DELIVRD",
                "startSendTs": ts, "statusUpdateTs": ts,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "code": 0,
        "data": {"items": items, "totalItemCount": found.len().to_string()},
        "message": ""
    }))
}

async fn sms_status(body: Bytes) -> axum::Json<serde_json::Value> {
    let data: Vec<serde_json::Value> = url::form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "ids[]")
        .map(|(_, id)| serde_json::json!({"id": id, "status": "DELIVRD"}))
        .collect();
    axum::Json(serde_json::json!({"code": 0, "data": data, "message": ""}))
}
