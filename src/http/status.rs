//! `GET /leads/{id}/status`: the lead and, per channel, status, sent time,
//! delivery state and error, and what the delivery policies decided (a send
//! window's hold, a cancellation as a duplicate or over the cap). Needs
//! `Authorization: Bearer ADMIN_TOKEN`.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{ApiError, AppState, require_admin};
use crate::messages::mask;

pub const LEAD: &str =
    "select id, name, email, phone, source, created_at from public.landing_leads where id = $1";
pub const MESSAGES: &str = "
select channel, template, status, attempts, max_attempts, due_at, sent_at, delivery_status,
       delivery_status_at, last_error, provider_message_id,
       leadrelay.held_until(status, held_until, due_at), hold_reason,
       cancelled_by, duplicate_of_lead, reconciled_at
from public.notification_jobs where lead_id = $1 order by channel, template";

#[derive(Debug, Serialize)]
pub struct LeadStatus {
    pub lead: Lead,
    pub messages: Vec<Message>,
}

#[derive(Debug, Serialize)]
pub struct Lead {
    pub id: Uuid,
    pub name: Option<String>,
    /// masked, as in the logs
    pub email: Option<String>,
    pub phone: Option<String>,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct Message {
    pub channel: String,
    pub template: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivery_status: Option<String>,
    pub delivery_status_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub provider_message_id: Option<String>,
    /// Set while a send window holds the message: when it opens.
    pub held_until: Option<DateTime<Utc>>,
    /// Why the message was (last) moved to a window's opening.
    pub hold_reason: Option<String>,
    /// `duplicate` or `recipient_cap` when a delivery policy cancelled it,
    /// `suppressed` when its recipient is on the suppression list (the
    /// reason is in `error`).
    pub cancelled_by: Option<String>,
    /// The lead that already got this message, for a duplicate.
    pub duplicate_of_lead: Option<Uuid>,
    /// Set when `leadrelay reconcile` found the message at the provider:
    /// the system before leadrelay sent it, not leadrelay.
    pub reconciled_at: Option<DateTime<Utc>>,
}

pub async fn lead_status(
    State(state): State<AppState>,
    visitor: super::console::Visitor,
    Path(id): Path<String>,
) -> Result<Json<LeadStatus>, ApiError> {
    require_admin(visitor.headers(), &state, visitor.addr)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest("the lead id is not a UUID".into()))?;
    let client = state.pool.get().await.map_err(|e| {
        tracing::error!(error = %e, "status API: database unavailable");
        ApiError::Unavailable
    })?;
    let unavailable = |e: tokio_postgres::Error| {
        tracing::error!(error = %crate::store::describe(&e), "status API query failed");
        ApiError::Unavailable
    };
    let lead = client
        .query_opt(LEAD, &[&id])
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound("no lead with this id".into()))?;
    let messages = client
        .query(MESSAGES, &[&id])
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| Message {
            channel: r.get(0),
            template: r.get(1),
            status: r.get(2),
            attempts: r.get(3),
            max_attempts: r.get(4),
            due_at: r.get(5),
            sent_at: r.get(6),
            delivery_status: r.get(7),
            delivery_status_at: r.get(8),
            error: r.get(9),
            provider_message_id: r.get(10),
            held_until: r.get(11),
            hold_reason: r.get(12),
            cancelled_by: r.get(13),
            duplicate_of_lead: r.get(14),
            reconciled_at: r.get(15),
        })
        .collect();
    Ok(Json(LeadStatus {
        lead: Lead {
            id: lead.get(0),
            name: lead
                .get::<_, Option<String>>(1)
                .map(|n| n.chars().take(200).collect()),
            email: lead.get::<_, Option<String>>(2).map(|e| mask::email(&e)),
            phone: lead.get::<_, Option<String>>(3).map(|p| mask::phone(&p)),
            source: lead.get(4),
            created_at: lead.get(5),
        },
        messages,
    }))
}
