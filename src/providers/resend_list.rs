//! Resend's list of sent emails, read-only: `GET /emails` (what
//! `reconcile` asks before it sends anything).
//!
//! - `GET /emails?limit=N&after=ID` answers `{"object": "list", "has_more",
//!   "data": [{"id", "to": [...], "from", "created_at", "subject",
//!   "last_event", …}]}`, newest first; `limit` is 1 to 100 (default 20);
//!   the cursor is an email id and is not included in the page.
//! - `created_at` is written `2023-04-03 22:13:42.674981+00` in the API
//!   reference and `2023-04-03T22:13:42.674981+00:00` in the changelog:
//!   both are read, and an email whose time cannot be read makes the page a
//!   failed look-up, never "not found" (skipping it could send twice).
//! - A key with sending access only gets 401 `restricted_api_key`: it may
//!   not list, and the caller says so instead of guessing.
//! - Every request waits its turn at the client's pacer (the team's rate
//!   limit, `ratelimit-*` headers followed); a 429 waits `retry-after` and
//!   is asked again.

use chrono::{DateTime, Utc};

use super::resend::ResendClient;
use super::{MAX_LIST_BYTES, clip, read_up_to};
use crate::providers::pacer::RateLimitHeaders;

/// The most emails one page holds (Resend's maximum).
pub const LIST_PAGE_SIZE: u32 = 100;

/// One email of Resend's list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedEmail {
    pub id: String,
    pub to: Vec<String>,
    pub subject: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `sent`, `delivered`, `opened`, `bounced`, `canceled`, … as Resend
    /// names its latest event.
    pub last_event: Option<String>,
}

impl ListedEmail {
    /// A scheduled email cancelled before it went: nobody received it.
    pub fn was_cancelled(&self) -> bool {
        matches!(self.last_event.as_deref(), Some("canceled" | "cancelled"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailPage {
    pub emails: Vec<ListedEmail>,
    pub has_more: bool,
}

/// A look-up that did not answer the question: never a reason to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// 401/403: the key may not read emails (a sending-only key).
    #[error(
        "resend {status}: the API key may not list sent emails ({message}); use a key with full access"
    )]
    NotAllowed { status: u16, message: String },
    #[error("resend: {0}")]
    Unavailable(String),
    #[error("resend: unreadable list answer: {0}")]
    Unreadable(String),
}

/// 429s asked again before the look-up is given up.
const RATE_LIMITED_TRIES: u32 = 8;

impl ResendClient {
    /// One page of sent emails, newest first, after the email `after`.
    pub async fn list_emails(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<EmailPage, ListError> {
        let limit = limit.clamp(1, LIST_PAGE_SIZE).to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let (status, body) = self.get("emails", &query).await?;
        parse_page(status, &body)
    }

    /// A GET at the pacer's turn; a 429 waits as the answer says and asks
    /// again.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, Vec<u8>), ListError> {
        for _ in 0..RATE_LIMITED_TRIES {
            self.pacer.wait_turn().await;
            let response = self
                .http()
                .get(format!("{}/{path}", self.base_url()))
                .bearer_auth(self.api_key().expose())
                .query(query)
                .send()
                .await
                .map_err(|e| {
                    ListError::Unavailable(
                        super::SendError::from_transport("resend", &e).to_string(),
                    )
                })?;
            let status = response.status().as_u16();
            let limits = RateLimitHeaders::from_headers(response.headers());
            self.pacer.observe(&limits);
            let body = read_up_to(response, MAX_LIST_BYTES)
                .await
                .map_err(|e| ListError::Unavailable(format!("the answer was cut short: {e}")))?;
            if status == 429 {
                if limits.retry_after.is_none() && limits.remaining != Some(0) {
                    // no wait named: a second, as for a send
                    self.pacer.observe(&RateLimitHeaders {
                        retry_after: Some(1.0),
                        ..Default::default()
                    });
                }
                continue;
            }
            return Ok((status, body));
        }
        Err(ListError::Unavailable(format!(
            "still rate limited after {RATE_LIMITED_TRIES} tries"
        )))
    }
}

fn check_status(status: u16, body: &[u8]) -> Result<(), ListError> {
    let message = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let name = v.get("name")?.as_str()?.to_string();
                let text = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
                Some(format!("{name}: {text}"))
            })
            .unwrap_or_else(|| clip(&String::from_utf8_lossy(body), 200))
    };
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(ListError::NotAllowed {
            status,
            message: clip(&message(), 200),
        }),
        _ => Err(ListError::Unavailable(format!(
            "HTTP {status}: {}",
            clip(&message(), 200)
        ))),
    }
}

/// A list answer: every email readable, or the whole page is a failure.
pub fn parse_page(status: u16, body: &[u8]) -> Result<EmailPage, ListError> {
    check_status(status, body)?;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ListError::Unreadable(format!("HTTP {status}, not JSON")))?;
    let data = value
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| ListError::Unreadable("no data list".into()))?;
    let emails = data.iter().map(email_of).collect::<Result<Vec<_>, _>>()?;
    let has_more = match value.get("has_more") {
        Some(serde_json::Value::Bool(b)) => *b,
        None | Some(serde_json::Value::Null) => false,
        Some(_) => return Err(ListError::Unreadable("has_more is not a boolean".into())),
    };
    Ok(EmailPage { emails, has_more })
}

fn email_of(item: &serde_json::Value) -> Result<ListedEmail, ListError> {
    let text = |key: &str| item.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let id = text("id")
        .filter(|id| !id.trim().is_empty() && id.len() <= 200)
        .ok_or_else(|| ListError::Unreadable("an email without a usable id".into()))?;
    let created = text("created_at").unwrap_or_default();
    let created_at = parse_created_at(&created).ok_or_else(|| {
        ListError::Unreadable(format!(
            "email {}: created_at {:?} is not a time",
            clip(&id, 60),
            clip(&created, 60)
        ))
    })?;
    let to = match item.get("to") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ListError::Unreadable(format!("email {}: to", clip(&id, 60))))?,
        _ => {
            return Err(ListError::Unreadable(format!(
                "email {}: no to",
                clip(&id, 60)
            )));
        }
    };
    Ok(ListedEmail {
        id,
        to,
        subject: text("subject"),
        created_at,
        last_event: text("last_event"),
    })
}

/// `2023-04-03 22:13:42.674981+00` (the API reference) or RFC 3339.
pub fn parse_created_at(value: &str) -> Option<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer as Resend's changelog shows it.
    const PAGE: &str = r#"{"object":"list","has_more":true,"data":[
      {"id":"4ef9a417-02e9-4d39-ad75-9611e0fcc33c","to":["delivered@resend.dev"],"from":"Acme <onboarding@resend.dev>",
       "created_at":"2023-04-03T22:13:42.674981+00:00","subject":"Hello World","bcc":null,"cc":null,"reply_to":null,
       "last_event":"delivered","scheduled_at":null},
      {"id":"3a9f8c2b-1e5d-4f8a-9c7b-2d6e5f8a9c7b","to":["user@example.com"],"from":"Acme <onboarding@resend.dev>",
       "created_at":"2023-04-03 21:45:12.345678+00","subject":"Welcome to Acme","last_event":"opened"}]}"#;

    #[test]
    fn a_page_lists_each_email_with_its_time_in_either_format() {
        let page = parse_page(200, PAGE.as_bytes()).unwrap();
        assert!(page.has_more);
        assert_eq!(page.emails.len(), 2);
        assert_eq!(page.emails[0].to, ["delivered@resend.dev"]);
        assert_eq!(page.emails[1].last_event.as_deref(), Some("opened"));
        assert_eq!(
            page.emails[1].created_at.to_rfc3339(),
            "2023-04-03T21:45:12.345678+00:00"
        );
        assert_eq!(
            parse_created_at("2023-04-03 22:13:42.674981+00"),
            parse_created_at("2023-04-03T22:13:42.674981Z")
        );
        assert_eq!(
            parse_created_at("2023-04-04 03:13:42+05"),
            parse_created_at("2023-04-03T22:13:42Z")
        );
    }

    #[test]
    fn a_key_that_may_only_send_is_told_apart_from_an_outage() {
        let restricted = br#"{"statusCode":401,"name":"restricted_api_key","message":"This API key is restricted to only send emails"}"#;
        assert!(matches!(
            parse_page(401, restricted),
            Err(ListError::NotAllowed { status: 401, message }) if message.contains("restricted_api_key")
        ));
        for status in [500, 502, 503] {
            assert!(matches!(
                parse_page(status, b"<html>bad gateway</html>"),
                Err(ListError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn a_page_with_one_unreadable_email_is_a_failed_look_up_never_a_shorter_list() {
        for body in [
            &br#"{"data":[{"id":"a","to":["x@y.kz"],"created_at":"yesterday"}]}"#[..],
            br#"{"data":[{"id":"a","to":["x@y.kz"]}]}"#,
            br#"{"data":[{"to":["x@y.kz"],"created_at":"2023-04-03T22:13:42Z"}]}"#,
            br#"{"data":[{"id":"a","to":[5],"created_at":"2023-04-03T22:13:42Z"}]}"#,
            br#"{"data":[{"id":"a","created_at":"2023-04-03T22:13:42Z"}]}"#,
            br#"{"data":{"id":"a"}}"#,
            br#"{"has_more":"yes","data":[]}"#,
            b"{}",
            b"not json",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_page(200, body), Err(ListError::Unreadable(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let empty = parse_page(200, br#"{"object":"list","data":[]}"#).unwrap();
        assert!(empty.emails.is_empty() && !empty.has_more);
    }

    #[test]
    fn a_single_address_and_a_cancelled_email_are_understood() {
        let page = parse_page(
            200,
            br#"{"data":[{"id":"a","to":"x@y.kz","created_at":"2023-04-03T22:13:42Z","last_event":"canceled"}]}"#,
        )
        .unwrap();
        assert_eq!(page.emails[0].to, ["x@y.kz"]);
        assert!(page.emails[0].was_cancelled());
    }

    #[test]
    fn hostile_pages_never_panic() {
        let huge = format!(
            r#"{{"data":[{}]}}"#,
            vec![r#"{"id":"a","to":["x@y.kz"],"created_at":"2023-04-03T22:13:42Z"}"#; 500]
                .join(",")
        );
        assert_eq!(parse_page(200, huge.as_bytes()).unwrap().emails.len(), 500);
        for body in [
            &b"{\"data\":[null]}"[..],
            b"[]",
            b"{\"data\":[{\"id\":\"\"}]}",
        ] {
            let _ = parse_page(200, body);
        }
    }
}
