//! `POST /webhooks/resend` (Svix-signed) and `POST /webhooks/mobizon`
//! (authenticated by `MOBIZON_WEBHOOK_TOKEN` in the URL). An event is stored
//! before we answer 2xx, an event of a type we do not know too; a bad
//! signature, a wrong token or a malformed body gets a 4xx and changes nothing; a database outage gets
//! a 503 so the provider delivers it again later. Text PostgreSQL cannot hold
//! (NUL) is made storable first; a body the database still refuses is the
//! request's fault and gets a 422, never a 503 that would be retried for days.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use super::{ApiError, AppState, secret_matches};
use crate::ingest::delivery::{self, DeliveryEvent, ParseError, StoreError};
use crate::ingest::mobizon::{self as mobizon_states, Confirmation};
use crate::ingest::svix::{SvixError, SvixHeaders, verify_svix_signature};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn count(provider: &'static str, outcome: &'static str) {
    metrics::counter!("leadrelay_webhook_events_total", "provider" => provider, "outcome" => outcome).increment(1);
}

fn parse_error(provider: &'static str, e: ParseError) -> ApiError {
    count(provider, "malformed");
    ApiError::BadRequest(e.to_string())
}

async fn store(
    state: &AppState,
    event: DeliveryEvent,
) -> Result<Json<serde_json::Value>, ApiError> {
    let event = event.storable();
    if !event.recognised {
        // A type added by the provider after this release: kept, answered
        // 2xx, so it costs nothing and is there to read.
        count(event.provider, "unknown_type");
    }
    let (provider, event_id) = (event.provider, event.event_id.clone());
    let (event_type, message_id) = (event.event_type.clone(), event.message_id.clone());
    match state.events.store(event).await {
        Ok(stored) => {
            count(provider, stored.as_str());
            tracing::info!(
                provider, event_id = %event_id, event_type = %event_type,
                message_id = message_id.as_deref().unwrap_or(""), outcome = stored.as_str(),
                "webhook event"
            );
            Ok(Json(serde_json::json!({ "status": stored.as_str() })))
        }
        Err(StoreError::Unstorable(sqlstate)) => {
            count(provider, "unstorable");
            // No fragment of the payload: only whose event, and the code.
            tracing::error!(provider, event_id = %event_id, %sqlstate, "webhook event refused by the database");
            Err(ApiError::Unprocessable(
                "the event holds data the database cannot store".into(),
            ))
        }
        Err(e) => {
            count(provider, "error");
            tracing::error!(provider, event_id = %event_id, error = %e, "could not store webhook event");
            Err(ApiError::Unavailable)
        }
    }
}

pub async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let svix = SvixHeaders {
        id: header(&headers, "svix-id"),
        timestamp: header(&headers, "svix-timestamp"),
        signature: header(&headers, "svix-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    let id = verify_svix_signature(&state.resend_key, svix, &body, now).map_err(|e| match e {
        SvixError::MissingHeader(_) | SvixError::BadTimestamp => {
            count("resend", "malformed");
            ApiError::BadRequest(e.to_string())
        }
        SvixError::StaleTimestamp | SvixError::BadSignature => {
            count("resend", "rejected_signature");
            ApiError::Unauthorized(e.to_string())
        }
    })?;
    let event = delivery::parse_resend(id, &body).map_err(|e| parse_error("resend", e))?;
    store(&state, event).await
}

#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// `POST /webhooks/mobizon?token=…`
pub async fn mobizon_query_token(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    mobizon(state, query.token.as_deref(), body).await
}

/// `POST /webhooks/mobizon/{token}`
pub async fn mobizon_path_token(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    mobizon(state, Some(&token), body).await
}

async fn mobizon(
    state: AppState,
    token: Option<&str>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let authorised = token.is_some_and(|t| secret_matches(t, &state.mobizon_token));
    if !authorised {
        count("mobizon", "unauthorized");
        return Err(ApiError::Unauthorized("missing or wrong token".into()));
    }
    if let Some(secret) = &state.mobizon_secret
        && !mobizon_states::mobizon_sign_valid(&body, secret.expose())
    {
        count("mobizon", "rejected_signature");
        return Err(ApiError::Unauthorized(
            "the sign field does not match MOBIZON_WEBHOOK_SECRET".into(),
        ));
    }
    let event = mobizon_states::parse_mobizon(&body).map_err(|e| parse_error("mobizon", e))?;
    let (event, truth) = confirm_final_failure(&state, event).await?;
    let answer = store(&state, event).await?;
    if let Some(truth) = truth {
        // What Mobizon says instead; the poll would find it later anyway.
        let _ = store(&state, truth).await;
    }
    Ok(answer)
}

/// A report of a final failure applies only once Mobizon confirms it
/// (`ingest::mobizon::confirm_report`); if Mobizon cannot be asked now, 503,
/// and Mobizon delivers the report again later.
async fn confirm_final_failure(
    state: &AppState,
    event: DeliveryEvent,
) -> Result<(DeliveryEvent, Option<DeliveryEvent>), ApiError> {
    match mobizon_states::confirm_report(&state.mobizon, event).await {
        Confirmation::Apply(event) => Ok((event, None)),
        Confirmation::Unconfirmed {
            report,
            mobizon_says,
        } => {
            count("mobizon", "unconfirmed");
            Ok((report, mobizon_says))
        }
        Confirmation::Unavailable => {
            count("mobizon", "unconfirmed_unavailable");
            Err(ApiError::Unavailable)
        }
    }
}
