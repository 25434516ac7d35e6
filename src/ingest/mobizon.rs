//! Every Mobizon delivery state comes in here: a report posted to our
//! webhook (parsed, its `sign` checked, a failure confirmed with Mobizon
//! before it applies), the status poll for SMS without a state, and the
//! state of an SMS a look-up found. All become `DeliveryEvent`s stored as
//! the Resend ones are.

use deadpool_postgres::Pool;
use serde::Deserialize;

use super::delivery::{DeliveryEvent, ParseError, id_text, parse_time, store};
use crate::domain::DeliveryState;
use crate::providers::mobizon::MobizonClient;

/// Mobizon's SMS statuses and ours. NEW, ENQUEUD and ACCEPTD are on the way;
/// PDLIVRD is partly delivered; the others are final.
pub fn mobizon_status(status: &str) -> Option<DeliveryState> {
    Some(match status.trim().to_ascii_uppercase().as_str() {
        "NEW" | "ENQUEUD" | "ACCEPTD" => DeliveryState::Accepted,
        "PDLIVRD" => DeliveryState::PartlyDelivered,
        "DELIVRD" => DeliveryState::Delivered,
        "UNDELIV" => DeliveryState::Undelivered,
        "REJECTD" => DeliveryState::Rejected,
        "EXPIRED" => DeliveryState::Expired,
        "DELETED" => DeliveryState::Deleted,
        _ => return None,
    })
}

#[derive(Debug, Deserialize)]
struct MobizonEnvelope {
    #[serde(rename = "eventId")]
    event_id: serde_json::Value,
    #[serde(rename = "eventType")]
    event_type: String,
    #[serde(rename = "eventCreateTs")]
    created: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// A Mobizon webhook: `{"eventId", "eventType": "sms-delivery-report",
/// "eventCreateTs", "webhookId", "attempt", "data": {"campaignId",
/// "messageId", "segNum", "statusUpdateTs", "status", "to"}, "sign"}`.
/// Form events (`form-…`) are accepted and carry no state.
pub fn parse_mobizon(body: &[u8]) -> Result<DeliveryEvent, ParseError> {
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let envelope: MobizonEnvelope = serde_json::from_value(payload.clone())
        .map_err(|e| ParseError::Shape("Mobizon", e.to_string()))?;
    let event_id = id_text(&envelope.event_id)
        .ok_or_else(|| ParseError::Invalid("eventId is missing".into()))?;
    match envelope.event_type.as_str() {
        "sms-delivery-report" => {
            let message_id = envelope
                .data
                .get("messageId")
                .and_then(id_text)
                .ok_or_else(|| {
                    ParseError::Invalid("sms-delivery-report without data.messageId".into())
                })?;
            let raw_status = envelope
                .data
                .get("status")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let status = mobizon_status(raw_status).ok_or_else(|| {
                ParseError::Invalid(format!(
                    "unknown SMS status {:?}",
                    raw_status.chars().take(20).collect::<String>()
                ))
            })?;
            let occurred = envelope
                .data
                .get("statusUpdateTs")
                .and_then(|v| v.as_str())
                .or(envelope.created.as_deref())
                .and_then(parse_time);
            Ok(DeliveryEvent {
                provider: "mobizon",
                event_id: format!("webhook-{event_id}"),
                event_type: envelope.event_type,
                message_id: Some(message_id),
                occurred_at: occurred,
                delivery_status: Some(status),
                recognised: true,
                payload,
            })
        }
        // Form events, and any type Mobizon adds later: stored, no state.
        other => Ok(DeliveryEvent {
            provider: "mobizon",
            event_id: format!("webhook-{event_id}"),
            recognised: other.starts_with("form-"),
            event_type: envelope.event_type,
            message_id: None,
            occurred_at: envelope.created.as_deref().and_then(parse_time),
            delivery_status: None,
            payload,
        }),
    }
}

/// Checks Mobizon's own webhook signature: `sign` is the hex SHA1 of
/// `eventId|attempt|eventCreateTs|<the webhook's secret key>` (Mobizon's
/// webhook documentation), compared in constant time.
pub fn mobizon_sign_valid(body: &[u8], secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let part = |name: &str| match payload.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (Some(id), Some(attempt), Some(created), Some(sign)) = (
        part("eventId"),
        part("attempt"),
        part("eventCreateTs"),
        part("sign"),
    ) else {
        return false;
    };
    mobizon_sign(&id, &attempt, &created, secret)
        .as_bytes()
        .ct_eq(sign.trim().to_ascii_lowercase().as_bytes())
        .into()
}

/// Mobizon's `sign`: hex SHA1 of `eventId|attempt|eventCreateTs|secret`.
pub fn mobizon_sign(event_id: &str, attempt: &str, created: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(format!("{event_id}|{attempt}|{created}|{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A status read from Mobizon's `getsmsstatus`, as an event: its id names the
/// message and the status, so polling the same state again stores nothing.
pub fn mobizon_polled(
    message_id: &str,
    raw_status: &str,
    payload: serde_json::Value,
) -> Option<DeliveryEvent> {
    let status = mobizon_status(raw_status)?;
    Some(DeliveryEvent {
        provider: "mobizon",
        event_id: format!(
            "poll-{message_id}-{}",
            raw_status.trim().to_ascii_uppercase()
        ),
        event_type: "sms-status-poll".into(),
        message_id: Some(message_id.to_string()),
        occurred_at: payload
            .get("statusUpdateTs")
            .and_then(|v| v.as_str())
            .and_then(parse_time),
        delivery_status: Some(status),
        recognised: true,
        payload,
    })
}

/// What Mobizon itself says of a report of a final failure.
pub enum Confirmation {
    /// Not a failure, or Mobizon says the same: apply the report.
    Apply(DeliveryEvent),
    /// Mobizon says otherwise (or nothing): the report is kept without its
    /// state, and Mobizon's own state (if any) is stored beside it.
    Unconfirmed {
        report: DeliveryEvent,
        mobizon_says: Option<DeliveryEvent>,
    },
    /// Mobizon could not be asked now: answer 503, it delivers again later.
    Unavailable,
}

/// A report of a final failure applies only once Mobizon's `getsmsstatus`
/// says the same: the URL token and `sign` do not cover `data`, so anyone
/// holding the URL could otherwise mark a delivered SMS as failed.
pub async fn confirm_report(mobizon: &MobizonClient, mut event: DeliveryEvent) -> Confirmation {
    let (Some(status), Some(message_id)) = (event.delivery_status, event.message_id.clone()) else {
        return Confirmation::Apply(event);
    };
    if !status.is_failure() {
        return Confirmation::Apply(event);
    }
    let entries = match mobizon.statuses(std::slice::from_ref(&message_id)).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(message_id = %message_id, error = %e, "could not ask Mobizon to confirm a failure report; it will be delivered again");
            return Confirmation::Unavailable;
        }
    };
    let said = entries.into_iter().find(|(id, _, _)| *id == message_id);
    if said
        .as_ref()
        .and_then(|(_, raw, _)| mobizon_status(raw))
        .is_some_and(|s| s == status)
    {
        return Confirmation::Apply(event);
    }
    tracing::warn!(
        message_id = %message_id, reported = status.as_str(),
        mobizon_says = said.as_ref().map(|(_, raw, _)| raw.as_str()).unwrap_or("nothing"),
        "a failure report Mobizon does not confirm: kept, not applied"
    );
    event.delivery_status = None;
    Confirmation::Unconfirmed {
        report: event,
        mobizon_says: said.and_then(|(id, raw, payload)| mobizon_polled(&id, &raw, payload)),
    }
}

/// Asks Mobizon for the states of sent SMS `ids` and stores each one.
pub async fn poll(pool: &Pool, mobizon: &MobizonClient, ids: &[String]) {
    mobizon.pacer.wait_turn().await;
    match mobizon.statuses(ids).await {
        Ok(statuses) => {
            for (id, status, payload) in statuses {
                store_state(pool, &id, &status, payload, "SMS status poll").await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "SMS status poll: Mobizon did not answer"),
    }
}

/// Stores the state `raw_status` Mobizon gives message `id` (from the
/// status poll, or from a look-up's list) as a polled event; `what` names
/// the source in the log when storing fails.
pub async fn store_state(
    pool: &Pool,
    id: &str,
    raw_status: &str,
    payload: serde_json::Value,
    what: &str,
) {
    let Some(event) = mobizon_polled(id, raw_status, payload) else {
        return;
    };
    if let Err(e) = store(pool, &event).await {
        tracing::warn!(error = %e, "{what}: storing a status failed; the next poll or a report brings it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobizon_reports_map_to_delivery_states() {
        let body = br#"{"eventId":26,"eventType":"sms-delivery-report","eventCreateTs":"2026-01-15 11:42:28","webhookId":1,"attempt":1,"data":{"campaignId":245455096,"messageId":169275418,"segNum":3,"statusUpdateTs":"2026-01-15 11:42:08","status":"DELIVRD","to":"380737893456"},"sign":"3f0a"}"#;
        let e = parse_mobizon(body).unwrap();
        assert_eq!(e.event_id, "webhook-26");
        assert_eq!(e.message_id.as_deref(), Some("169275418"));
        assert_eq!(e.delivery_status, Some(DeliveryState::Delivered));
        assert_eq!(
            e.occurred_at.unwrap().to_rfc3339(),
            "2026-01-15T11:42:08+00:00"
        );
        for (raw, ours) in [
            ("UNDELIV", "undelivered"),
            ("REJECTD", "rejected"),
            ("EXPIRED", "expired"),
            ("ACCEPTD", "accepted"),
            ("PDLIVRD", "partly_delivered"),
            ("DELETED", "deleted"),
        ] {
            assert_eq!(mobizon_status(raw).map(DeliveryState::as_str), Some(ours));
        }
        assert_eq!(mobizon_status("LOST"), None);
    }

    #[test]
    fn malformed_and_unknown_mobizon_reports_are_refused() {
        assert!(matches!(parse_mobizon(b""), Err(ParseError::NotJson(_))));
        assert!(matches!(
            parse_mobizon(br#"{"eventType":"sms-delivery-report"}"#),
            Err(ParseError::Shape(..))
        ));
        assert!(matches!(
            parse_mobizon(br#"{"eventId":null,"eventType":"sms-delivery-report","data":{}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(parse_mobizon(br#"{"eventId":1,"eventType":"sms-delivery-report","data":{"messageId":5,"status":"LOST"}}"#), Err(ParseError::Invalid(_))));
        let unknown =
            parse_mobizon(br#"{"eventId":1,"eventType":"call-report","data":{}}"#).unwrap();
        assert!(!unknown.recognised && unknown.delivery_status.is_none());
        let form = br#"{"eventId":40,"eventType":"form-submission","eventCreateTs":"2026-01-15 16:53:30","data":{"formId":846}}"#;
        assert_eq!(parse_mobizon(form).unwrap().delivery_status, None);
    }

    #[test]
    fn mobizon_signatures_are_checked_as_documented() {
        use sha1::{Digest, Sha1};
        let expected: String = Sha1::digest(b"26|1|2026-01-15 11:42:28|secret123")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let body = format!(
            r#"{{"eventId":26,"eventType":"sms-delivery-report","eventCreateTs":"2026-01-15 11:42:28","attempt":1,"data":{{}},"sign":"{expected}"}}"#
        );
        assert!(mobizon_sign_valid(body.as_bytes(), "secret123"));
        assert!(!mobizon_sign_valid(body.as_bytes(), "another-secret"));
        let tampered = body.replace("\"attempt\":1", "\"attempt\":2");
        assert!(!mobizon_sign_valid(tampered.as_bytes(), "secret123"));
        assert!(!mobizon_sign_valid(br#"{"eventId":26}"#, "secret123"));
        assert!(!mobizon_sign_valid(b"not json", "secret123"));
    }

    #[test]
    fn polled_statuses_have_ids_that_repeat_for_the_same_state() {
        let a = mobizon_polled(
            "42",
            "DELIVRD",
            serde_json::json!({"id": 42, "status": "DELIVRD"}),
        )
        .unwrap();
        let b = mobizon_polled("42", "delivrd", serde_json::json!({})).unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert!(mobizon_polled("42", "???", serde_json::json!({})).is_none());
    }
}
