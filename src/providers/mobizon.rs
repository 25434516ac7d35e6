//! Mobizon (SMS, Kazakhstan): `{MOBIZON_API_URL}/service/message/sendsmsmessage`
//! with query `output=json&api=v1&apiKey=…` and form fields `recipient`
//! (international digits, no `+`), `text`, optional `from` and `params[…]`.
//!
//! The answer is `{"code", "data", "message"}`. From Mobizon's API reference:
//! code 0 is success (`data.messageId` identifies the message for delivery
//! reports); 1 validation error, 2 not found, 4/5/6 bad module/method/format,
//! 8 login error, 9 method not allowed, 11 missing parameter, 12 parameter out
//! of bounds, 13 wrong API server for this account, 14 account blocked — all
//! permanent for the message; 3 unidentified application error, 10 saving
//! error, 15 operation error, 30 request rate exceeded, 999 general service
//! error — temporary. There is no idempotency key: a request whose answer was
//! lost may have been sent, so such an answer is marked `outcome_unknown`
//! and the message is looked up (`find_sms`, `service/message/list`) before
//! it is sent again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{MAX_LIST_BYTES, MAX_RESPONSE_BYTES, SendError, Sent, clip, read_up_to};
use crate::domain::Secret;
use crate::providers::pacer::Pacer;

#[derive(Debug)]
pub struct MobizonClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    from: Option<String>,
    pub pacer: Pacer,
}

#[derive(Debug, Deserialize)]
struct Answer {
    code: serde_json::Value,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    message: serde_json::Value,
}

/// How long Mobizon keeps trying to deliver: a person who filled the test
/// wants the SMS today or not at all (Mobizon allows 60–1440 minutes).
const VALIDITY_MINUTES: &str = "1440";

impl MobizonClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Secret,
        from: Option<String>,
        max_rps: f64,
    ) -> MobizonClient {
        MobizonClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            from,
            pacer: Pacer::new(max_rps),
        }
    }

    /// Sends one SMS to `recipient` (international digits, `77051234567`).
    pub async fn send(
        &self,
        recipient: &str,
        text: &str,
        campaign: &str,
    ) -> Result<Sent, SendError> {
        let mut form = vec![
            ("recipient", recipient),
            ("text", text),
            ("params[validity]", VALIDITY_MINUTES),
            ("params[name]", campaign),
        ];
        if let Some(from) = &self.from {
            form.push(("from", from));
        }
        let (status, body) = self.call("sendsmsmessage", &form).await?;
        classify(status, &body)
    }

    /// One page (from 0) of the SMS to `recipient` with exactly `text` whose
    /// campaign was created since `lookup_window_start(since)`, oldest first.
    /// Read-only: it sends nothing.
    pub async fn find_sms(
        &self,
        recipient: &str,
        text: &str,
        since: DateTime<Utc>,
        page: u32,
    ) -> Result<SmsPage, LookupError> {
        self.list(recipient, Some(text), since, page).await
    }

    /// One page (from 0) of every SMS to `recipient`, whatever its text,
    /// whose campaign was created since `lookup_window_start(since)`, oldest
    /// first: what `reconcile` asks about a lead (the system before leadrelay
    /// may have worded it otherwise). Waits its turn at the pacer. Read-only.
    pub async fn list_sms_to(
        &self,
        recipient: &str,
        since: DateTime<Utc>,
        page: u32,
    ) -> Result<SmsPage, LookupError> {
        // the worker's look-up waits its turn itself, cancellably
        self.pacer.wait_turn().await;
        self.list(recipient, None, since, page).await
    }

    async fn list(
        &self,
        recipient: &str,
        text: Option<&str>,
        since: DateTime<Utc>,
        page: u32,
    ) -> Result<SmsPage, LookupError> {
        let from = lookup_window_start(since);
        let page = page.to_string();
        let page_size = LOOKUP_PAGE_SIZE.to_string();
        let mut form = vec![("criteria[to]", recipient)];
        if let Some(text) = text {
            form.push(("criteria[text]", text));
        }
        form.extend([
            ("criteria[campaignCreateTsFrom]", from.as_str()),
            ("pagination[pageSize]", page_size.as_str()),
            ("pagination[currentPage]", page.as_str()),
            ("sort[startSendTs]", "ASC"),
        ]);
        let (status, body) = self
            .call("list", &form)
            .await
            .map_err(|e| LookupError::Unavailable(e.to_string()))?;
        parse_list(status, &body)
    }
}

/// The most items one look-up page holds (Mobizon allows 25, 50 or 100).
pub const LOOKUP_PAGE_SIZE: u32 = 100;

/// Where a look-up's time window starts, as Mobizon's `YYYY-MM-DD HH:MM:SS`.
///
/// Mobizon does not say in which time zone it reads the criteria (the
/// account's, most likely). The moment the attempt began, in UTC, less one
/// day: read in any zone from UTC−12 to UTC+14 it names an instant 12 to 38
/// hours before the attempt, so the message is inside the window whatever
/// the zone. Recipient and exact text pick the message; ids other jobs
/// already hold are set aside by the caller.
pub fn lookup_window_start(since: DateTime<Utc>) -> String {
    (since - chrono::Duration::days(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// An SMS `message/list` returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedSms {
    pub id: String,
    pub campaign_id: Option<String>,
    /// Recipient digits as Mobizon stores them.
    pub to: String,
    pub text: String,
    /// NEW, ENQUEUD, ACCEPTD, DELIVRD, … (as in `getsmsstatus`).
    pub status: Option<String>,
    /// The item as Mobizon sent it, kept as the delivery event's payload.
    pub raw: serde_json::Value,
}

/// Mobizon names no zone for its times; read in any zone from UTC−12 to
/// UTC+14 (and five minutes of clock skew), a time it lists is at most this
/// much earlier than the moment it means…
const ZONE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(12 * 60 + 5);
/// …and at most this much later.
const ZONE_MARGIN_AHEAD: chrono::TimeDelta = chrono::TimeDelta::minutes(14 * 60 + 5);

impl ListedSms {
    /// The time Mobizon lists: `startSendTs`, or while it waits in Mobizon's
    /// queue its campaign's creation; in a zone nobody names.
    pub fn listed_time(&self) -> Option<chrono::NaiveDateTime> {
        ["startSendTs", "campaignCreateTs", "createTs"]
            .iter()
            .filter_map(|k| self.raw.get(*k).and_then(|v| v.as_str()))
            .find_map(|t| chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S").ok())
    }

    /// Whether this message may have been made at or after `since`: false
    /// only when its listed time is earlier in every zone Mobizon could be
    /// writing in. A message with no readable time may be.
    pub fn may_be_from_after(&self, since: chrono::DateTime<chrono::Utc>) -> bool {
        self.possible_instants()
            .is_none_or(|(_, latest)| latest >= since)
    }

    /// The earliest and the latest instant its listed time can mean, read in
    /// every zone from UTC−12 to UTC+14 (five minutes of skew either side);
    /// None when it lists no readable time.
    pub fn possible_instants(
        &self,
    ) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
        let listed = self.listed_time()?.and_utc();
        Some((listed - ZONE_MARGIN_AHEAD, listed + ZONE_MARGIN))
    }

    /// Whether it went to exactly `recipient`: `criteria[to]` matches part
    /// of a number, so the digits are compared whole here.
    pub fn is_to(&self, recipient: &str) -> bool {
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        digits(&self.to) == digits(recipient)
    }

    /// Whether this is the message to `recipient` with `text`: the criteria
    /// match part of a number, so the digits are compared whole here.
    pub fn is_message(&self, recipient: &str, text: &str) -> bool {
        let lines = |s: &str| s.replace("\r\n", "\n").trim().to_string();
        self.is_to(recipient) && lines(&self.text) == lines(text)
    }
}

/// One page of a look-up, and how many items match in all.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsPage {
    pub items: Vec<ListedSms>,
    pub total: u64,
}

/// A look-up that did not answer the question. Never a reason to send: the
/// job waits and is looked up again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("mobizon look-up: {0}")]
    Unavailable(String),
    #[error("mobizon look-up refused with code {code}: {message}")]
    Refused { code: i64, message: String },
    #[error("mobizon look-up: unreadable answer (HTTP {status})")]
    Unreadable { status: u16 },
}

fn parse_list(status: u16, body: &[u8]) -> Result<SmsPage, LookupError> {
    if status == 429 || status >= 500 {
        return Err(LookupError::Unavailable(format!("HTTP {status}")));
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|_| LookupError::Unreadable { status })?;
    match code_of(&answer.code) {
        Some(0) => {}
        Some(code) => {
            return Err(LookupError::Refused {
                code,
                message: clip(&text_of(&answer.message), 200),
            });
        }
        None => return Err(LookupError::Unreadable { status }),
    }
    // No `items` at all is not "none found": only an empty list is.
    let items = answer
        .data
        .get("items")
        .and_then(|v| v.as_array())
        .ok_or(LookupError::Unreadable { status })?;
    let total = match answer.data.get("totalItemCount") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(items.len() as u64);
    let items = items
        .iter()
        .filter_map(|item| {
            let field = |key: &str| match item.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let id = field("id").filter(|id| !id.is_empty() && id.len() <= 100)?;
            Some(ListedSms {
                id,
                campaign_id: field("campaignId").filter(|c| c.len() <= 100),
                to: field("to")?,
                text: field("text")?,
                status: field("status"),
                raw: item.clone(),
            })
        })
        .collect();
    Ok(SmsPage { items, total })
}

fn code_of(code: &serde_json::Value) -> Option<i64> {
    match code {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl MobizonClient {
    /// POSTs `form` to `service/message/{method}` with the API key in the query
    /// (as Mobizon expects it); returns the HTTP status and the body, bounded.
    async fn call(&self, method: &str, form: &[(&str, &str)]) -> Result<(u16, Vec<u8>), SendError> {
        let response = self
            .http
            .post(format!("{}/service/message/{method}", self.base_url))
            .query(&[
                ("output", "json"),
                ("api", "v1"),
                ("apiKey", self.api_key.expose()),
            ])
            .form(form)
            .send()
            .await
            // without_url: the URL carries the API key
            .map_err(|e| SendError::from_transport("mobizon", &e.without_url()))?;
        let status = response.status().as_u16();
        // The request was taken far enough to answer: a body lost now leaves
        // its outcome unknown.
        // a list page of 100 messages is larger than a send's answer
        let max = if method == "sendsmsmessage" {
            MAX_RESPONSE_BYTES
        } else {
            MAX_LIST_BYTES
        };
        let body = read_up_to(response, max)
            .await
            .map_err(|e| SendError::Temporary {
                message: format!(
                    "mobizon HTTP {status}: the answer was cut short: {}",
                    SendError::from_transport("mobizon", &e.without_url())
                ),
                retry_after: None,
                rate_limited: false,
                outcome_unknown: true,
            })?;
        Ok((status, body))
    }

    /// `getsmsstatus` for up to 100 message ids: each one's id, status code
    /// (NEW, ENQUEUD, ACCEPTD, PDLIVRD, DELIVRD, UNDELIV, REJECTD, EXPIRED,
    /// DELETED) and the raw entry. Unknown ids are left out by Mobizon.
    pub async fn statuses(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, String, serde_json::Value)>, SendError> {
        let form: Vec<(&str, &str)> = ids
            .iter()
            .take(100)
            .map(|id| ("ids[]", id.as_str()))
            .collect();
        let (status, body) = self.call("getsmsstatus", &form).await?;
        parse_statuses(status, &body)
    }
}

fn parse_statuses(
    status: u16,
    body: &[u8],
) -> Result<Vec<(String, String, serde_json::Value)>, SendError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        SendError::temporary(format!("mobizon HTTP {status}: unreadable status answer"))
    })?;
    if answer.code.as_i64() != Some(0) && answer.code.as_str() != Some("0") {
        return Err(SendError::temporary(format!(
            "mobizon status code {}",
            answer.code
        )));
    }
    let entries = answer.data.as_array().cloned().unwrap_or_default();
    Ok(entries
        .into_iter()
        .filter_map(|entry| {
            let id = match entry.get("id")? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            let state = entry.get("status")?.as_str()?.to_string();
            Some((id, state, entry))
        })
        .collect())
}

/// Code 0: the SMS was taken, under `data.messageId` (without one we cannot
/// tell what was sent, so the outcome is unknown).
fn accepted(data: &serde_json::Value) -> Result<Sent, SendError> {
    let id = data.get("messageId").map(text_of).unwrap_or_default();
    if id.is_empty() || id.len() > 100 {
        return Err(SendError::Temporary {
            message: "mobizon code 0 without data.messageId".into(),
            retry_after: None,
            rate_limited: false,
            outcome_unknown: true,
        });
    }
    let campaign_id = data
        .get("campaignId")
        .map(text_of)
        .filter(|c| !c.is_empty() && c.len() <= 100);
    Ok(Sent {
        provider_message_id: id,
        campaign_id,
    })
}

fn classify(status: u16, body: &[u8]) -> Result<Sent, SendError> {
    // A gateway in front of Mobizon answers these when it lost track of a
    // request Mobizon itself may have taken.
    if matches!(status, 502..=504) {
        return Err(SendError::Temporary {
            message: format!(
                "mobizon HTTP {status} from a gateway: the SMS may have been taken: {}",
                clip(&String::from_utf8_lossy(body), 200)
            ),
            retry_after: None,
            rate_limited: false,
            outcome_unknown: true,
        });
    }
    if status == 429 || status >= 500 {
        return Err(SendError::temporary(format!(
            "mobizon HTTP {status}: {}",
            clip(&String::from_utf8_lossy(body), 200)
        )));
    }
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if (200..300).contains(&status) => {
            // We cannot tell whether it was accepted.
            return Err(SendError::Temporary {
                message: format!(
                    "mobizon HTTP {status}: unreadable answer: {}",
                    clip(&String::from_utf8_lossy(body), 200)
                ),
                retry_after: None,
                rate_limited: false,
                outcome_unknown: true,
            });
        }
        Err(_) => {
            return Err(SendError::permanent(format!(
                "mobizon HTTP {status}: {}",
                clip(&String::from_utf8_lossy(body), 200)
            )));
        }
    };
    let message = clip(&text_of(&answer.message), 300);
    match code_of(&answer.code) {
        Some(0) => accepted(&answer.data),
        Some(30) => Err(SendError::Temporary {
            message: format!("mobizon code 30 (request rate exceeded): {message}"),
            retry_after: Some(Duration::from_secs(5)),
            rate_limited: true,
            outcome_unknown: false,
        }),
        Some(c @ (3 | 10 | 15 | 999)) => {
            Err(SendError::temporary(format!("mobizon code {c}: {message}")))
        }
        Some(c) => {
            let detail = match &answer.data {
                serde_json::Value::Null => String::new(),
                serde_json::Value::Array(a) if a.is_empty() => String::new(),
                data => format!(" ({})", clip(&data.to_string(), 200)),
            };
            Err(SendError::permanent(format!(
                "mobizon code {c}: {message}{detail}"
            )))
        }
        None => Err(SendError::permanent(format!(
            "mobizon HTTP {status}: answer without a code: {}",
            clip(&String::from_utf8_lossy(body), 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_zero_is_sent_with_the_message_id_as_text() {
        let sent = classify(
            200,
            br#"{"code":0,"data":{"campaignId":"123","messageId":"4567","status":2},"message":""}"#,
        )
        .unwrap();
        assert_eq!(sent.provider_message_id, "4567");
        let sent = classify(200, br#"{"code":"0","data":{"campaignId":1,"messageId":169275418,"status":2},"message":""}"#).unwrap();
        assert_eq!(sent.provider_message_id, "169275418");
    }

    #[test]
    fn validation_and_account_errors_are_permanent_with_the_providers_words() {
        let err = classify(200, "{\"code\":1,\"data\":{\"recipient\":\"Неверный номер\"},\"message\":\"Ошибка валидации\"}".as_bytes()).unwrap_err();
        assert!(matches!(err, SendError::Permanent { .. }));
        let text = err.to_string();
        assert!(text.contains("mobizon code 1: Ошибка валидации"), "{text}");
        assert!(text.contains("Неверный номер"), "{text}");
        for code in [2, 4, 8, 11, 12, 13, 14] {
            let body = format!("{{\"code\":{code},\"data\":[],\"message\":\"no\"}}");
            assert!(
                matches!(
                    classify(200, body.as_bytes()),
                    Err(SendError::Permanent { .. })
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn server_and_limit_errors_are_temporary() {
        for code in [3, 10, 15, 30, 999] {
            let body = format!("{{\"code\":{code},\"data\":[],\"message\":\"later\"}}");
            assert!(
                matches!(
                    classify(200, body.as_bytes()),
                    Err(SendError::Temporary { .. })
                ),
                "{code}"
            );
        }
        assert!(matches!(
            classify(502, b"bad gateway"),
            Err(SendError::Temporary { .. })
        ));
        assert!(matches!(
            classify(429, b""),
            Err(SendError::Temporary { .. })
        ));
    }

    #[test]
    fn an_unreadable_success_may_have_been_sent() {
        let err = classify(200, b"<html>").unwrap_err();
        assert!(matches!(
            err,
            SendError::Temporary {
                outcome_unknown: true,
                ..
            }
        ));
        let err = classify(200, br#"{"code":0,"data":{},"message":""}"#).unwrap_err();
        assert!(matches!(
            err,
            SendError::Temporary {
                outcome_unknown: true,
                ..
            }
        ));
    }

    #[test]
    fn status_answers_list_each_message() {
        let body = br#"{"code":0,"data":[{"id":"13","status":"DELIVRD","segNum":"1","startSendTs":"2026-01-01 10:00:00","statusUpdateTs":"2026-01-01 10:00:05"},{"id":14,"status":"NEW"},{"status":"X"}],"message":""}"#;
        let got = parse_statuses(200, body).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("13", "DELIVRD"));
        assert_eq!((got[1].0.as_str(), got[1].1.as_str()), ("14", "NEW"));
        assert!(parse_statuses(200, br#"{"code":8,"data":[],"message":"auth"}"#).is_err());
        assert!(parse_statuses(502, b"<html>").is_err());
    }

    #[test]
    fn a_listed_message_certainly_older_than_the_attempt_is_not_this_jobs() {
        let item = |ts: &str| ListedSms {
            id: "1".into(),
            campaign_id: None,
            to: "77051234567".into(),
            text: "t".into(),
            status: None,
            raw: serde_json::json!({"startSendTs": ts}),
        };
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        // the same moment in UTC, in Almaty (UTC+5), in UTC−12 and UTC+14
        for ts in [
            "2026-11-30 10:00:00",
            "2026-11-30 15:00:00",
            "2026-11-29 22:00:00",
            "2026-12-01 00:00:00",
        ] {
            assert!(item(ts).may_be_from_after(since), "{ts}");
        }
        // a day earlier in every zone: a deleted lead's SMS, say
        assert!(!item("2026-11-28 10:00:00").may_be_from_after(since));
        assert!(!item("2026-11-29 21:50:00").may_be_from_after(since));
        // no time to judge by: it may be
        assert!(item("").may_be_from_after(since));
        assert!(item("garbage").may_be_from_after(since));
    }

    #[test]
    fn a_gateways_502_503_504_may_have_been_taken_but_a_500_was_not() {
        for status in [502, 503, 504] {
            let err = classify(status, b"<html>Bad gateway</html>").unwrap_err();
            assert!(
                matches!(
                    err,
                    SendError::Temporary {
                        outcome_unknown: true,
                        ..
                    }
                ),
                "{status}"
            );
        }
        for status in [500, 429] {
            let err = classify(status, b"").unwrap_err();
            assert!(
                matches!(
                    err,
                    SendError::Temporary {
                        outcome_unknown: false,
                        ..
                    }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn a_sent_sms_carries_its_campaign() {
        let sent = classify(
            200,
            br#"{"code":0,"data":{"campaignId":31,"messageId":"4567","status":2},"message":""}"#,
        )
        .unwrap();
        assert_eq!(sent.campaign_id.as_deref(), Some("31"));
    }

    /// The answer of Mobizon's documented `message/list`.
    const LISTED: &str = r#"{"code":0,"data":{"items":[
        {"id":"169275418","campaignId":"84562701","segNum":"1","segUserBuy":"10.5","from":"Alpha","to":"77051234567",
         "text":"Ваш результат: https://example.com/p","status":"DELIVRD","groups":null,"uuid":"b1e0","countryA2":"KZ",
         "operatorName":"Beeline","startSendTs":"2026-11-29 10:00:01","statusUpdateTs":"2026-11-29 10:00:09"},
        {"id":169275419,"campaignId":84562702,"to":"770512345670","text":"Ваш результат: https://example.com/p","status":"NEW"}
      ],"totalItemCount":"2"},"message":""}"#;

    #[test]
    fn the_look_up_answer_lists_each_message_with_its_ids_and_status() {
        let page = parse_list(200, LISTED.as_bytes()).unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.items.len(), 2);
        let first = &page.items[0];
        assert_eq!(first.id, "169275418");
        assert_eq!(first.campaign_id.as_deref(), Some("84562701"));
        assert_eq!(first.status.as_deref(), Some("DELIVRD"));
        assert_eq!(first.raw["operatorName"], "Beeline");
        assert_eq!(page.items[1].id, "169275419");
        assert_eq!(page.items[1].campaign_id.as_deref(), Some("84562702"));
        // the criteria match part of a number: only the whole number is ours
        let text = "Ваш результат: https://example.com/p";
        assert!(first.is_message("77051234567", text));
        assert!(!page.items[1].is_message("77051234567", text));
        assert!(!first.is_message("77051234567", "Ваш результат: https://example.com/q"));
        assert!(first.is_message("+7 705 123 45 67", &format!("{text}\n")));
    }

    #[test]
    fn an_empty_list_is_not_found_and_everything_else_is_a_failed_look_up() {
        let empty = parse_list(
            200,
            br#"{"code":0,"data":{"items":[],"totalItemCount":0},"message":""}"#,
        )
        .unwrap();
        assert_eq!(
            empty,
            SmsPage {
                items: vec![],
                total: 0
            }
        );
        assert_eq!(
            parse_list(
                200,
                br#"{"code":9,"data":[],"message":"Method not allowed"}"#
            ),
            Err(LookupError::Refused {
                code: 9,
                message: "Method not allowed".into()
            })
        );
        for status in [429, 500, 502, 503, 504] {
            assert!(matches!(
                parse_list(status, LISTED.as_bytes()),
                Err(LookupError::Unavailable(_))
            ));
        }
        // a success without a list says nothing about the message
        for body in [
            &br#"{"code":0,"data":{},"message":""}"#[..],
            br#"{"code":0,"data":[],"message":""}"#,
            br#"{"code":0,"data":{"items":{}},"message":""}"#,
            br#"{"code":0,"message":""}"#,
            br#"{"data":{"items":[]}}"#,
        ] {
            assert!(
                matches!(parse_list(200, body), Err(LookupError::Unreadable { .. })),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn hostile_or_truncated_look_up_answers_are_failures_never_not_found() {
        let truncated = &LISTED.as_bytes()[..LISTED.len() / 2];
        for body in [
            truncated,
            b"",
            b"null",
            b"<html>",
            &[0xff, 0xfe][..],
            br#"{"code":"0","data":{"items":[null,1,"x",{"id":{}},{"id":"1"},{"id":"","to":"7","text":"t"}]}}"#,
        ] {
            match parse_list(200, body) {
                Ok(page) => assert!(page.items.is_empty(), "{}", String::from_utf8_lossy(body)),
                Err(LookupError::Unreadable { .. }) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        // a million-digit count or an absurd id is refused, not trusted
        let huge = format!(
            r#"{{"code":0,"data":{{"items":[{{"id":"{}","to":"77051234567","text":"t"}}],"totalItemCount":"1e999"}}}}"#,
            "9".repeat(500)
        );
        let page = parse_list(200, huge.as_bytes()).unwrap();
        assert!(page.items.is_empty());
    }

    #[test]
    fn the_look_up_window_starts_a_day_before_the_attempt_in_utc() {
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-29T03:04:05+05:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(lookup_window_start(since), "2026-11-27 22:04:05");
    }

    #[test]
    fn hostile_answers_never_panic() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"code\":null}",
            b"{\"code\":1e308}",
            b"{\"code\":{}}",
            &[0xff, 0xfe][..],
        ] {
            let _ = classify(200, body);
            let _ = classify(400, body);
        }
    }
}
