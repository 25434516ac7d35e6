//! Resend: `POST {RESEND_API_URL}/emails`.
//!
//! - Success is 200 with `{"id": "<email id>"}`; webhook events name it
//!   `data.email_id`.
//! - Errors are `{"statusCode", "name", "message"}`. 429 (`rate_limit_exceeded`,
//!   `daily_quota_exceeded`) and 5xx are temporary; 400, 401, 403, 404, 422 are
//!   permanent for the message. A daily quota resets within hours: we wait an
//!   hour, not the retry schedule.
//! - `Idempotency-Key` (≤ 256 characters) is kept by Resend for 24 hours: the
//!   same key with the same body returns the first answer without sending
//!   again; with another body it is a 409 `invalid_idempotent_request`. The key
//!   is derived from the job id alone and the body never changes between
//!   attempts. A 409 `concurrent_idempotent_requests` means the first request
//!   with this key is still being processed: try again shortly.
//! - `POST /emails/batch` takes a JSON list of up to 100 emails and answers
//!   `{"data": [{"id": …}, …]}` in the same order. One idempotency key covers
//!   the whole request, and one request counts once against the rate limit.
//!   In the default (strict) validation mode one invalid email fails the
//!   whole batch and nothing is sent; we do not ask for the permissive mode,
//!   so an answer is all or nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SendError, Sent, clip, read_limited};
use crate::domain::Secret;
use crate::providers::pacer::{Pacer, RateLimitHeaders};

#[derive(Debug)]
pub struct ResendClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    pub pacer: Pacer,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutgoingEmail {
    pub from: String,
    pub to: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A template Resend hosts, rendered there with these variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<HostedTemplate>,
    pub tags: Vec<Tag>,
    /// Extra headers (`List-Unsubscribe`, `List-Unsubscribe-Post`), which
    /// Resend passes through.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostedTemplate {
    pub id: String,
    pub variables: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tag {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
struct SendAnswer {
    id: String,
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    data: Vec<SendAnswer>,
}

/// The most emails one batch request may carry.
pub const MAX_BATCH: usize = 100;

#[derive(Debug, Default, Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

/// Whether a permanent error's message is Resend's 409
/// `invalid_idempotent_request`: the key was accepted before with another
/// body, so what it carried then most likely went out.
pub fn key_used_with_other_contents(message: &str) -> bool {
    message.starts_with("resend 409 invalid_idempotent_request")
}

/// The key Resend deduplicates a lone email on: the one the job's first
/// claim stored (`leadrelay-<lead uuid>-<template>`, unique across
/// databases), so every attempt of a job, from any worker, carries the same
/// one. A job claimed before keys were stored falls back to its id.
pub fn idempotency_key(job_id: i64, stored: Option<&str>) -> String {
    match stored {
        Some(key) if !key.is_empty() => key.to_string(),
        _ => format!("leadrelay-job-{job_id}"),
    }
}

impl ResendClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Secret,
        max_rps: f64,
    ) -> ResendClient {
        ResendClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            pacer: Pacer::new(max_rps),
        }
    }

    /// Takes `share` of the team's rate limit (a command beside `serve`).
    pub fn with_rate_share(self, share: f64) -> ResendClient {
        self.pacer.set_share(share);
        self
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(super) fn api_key(&self) -> &Secret {
        &self.api_key
    }

    pub async fn send(
        &self,
        email: &OutgoingEmail,
        idempotency_key: &str,
    ) -> Result<Sent, SendError> {
        let (status, limits, body) = self.post("emails", email, idempotency_key).await?;
        classify(status, &limits, &body)
    }

    /// Sends up to [`MAX_BATCH`] emails in one request; on success, one
    /// result per email, in order.
    pub async fn send_batch(
        &self,
        emails: &[OutgoingEmail],
        idempotency_key: &str,
    ) -> Result<Vec<Sent>, SendError> {
        let (status, limits, body) = self.post("emails/batch", emails, idempotency_key).await?;
        classify_batch(status, &limits, &body, emails.len())
    }

    /// One request; its rate-limit headers feed the pacer.
    async fn post(
        &self,
        path: &str,
        json: &(impl Serialize + ?Sized),
        idempotency_key: &str,
    ) -> Result<(u16, RateLimitHeaders, Vec<u8>), SendError> {
        let response = self
            .http
            .post(format!("{}/{path}", self.base_url))
            .bearer_auth(self.api_key.expose())
            .header("Idempotency-Key", idempotency_key)
            .json(json)
            .send()
            .await
            .map_err(|e| SendError::from_transport("resend", &e))?;
        let status = response.status().as_u16();
        let limits = RateLimitHeaders::from_headers(response.headers());
        self.pacer.observe(&limits);
        let body = read_limited(response)
            .await
            .map_err(|e| SendError::from_transport("resend", &e))?;
        Ok((status, limits, body))
    }
}

fn usable_id(answer: SendAnswer) -> Option<Sent> {
    (!answer.id.trim().is_empty() && answer.id.len() <= 200).then_some(Sent {
        provider_message_id: answer.id,
        campaign_id: None,
    })
}

fn classify(status: u16, limits: &RateLimitHeaders, body: &[u8]) -> Result<Sent, SendError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice::<SendAnswer>(body)
            .ok()
            .and_then(usable_id)
            // Accepted but unreadable: the retry carries the same idempotency
            // key, so Resend answers it with the first result and sends nothing.
            .ok_or_else(|| {
                SendError::temporary(format!(
                    "resend {status}: answer without an email id: {}",
                    clip(&String::from_utf8_lossy(body), 200)
                ))
            });
    }
    Err(classify_error(status, limits, body))
}

fn classify_batch(
    status: u16,
    limits: &RateLimitHeaders,
    body: &[u8],
    expected: usize,
) -> Result<Vec<Sent>, SendError> {
    if (200..300).contains(&status) {
        let ids: Option<Vec<Sent>> = serde_json::from_slice::<BatchAnswer>(body)
            .ok()
            .filter(|answer| answer.data.len() == expected)
            .and_then(|answer| answer.data.into_iter().map(usable_id).collect());
        // As for one email: the same key and body get the first answer again.
        return ids.ok_or_else(|| {
            SendError::temporary(format!(
                "resend {status}: batch answer without {expected} email ids: {}",
                clip(&String::from_utf8_lossy(body), 200)
            ))
        });
    }
    Err(classify_error(status, limits, body))
}

fn classify_error(status: u16, limits: &RateLimitHeaders, body: &[u8]) -> SendError {
    let error: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
    let message = if error.name.is_empty() && error.message.is_empty() {
        format!(
            "resend {status}: {}",
            clip(&String::from_utf8_lossy(body), 300)
        )
    } else {
        format!(
            "resend {status} {}: {}",
            clip(&error.name, 60),
            clip(&error.message, 300)
        )
    };
    let retry_after = limits.retry_after.map(Duration::from_secs_f64);
    match (status, error.name.as_str()) {
        (429, "daily_quota_exceeded") => SendError::Temporary {
            message,
            retry_after: Some(Duration::from_secs(3600)),
            rate_limited: true,
            outcome_unknown: false,
        },
        (429, _) => SendError::Temporary {
            message,
            retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
            rate_limited: true,
            outcome_unknown: false,
        },
        (409, "concurrent_idempotent_requests") => SendError::Temporary {
            message,
            retry_after: Some(Duration::from_secs(2)),
            rate_limited: true,
            outcome_unknown: false,
        },
        (500..=599, _) | (408, _) => SendError::Temporary {
            message,
            retry_after,
            rate_limited: false,
            outcome_unknown: false,
        },
        _ => SendError::permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> RateLimitHeaders {
        RateLimitHeaders::default()
    }

    #[test]
    fn a_200_with_an_id_is_sent() {
        let sent = classify(
            200,
            &none(),
            br#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
        )
        .unwrap();
        assert_eq!(
            sent.provider_message_id,
            "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"
        );
    }

    #[test]
    fn a_200_without_a_usable_id_is_retried_under_the_same_key() {
        for body in [&b"{}"[..], b"not json", b"{\"id\": \"\"}", b"{\"id\": 5}"] {
            assert!(matches!(
                classify(200, &none(), body),
                Err(SendError::Temporary { .. })
            ));
        }
    }

    #[test]
    fn permanent_errors_carry_the_providers_words() {
        let err = classify(
            422,
            &none(),
            br#"{"statusCode":422,"name":"validation_error","message":"Invalid `to` field."}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SendError::permanent("resend 422 validation_error: Invalid `to` field.")
        );
        for status in [400, 401, 403, 404] {
            assert!(matches!(
                classify(status, &none(), b"{}"),
                Err(SendError::Permanent { .. })
            ));
        }
        let err = classify(
            409,
            &none(),
            br#"{"name":"invalid_idempotent_request","message":"x"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, SendError::Permanent { message } if key_used_with_other_contents(message))
        );
    }

    #[test]
    fn rate_limits_quotas_and_server_errors_are_temporary() {
        let limits = RateLimitHeaders {
            retry_after: Some(7.0),
            ..Default::default()
        };
        let err = classify(
            429,
            &limits,
            br#"{"name":"rate_limit_exceeded","message":"Too many requests"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, SendError::Temporary { retry_after: Some(d), rate_limited: true, .. } if d == Duration::from_secs(7))
        );
        let err = classify(
            429,
            &none(),
            br#"{"name":"daily_quota_exceeded","message":"quota"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, SendError::Temporary { retry_after: Some(d), .. } if d == Duration::from_secs(3600))
        );
        for status in [500, 502, 503] {
            assert!(matches!(
                classify(status, &none(), b"<html>bad gateway</html>"),
                Err(SendError::Temporary { .. })
            ));
        }
    }

    #[test]
    fn a_batch_answer_gives_one_id_per_email_in_order() {
        let sent = classify_batch(
            200,
            &none(),
            br#"{"data":[{"id":"ae2014de"},{"id":"faccb7a5"}]}"#,
            2,
        )
        .unwrap();
        let ids: Vec<&str> = sent
            .iter()
            .map(|s| s.provider_message_id.as_str())
            .collect();
        assert_eq!(ids, ["ae2014de", "faccb7a5"]);
    }

    #[test]
    fn a_batch_answer_with_missing_or_unusable_ids_is_retried_under_the_same_key() {
        for body in [
            &br#"{"data":[{"id":"a"}]}"#[..],
            br#"{"data":[{"id":"a"},{"id":""}]}"#,
            br#"{"data":[{"id":"a"},{"id":"b"},{"id":"c"}]}"#,
            br#"{"data":[{"id":"a"},{}]}"#,
            br#"[{"id":"a"},{"id":"b"}]"#,
            b"{}",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(
                    classify_batch(200, &none(), body, 2),
                    Err(SendError::Temporary { .. })
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_refused_batch_is_classified_like_one_email() {
        let err = classify_batch(
            422,
            &none(),
            br#"{"statusCode":422,"name":"validation_error","message":"emails[3].to is invalid"}"#,
            5,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SendError::permanent("resend 422 validation_error: emails[3].to is invalid")
        );
        assert!(matches!(
            classify_batch(429, &none(), b"{}", 5),
            Err(SendError::Temporary {
                rate_limited: true,
                ..
            })
        ));
    }

    #[test]
    fn the_default_batch_is_within_resends_limit() {
        assert!((1..=MAX_BATCH).contains(&crate::domain::defaults::RESEND_BATCH_SIZE));
    }

    #[test]
    fn idempotency_keys_depend_on_the_job_alone_and_fit_resends_limit() {
        assert_eq!(idempotency_key(42, None), "leadrelay-job-42");
        assert_eq!(
            idempotency_key(42, Some("leadrelay-3f1c-proftest_result")),
            "leadrelay-3f1c-proftest_result"
        );
        assert!(idempotency_key(i64::MAX, None).len() <= 256);
    }
}
