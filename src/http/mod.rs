//! The HTTP API: provider webhooks, the lead status API, health, metrics and
//! the OpenAPI document. Errors become a status code and a short JSON message;
//! database or internal error text never reaches a caller (it is logged).
//!
//! The HTTP room: routes only, each handing its work to the room that owns
//! it. It uses `ingest`, `worker` (the listener's state), `store`, `messages`
//! and `domain`; `serve` uses it.

pub mod connections;
mod console;
pub mod metrics;
mod openapi;
mod status;
mod unsubscribe;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::Secret;
use crate::ingest::svix::SigningKey;
use crate::worker::listener::ListenerState;
pub use console::{Console, ConsoleSettings};

/// Webhook bodies above this are refused with 413 (Resend's largest events,
/// with headers and tags, are a few kilobytes).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: deadpool_postgres::Pool,
    /// Where `lead_tracking` lives (the same pool unless
    /// LEAD_TRACKING_DATABASE_URL): the console's "forget" erases its row.
    pub tracking_pool: deadpool_postgres::Pool,
    /// Webhook events are stored through it, many per commit under load.
    pub events: crate::ingest::event_batches::EventBatches,
    pub listener: Arc<ListenerState>,
    pub resend_key: SigningKey,
    pub mobizon_token: Secret,
    pub mobizon_secret: Option<Secret>,
    /// Asked to confirm a report of a final failure before it is applied.
    pub mobizon: Arc<crate::providers::mobizon::MobizonClient>,
    /// The worker's own clients, for the console's "Ask Resend and
    /// Mobizon": one pacer per provider in the process.
    pub providers: crate::reconcile::Providers,
    pub admin_token: Secret,
    /// `leadrelay dev`: where the stand-in providers write, shown on /ops.
    pub dev_outbox: Option<std::path::PathBuf>,
    /// The default product link, for a preview of a message not yet claimed.
    pub product_url: String,
    /// Verifies the unsubscribe links (`/unsubscribe/{token}`).
    pub unsubscribe: crate::messages::unsubscribe::Links,
    /// The ops console's settings and sign-in limiter.
    pub console: Console,
}

/// Every route; `/metrics` only when it is not served on its own address
/// (METRICS_ADDR).
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let router = Router::new()
        .route("/webhooks/resend", post(webhooks::resend))
        .route("/webhooks/mobizon", post(webhooks::mobizon_query_token))
        .route(
            "/webhooks/mobizon/{token}",
            post(webhooks::mobizon_path_token),
        )
        .route("/leads/{id}/status", get(status::lead_status))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe::show).post(unsubscribe::confirm),
        )
        .merge(console::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document));
    let router = if with_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `/metrics` alone, for METRICS_ADDR.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Too many tries of the admin token: wait this many seconds.
    #[error("too many tries of the token from this address: wait {0} s")]
    TooManyTries(u64),
    /// The cause is logged where it happened; the caller (a provider) retries.
    #[error("temporarily unavailable, try again")]
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyTries(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if let ApiError::TooManyTries(wait) = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&wait.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// The HTTP layer's statements, for the test that prepares every statement.
pub fn statements() -> Vec<&'static str> {
    let mut all = vec![metrics::LIVE_JOBS, status::LEAD, status::MESSAGES];
    all.extend(console::statements());
    all
}

/// Compares secrets in constant time, length included (both are hashed).
pub fn secret_matches(given: &str, expected: &Secret) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    a.ct_eq(&b).into()
}

/// `Authorization: Bearer ADMIN_TOKEN`, from the client at `addr`. Each try
/// counts against the same limits as the console's sign-in form (per
/// address and overall): a request without the header is not a try.
pub fn require_admin(
    headers: &HeaderMap,
    state: &AppState,
    addr: std::net::IpAddr,
) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("Authorization: Bearer <ADMIN_TOKEN> is required".into())
        })?;
    match state
        .console
        .tokens
        .try_token(addr, None, given.trim(), &state.admin_token)
    {
        console::Try::Accepted => Ok(()),
        console::Try::Wrong => Err(ApiError::Unauthorized("wrong token".into())),
        console::Try::Wait(wait) => Err(ApiError::TooManyTries(wait)),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers and the listener is connected.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let db_ok = match tokio::time::timeout(Duration::from_secs(2), state.pool.get()).await {
        Ok(Ok(client)) => client.simple_query("select 1").await.is_ok(),
        _ => false,
    };
    match (db_ok, state.listener.is_connected()) {
        (true, true) => (StatusCode::OK, "ready"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "listener not connected"),
    }
}

/// Renders what the recorder holds: the job gauges are refreshed in the
/// background (`metrics::gauges_loop`), so a scrape reads no table.
async fn metrics(State(state): State<AppState>) -> Response {
    crate::http::metrics::set_listener_gauge(&state.listener);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::http::metrics::render(),
    )
        .into_response()
}
