//! Outbound providers. Each is a small typed client that turns every answer
//! into `Sent`, a temporary error (retry later) or a permanent one (fail the
//! job now with the provider's own words).
//!
//! The providers room: the Resend and Mobizon clients and the pacer that
//! keeps them within their rate limits. It uses `domain` only.

pub mod mobizon;
pub mod pacer;
pub mod resend;
pub mod resend_list;

use std::time::Duration;

/// The provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub provider_message_id: String,
    /// Mobizon's `campaignId`; Resend has none.
    pub campaign_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt: 429, 5xx, timeouts, connection errors, the
    /// provider's "try later" codes.
    #[error("{message}")]
    Temporary {
        message: String,
        /// The provider's own wait (Retry-After, a quota reset).
        retry_after: Option<Duration>,
        /// A limit we hit, not a failure of this message: the attempt is not
        /// counted against the job's maximum.
        rate_limited: bool,
        /// The request may have reached the provider (a timeout after it was
        /// sent): for an SMS, a retry may send it twice.
        outcome_unknown: bool,
    },
    /// Retrying cannot help: a rejected address, a bad key, a validation error.
    #[error("{message}")]
    Permanent { message: String },
}

impl SendError {
    pub fn temporary(message: impl Into<String>) -> SendError {
        SendError::Temporary {
            message: message.into(),
            retry_after: None,
            rate_limited: false,
            outcome_unknown: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError::Permanent {
            message: message.into(),
        }
    }

    /// A transport failure: nothing was answered.
    pub fn from_transport(provider: &str, error: &reqwest::Error) -> SendError {
        // without_url: Mobizon's URL carries the API key.
        let unknown = error.is_timeout() || (error.is_request() && !error.is_connect());
        let description = if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_connect() {
            "could not connect".to_string()
        } else {
            let mut text = String::new();
            let mut source: Option<&dyn std::error::Error> = Some(error);
            while let Some(e) = source {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&e.to_string());
                source = e.source();
            }
            text
        };
        SendError::Temporary {
            message: format!("{provider}: {description}"),
            retry_after: None,
            rate_limited: false,
            outcome_unknown: unknown,
        }
    }
}

/// Provider answers are read up to this size; a larger one is an error, not a
/// reason to buffer without end.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Reads a response body, refusing one larger than `MAX_RESPONSE_BYTES`.
pub async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    read_up_to(response, MAX_RESPONSE_BYTES).await
}

/// A list page of 100 items: larger than an answer to a send.
pub const MAX_LIST_BYTES: usize = 2 * 1024 * 1024;

/// Reads at most `max` bytes of a body; what is cut off makes it unreadable
/// to the parser, never a shorter answer that looks whole.
pub async fn read_up_to(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            body.extend_from_slice(&chunk[..max - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client every provider uses: rustls, a bounded connect time and a
/// bounded whole-request time.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("leadrelay/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// At most `max` characters of a provider's text, for `last_error`.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}
