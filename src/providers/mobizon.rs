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
//! lost may have been sent.

use std::time::Duration;

use serde::Deserialize;

use super::{SendError, Sent, clip, read_limited};
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
        let body = read_limited(response)
            .await
            .map_err(|e| SendError::from_transport("mobizon", &e.without_url()))?;
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

fn classify(status: u16, body: &[u8]) -> Result<Sent, SendError> {
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
    let code = match &answer.code {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let message = clip(&text(&answer.message), 300);
    match code {
        Some(0) => {
            let id = answer.data.get("messageId").map(text).unwrap_or_default();
            if id.is_empty() || id.len() > 100 {
                return Err(SendError::Temporary {
                    message: "mobizon code 0 without data.messageId".into(),
                    retry_after: None,
                    rate_limited: false,
                    outcome_unknown: true,
                });
            }
            Ok(Sent {
                provider_message_id: id,
            })
        }
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
