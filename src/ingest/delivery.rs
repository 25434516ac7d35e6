//! Delivery reports in one shape (`DeliveryEvent`): Resend's webhook events
//! parsed here, Mobizon's states in `mobizon`; stored through
//! `record_notification_event()` (stored once, applied forward-only).

use chrono::{DateTime, NaiveDateTime, Utc};
use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::domain::DeliveryState;
use crate::store::describe;

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryEvent {
    pub provider: &'static str,
    /// Unique per event and the same on every redelivery.
    pub event_id: String,
    pub event_type: String,
    /// The id the provider gave the message when we sent it.
    pub message_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    /// Our name for the state the event reports; None for events without one.
    pub delivery_status: Option<DeliveryState>,
    /// False for a type this release does not know: stored all the same.
    pub recognised: bool,
    pub payload: serde_json::Value,
}

impl DeliveryEvent {
    /// The event with every text PostgreSQL cannot hold made storable
    /// (`crate::store::storable`); ids change the same way on every redelivery,
    /// so a repeated event is still recognised.
    pub fn storable(mut self) -> DeliveryEvent {
        crate::store::storable::string(&mut self.event_id);
        crate::store::storable::string(&mut self.event_type);
        if let Some(id) = self.message_id.as_mut() {
            crate::store::storable::string(id);
        }
        crate::store::storable::json(&mut self.payload);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a {0} event: {1}")]
    Shape(&'static str, String),
    #[error("{0}")]
    Invalid(String),
}

/// Resend's event types and the delivery state each reports: `Known(None)`
/// for the ones that carry no state (contact, domain and suppression-list
/// events, `email.scheduled`), `Unknown` for a type Resend added after this
/// release, which is stored and answered 2xx all the same.
fn resend_status(event_type: &str) -> EventKind {
    EventKind::Known(match event_type {
        "email.sent" => Some(DeliveryState::Sent),
        "email.delivered" => Some(DeliveryState::Delivered),
        "email.delivery_delayed" => Some(DeliveryState::DeliveryDelayed),
        "email.bounced" => Some(DeliveryState::Bounced),
        "email.complained" => Some(DeliveryState::Complained),
        "email.opened" => Some(DeliveryState::Opened),
        "email.clicked" => Some(DeliveryState::Clicked),
        "email.failed" => Some(DeliveryState::Failed),
        "email.suppressed" => Some(DeliveryState::Suppressed),
        "email.scheduled" | "email.received" => None,
        "suppression.added" | "suppression.removed" => None,
        t if t.starts_with("contact.") || t.starts_with("domain.") => None,
        _ => return EventKind::Unknown,
    })
}

/// The state Resend's `last_event` of a listed email names (`delivered`,
/// `opened`, …): the state its `email.<last_event>` webhook reports.
pub fn resend_last_event_state(last_event: &str) -> Option<DeliveryState> {
    match resend_status(&format!("email.{}", last_event.trim())) {
        EventKind::Known(state) => state,
        EventKind::Unknown => None,
    }
}

/// Whether this release knows an event type, and the state it reports.
enum EventKind {
    Known(Option<DeliveryState>),
    Unknown,
}

#[derive(Debug, Deserialize)]
struct ResendEnvelope {
    #[serde(rename = "type")]
    event_type: String,
    created_at: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// A Resend event: `{"type", "created_at", "data": {"email_id", …}}`; a bounce
/// carries `data.bounce` with `type`, `subType` and `message`. `svix_id` is
/// the event's id.
pub fn parse_resend(svix_id: &str, body: &[u8]) -> Result<DeliveryEvent, ParseError> {
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let envelope: ResendEnvelope = serde_json::from_value(payload.clone())
        .map_err(|e| ParseError::Shape("Resend", e.to_string()))?;
    let (recognised, delivery_status) = match resend_status(&envelope.event_type) {
        EventKind::Known(status) => (true, status),
        EventKind::Unknown => (false, None),
    };
    let message_id = envelope
        .data
        .get("email_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if delivery_status.is_some()
        && message_id
            .as_deref()
            .is_none_or(|id| id.is_empty() || id.len() > 200)
    {
        return Err(ParseError::Invalid(format!(
            "{} without a usable data.email_id",
            envelope.event_type
        )));
    }
    if svix_id.is_empty() || svix_id.len() > 256 {
        return Err(ParseError::Invalid(
            "svix-id is empty or longer than 256 characters".into(),
        ));
    }
    Ok(DeliveryEvent {
        provider: "resend",
        event_id: svix_id.to_string(),
        event_type: envelope.event_type,
        message_id,
        occurred_at: envelope.created_at.as_deref().and_then(parse_time),
        delivery_status,
        recognised,
        payload,
    })
}

pub(super) fn id_text(v: &serde_json::Value) -> Option<String> {
    let text = match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text.len() <= 100).then_some(text)
}

/// RFC 3339 (Resend) or `YYYY-MM-DD HH:MM:SS` (Mobizon; its own clock, taken
/// as UTC: it only orders events of one message).
pub(super) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Duplicate,
    Applied,
    Pending,
    Stored,
    /// Stored in the inbox, to be applied within moments (a busy webhook's
    /// group: src/ingest/event_batches.rs).
    Received,
}

impl Stored {
    pub fn as_str(self) -> &'static str {
        match self {
            Stored::Duplicate => "duplicate",
            Stored::Applied => "applied",
            Stored::Pending => "pending",
            Stored::Stored => "stored",
            Stored::Received => "received",
        }
    }
}

pub const RECORD_EVENT: &str =
    "select public.record_notification_event($1, $2, $3, $4, $5, $6, $7)";

/// Why an event was not stored, by whose fault: the database being away is
/// ours (503, the provider delivers again later); a body the database
/// refuses is the request's (4xx: delivering it again would fail the same
/// way, for days).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Pool(String),
    #[error("database error: {0}")]
    Db(String),
    /// SQLSTATE class 22 (data exception) or 23 (a constraint the body breaks).
    #[error("the database refuses the event's data (SQLSTATE {0})")]
    Unstorable(String),
}

impl StoreError {
    /// Classifies a failed statement. The text kept is PostgreSQL's message
    /// and code alone: its detail and `where` can quote the payload, an
    /// unmasked phone or address among it.
    pub fn from_db(error: &tokio_postgres::Error) -> StoreError {
        match error.as_db_error() {
            Some(db)
                if db.code().code().starts_with("22") || db.code().code().starts_with("23") =>
            {
                StoreError::Unstorable(db.code().code().to_string())
            }
            Some(db) => StoreError::Db(format!("{} (SQLSTATE {})", db.message(), db.code().code())),
            None => StoreError::Db(describe(error)),
        }
    }

    /// A serialization failure or deadlock: the same statement may succeed
    /// when tried again at once.
    fn is_transient(error: &tokio_postgres::Error) -> bool {
        use tokio_postgres::error::SqlState;
        error.code().is_some_and(|c| {
            c == &SqlState::T_R_SERIALIZATION_FAILURE || c == &SqlState::T_R_DEADLOCK_DETECTED
        })
    }
}

/// Stores an event once and applies it; one round trip (three tries when
/// the database answers with a serialization failure or a deadlock).
pub async fn store(pool: &Pool, event: &DeliveryEvent) -> Result<Stored, StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    let statement = client
        .prepare_cached(RECORD_EVENT)
        .await
        .map_err(|e| StoreError::from_db(&e))?;
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = client
            .query_one(
                &statement,
                &[
                    &event.provider,
                    &event.event_id,
                    &event.event_type,
                    &event.message_id,
                    &event.occurred_at,
                    &event.payload,
                    &event.delivery_status.map(DeliveryState::as_str),
                ],
            )
            .await;
        match answer {
            Ok(row) => return Ok(stored_from(&row.get::<_, String>(0))),
            Err(e) if tries < 3 && StoreError::is_transient(&e) => continue,
            Err(e) => return Err(StoreError::from_db(&e)),
        }
    }
}

/// What `record_notification_event` answered.
pub fn stored_from(answer: &str) -> Stored {
    match answer {
        "duplicate" => Stored::Duplicate,
        "applied" => Stored::Applied,
        "pending" => Stored::Pending,
        _ => Stored::Stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_events_map_to_delivery_states() {
        let body = br#"{"type":"email.delivered","created_at":"2026-11-24T12:00:00.000Z","data":{"email_id":"4ef9a417","to":["a@b.kz"]}}"#;
        let e = parse_resend("msg_1", body).unwrap();
        assert_eq!(e.delivery_status, Some(DeliveryState::Delivered));
        assert_eq!(e.message_id.as_deref(), Some("4ef9a417"));
        assert_eq!(e.event_id, "msg_1");
        assert!(e.occurred_at.is_some());
        let bounce = br#"{"type":"email.bounced","created_at":"2026-11-24T12:00:00Z","data":{"email_id":"x","bounce":{"message":"Mailbox does not exist","subType":"General","type":"Permanent"}}}"#;
        assert_eq!(
            parse_resend("m", bounce).unwrap().delivery_status,
            Some(DeliveryState::Bounced)
        );
        let contact =
            br#"{"type":"contact.created","created_at":"2026-11-24T12:00:00Z","data":{"id":"c"}}"#;
        assert_eq!(parse_resend("m", contact).unwrap().delivery_status, None);
    }

    #[test]
    fn a_listed_emails_last_event_names_the_state_of_its_webhook() {
        assert_eq!(
            resend_last_event_state("delivered"),
            Some(DeliveryState::Delivered)
        );
        assert_eq!(
            resend_last_event_state("opened"),
            Some(DeliveryState::Opened)
        );
        assert_eq!(
            resend_last_event_state("bounced"),
            Some(DeliveryState::Bounced)
        );
        for other in ["queued", "scheduled", "canceled", "", "email.opened"] {
            assert_eq!(resend_last_event_state(other), None, "{other}");
        }
    }

    #[test]
    fn malformed_and_unknown_resend_events_are_refused() {
        assert!(matches!(
            parse_resend("m", b"{not json"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_resend("m", br#"{"data":{}}"#),
            Err(ParseError::Shape(..))
        ));
        let unknown = parse_resend(
            "m",
            br#"{"type":"email.teleported","data":{"email_id":"x"}}"#,
        )
        .unwrap();
        assert!(!unknown.recognised && unknown.delivery_status.is_none());
        let suppressed = parse_resend(
            "m",
            br#"{"type":"email.suppressed","data":{"email_id":"x"}}"#,
        )
        .unwrap();
        assert_eq!(suppressed.delivery_status, Some(DeliveryState::Suppressed));
        for t in ["suppression.added", "suppression.removed"] {
            let body = format!(r#"{{"type":"{t}","data":{{"id":"s1","email":"a@b.kz"}}}}"#);
            let event = parse_resend("m", body.as_bytes()).unwrap();
            assert!(event.recognised && event.delivery_status.is_none(), "{t}");
        }
        assert!(matches!(
            parse_resend("m", br#"{"type":"email.delivered","data":{}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_resend("m", br#"{"type":"email.delivered","data":{"email_id":7}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_resend("", br#"{"type":"email.delivered","data":{"email_id":"x"}}"#),
            Err(ParseError::Invalid(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_parsers(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_resend("msg", &body);
            let _ = crate::ingest::mobizon::parse_mobizon(&body);
        }

        #[test]
        fn arbitrary_json_never_panics_the_parsers(
            t in "[a-z._-]{0,30}",
            id in proptest::option::of(".{0,300}"),
            status in ".{0,12}",
            ts in ".{0,40}",
        ) {
            let resend = serde_json::json!({"type": t, "created_at": ts, "data": {"email_id": id}});
            let _ = parse_resend("msg", resend.to_string().as_bytes());
            let mobizon = serde_json::json!({"eventId": id, "eventType": t, "eventCreateTs": ts, "data": {"messageId": id, "status": status}});
            let _ = crate::ingest::mobizon::parse_mobizon(mobizon.to_string().as_bytes());
        }
    }
}
