//! Svix webhook signatures, as Resend signs its webhooks.
//!
//! - Headers `svix-id` (the same on every redelivery), `svix-timestamp` (Unix
//!   seconds) and `svix-signature`.
//! - The secret is `whsec_` followed by base64; the HMAC key is the decoded part.
//! - Signed content: `{svix-id}.{svix-timestamp}.{raw body}`, the body exactly
//!   as received.
//! - The signature is base64 HMAC-SHA256 written `v1,<signature>`; the header
//!   may hold several separated by spaces (secret rotation): any `v1` match is
//!   enough, compared in constant time.
//! - A timestamp more than 5 minutes away from now, either way, is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a timestamp may be from our clock.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvixError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header svix-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("no v1 signature in svix-signature matches")]
    BadSignature,
}

/// The decoded signing key of a `whsec_…` secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; the prefix is optional, as in Svix's libraries.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .unwrap_or(secret.trim());
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "expected whsec_ followed by base64, as Resend shows it".to_string())?;
        if key.len() < 16 {
            return Err("the decoded key is shorter than 16 bytes".into());
        }
        Ok(SigningKey(key))
    }

    fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of a message, for tests and load generators.
    pub fn signature(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.sign(id, timestamp, body).finalize().into_bytes())
        )
    }
}

/// The three Svix headers of a request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SvixHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks a webhook against the key and the clock (`now`, Unix seconds).
/// Returns the `svix-id`, the event's unique id.
pub fn verify_svix_signature<'a>(
    key: &SigningKey,
    headers: SvixHeaders<'a>,
    body: &[u8],
    now: i64,
) -> Result<&'a str, SvixError> {
    let id = headers
        .id
        .filter(|v| !v.is_empty())
        .ok_or(SvixError::MissingHeader("svix-id"))?;
    let timestamp = headers
        .timestamp
        .filter(|v| !v.is_empty())
        .ok_or(SvixError::MissingHeader("svix-timestamp"))?;
    let signatures = headers
        .signature
        .filter(|v| !v.is_empty())
        .ok_or(SvixError::MissingHeader("svix-signature"))?;
    let sent_at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SvixError::BadTimestamp)?;
    if (now - sent_at).abs() > TOLERANCE_SECONDS {
        return Err(SvixError::StaleTimestamp);
    }
    let expected = key.sign(id, timestamp, body);
    for entry in signatures.split(' ').take(16) {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(candidate) = STANDARD.decode(encoded) else {
            continue;
        };
        // verify_slice compares in constant time
        if expected.clone().verify_slice(&candidate).is_ok() {
            return Ok(id);
        }
    }
    Err(SvixError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const NOW: i64 = 1_614_265_330;

    fn headers<'a>(signature: &'a str) -> SvixHeaders<'a> {
        SvixHeaders {
            id: Some(ID),
            timestamp: Some(TIMESTAMP),
            signature: Some(signature),
        }
    }

    fn key() -> SigningKey {
        SigningKey::parse(SECRET).unwrap()
    }

    #[test]
    fn the_published_test_vector_verifies() {
        assert_eq!(
            verify_svix_signature(&key(), headers(SIGNATURE), BODY, NOW),
            Ok(ID)
        );
        assert_eq!(key().signature(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let rotated = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz {SIGNATURE}");
        assert_eq!(
            verify_svix_signature(&key(), headers(&rotated), BODY, NOW),
            Ok(ID)
        );
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let forged = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=";
        assert_eq!(
            verify_svix_signature(&key(), headers(forged), BODY, NOW),
            Err(SvixError::BadSignature)
        );
        let other_key = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(
            verify_svix_signature(&other_key, headers(SIGNATURE), BODY, NOW),
            Err(SvixError::BadSignature)
        );
        for junk in [
            "v1,",
            "v1,!!!",
            "garbage",
            "v0,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                verify_svix_signature(&key(), headers(junk), BODY, NOW),
                Err(SvixError::BadSignature)
            );
        }
    }

    #[test]
    fn a_body_altered_by_one_byte_is_refused() {
        let mut body = BODY.to_vec();
        for i in 0..body.len() {
            body[i] ^= 1;
            assert_eq!(
                verify_svix_signature(&key(), headers(SIGNATURE), &body, NOW),
                Err(SvixError::BadSignature)
            );
            body[i] ^= 1;
        }
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        assert_eq!(
            verify_svix_signature(&key(), headers(SIGNATURE), &longer, NOW),
            Err(SvixError::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        assert_eq!(
            verify_svix_signature(&key(), headers(SIGNATURE), BODY, NOW + 301),
            Err(SvixError::StaleTimestamp)
        );
        assert_eq!(
            verify_svix_signature(&key(), headers(SIGNATURE), BODY, NOW - 301),
            Err(SvixError::StaleTimestamp)
        );
        assert!(verify_svix_signature(&key(), headers(SIGNATURE), BODY, NOW + 299).is_ok());
        let h = SvixHeaders {
            timestamp: Some("yesterday"),
            ..headers(SIGNATURE)
        };
        assert_eq!(
            verify_svix_signature(&key(), h, BODY, NOW),
            Err(SvixError::BadTimestamp)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let h = SvixHeaders {
            id: None,
            ..headers(SIGNATURE)
        };
        assert_eq!(
            verify_svix_signature(&key(), h, BODY, NOW),
            Err(SvixError::MissingHeader("svix-id"))
        );
        let h = SvixHeaders {
            timestamp: Some(""),
            ..headers(SIGNATURE)
        };
        assert_eq!(
            verify_svix_signature(&key(), h, BODY, NOW),
            Err(SvixError::MissingHeader("svix-timestamp"))
        );
        let h = SvixHeaders {
            signature: None,
            ..headers(SIGNATURE)
        };
        assert_eq!(
            verify_svix_signature(&key(), h, BODY, NOW),
            Err(SvixError::MissingHeader("svix-signature"))
        );
    }

    #[test]
    fn secrets_that_are_not_whsec_base64_are_refused() {
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(SigningKey::parse("whsec_AAAA").is_err(), "too short");
        assert!(!format!("{:?}", key()).contains("MfKQ"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            id in proptest::option::of(".{0,40}"),
            ts in proptest::option::of(".{0,20}"),
            sig in proptest::option::of(".{0,200}"),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let h = SvixHeaders { id: id.as_deref(), timestamp: ts.as_deref(), signature: sig.as_deref() };
            let _ = verify_svix_signature(&key(), h, &body, NOW);
        }
    }
}
