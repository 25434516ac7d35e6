//! Unsubscribe links: `{PUBLIC_URL}/unsubscribe/{token}`, where the token
//! names the lead, the channel and the recipient the message went to, and
//! carries an HMAC-SHA256 of them under a secret of the deployment
//! (`UNSUBSCRIBE_SECRET`, or a key generated once and kept in
//! `leadrelay_settings`). Nothing in it is a database id to guess; a token
//! changed in any character, cut short, or made for another recipient does
//! not verify.
//!
//! The link of a job is the same on every attempt (it depends on the job's
//! lead, channel and recipient alone), so a retried email keeps the body
//! Resend's idempotency key was first used with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::Channel;

/// The shortest `UNSUBSCRIBE_SECRET` accepted.
pub const MIN_SECRET_CHARS: usize = 32;
/// Bytes of the HMAC the token keeps (128 bits).
const MAC_BYTES: usize = 16;
/// A token longer than this is refused unread.
pub const MAX_TOKEN_CHARS: usize = 800;

/// What a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub lead: Uuid,
    pub channel: Channel,
    /// The address or digits as the job held them.
    pub recipient: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadToken {
    #[error("the link is not one leadrelay made (malformed)")]
    Malformed,
    #[error("the link is not one leadrelay made (its signature does not match)")]
    Forged,
}

/// The key and where the links point.
#[derive(Clone)]
pub struct Links {
    key: Vec<u8>,
    /// PUBLIC_URL without its trailing slash; None: no link can be made.
    base_url: Option<String>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("key", &"[redacted]")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Links {
    pub fn new(key: &[u8], base_url: Option<&str>) -> Links {
        Links {
            key: key.to_vec(),
            base_url: base_url.map(|u| u.trim_end_matches('/').to_string()),
        }
    }

    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    fn payload(target: &Target) -> String {
        format!(
            "1|{}|{}|{}",
            target.lead.simple(),
            target.channel.as_str(),
            target.recipient
        )
    }

    pub fn token(&self, target: &Target) -> String {
        let payload = Links::payload(target);
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(&mac[..MAC_BYTES])
        )
    }

    /// The link of a message made from `params` (a job's fixed values: the
    /// lead's email and phone, the rule's params) for `lead` on `channel`:
    /// None for a rule marked transactional, a dashboard row, a contact that
    /// cannot be used, or without PUBLIC_URL. What a preview shows; the
    /// worker signs the recipient the job holds.
    pub fn for_params(
        &self,
        lead: Uuid,
        channel: Channel,
        params: &serde_json::Value,
    ) -> Option<String> {
        if is_transactional(params) {
            return None;
        }
        let text = |key: &str| params.get(key).and_then(|v| v.as_str());
        let recipient = match channel {
            Channel::Email => crate::messages::recipients::email(text("email")).ok()?,
            Channel::Sms => crate::messages::recipients::phone(text("phone")).ok()?,
            Channel::LeadTracking => return None,
        };
        self.url(&Target {
            lead,
            channel,
            recipient,
        })
    }

    /// The link for `target`, None without PUBLIC_URL.
    pub fn url(&self, target: &Target) -> Option<String> {
        let base = self.base_url.as_deref()?;
        Some(format!("{base}/unsubscribe/{}", self.token(target)))
    }

    pub fn verify(&self, token: &str) -> Result<Target, BadToken> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(BadToken::Malformed);
        }
        let (payload, mac) = token.split_once('.').ok_or(BadToken::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| BadToken::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| BadToken::Malformed)?;
        if mac.len() != MAC_BYTES {
            return Err(BadToken::Malformed);
        }
        // constant time, on the bytes the token keeps
        self.mac(&payload)
            .verify_truncated_left(&mac)
            .map_err(|_| BadToken::Forged)?;
        let text = String::from_utf8(payload).map_err(|_| BadToken::Malformed)?;
        let mut parts = text.splitn(4, '|');
        let (Some("1"), Some(lead), Some(channel), Some(recipient)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken::Malformed);
        };
        let lead = Uuid::parse_str(lead).map_err(|_| BadToken::Malformed)?;
        let channel = Channel::parse(channel)
            .filter(|c| matches!(c, Channel::Email | Channel::Sms))
            .ok_or(BadToken::Malformed)?;
        if recipient.is_empty() {
            return Err(BadToken::Malformed);
        }
        Ok(Target {
            lead,
            channel,
            recipient: recipient.to_string(),
        })
    }
}

/// Whether a job's fixed values say its rule is transactional
/// (`params.transactional`): a message the person asked for, which carries
/// no unsubscribe.
pub fn is_transactional(params: &serde_json::Value) -> bool {
    params
        .pointer("/params/transactional")
        .and_then(|t| t.as_bool())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Links {
        Links::new(
            b"a secret of at least thirty-two characters",
            Some("https://academy.kz/lr/"),
        )
    }

    fn target() -> Target {
        Target {
            lead: Uuid::from_u128(0x1234),
            channel: Channel::Email,
            recipient: "Aigerim.Test0@gmail.com".into(),
        }
    }

    #[test]
    fn a_token_verifies_to_what_it_was_made_for_and_the_link_is_under_public_url() {
        let links = links();
        let token = links.token(&target());
        assert_eq!(links.verify(&token), Ok(target()));
        let url = links.url(&target()).unwrap();
        assert_eq!(url, format!("https://academy.kz/lr/unsubscribe/{token}"));
        assert!(!token.contains('/') && !token.contains('+') && !token.contains('='));
        assert_eq!(
            links.token(&target()),
            token,
            "the same link on every attempt"
        );
    }

    #[test]
    fn a_forged_cut_or_other_recipients_token_does_not_verify() {
        let links = links();
        let token = links.token(&target());
        let (payload, mac) = token.split_once('.').unwrap();
        let other = Target {
            recipient: "someone.else@gmail.com".into(),
            ..target()
        };
        let other_payload = links.token(&other);
        let swapped = format!("{}.{mac}", other_payload.split_once('.').unwrap().0);
        assert_eq!(links.verify(&swapped), Err(BadToken::Forged));
        assert_eq!(
            links.verify(&token[..token.len() - 3]),
            Err(BadToken::Malformed)
        );
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(links.verify(&String::from_utf8(flipped).unwrap()).is_err());
        assert_eq!(
            Links::new(b"another deployment's secret, also long", None).verify(&token),
            Err(BadToken::Forged)
        );
        for bad in [
            "",
            ".",
            "abc",
            "a.b.c",
            &format!("{payload}."),
            &"x".repeat(900),
        ] {
            assert!(links.verify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_for_a_dashboard_row_or_an_empty_recipient_is_refused() {
        let links = links();
        let mac_of = |payload: &str| {
            let mac = links.mac(payload.as_bytes()).finalize().into_bytes();
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(&mac[..MAC_BYTES])
            )
        };
        let lead = Uuid::from_u128(1).simple().to_string();
        assert_eq!(
            links.verify(&mac_of(&format!("1|{lead}|lead_tracking|x"))),
            Err(BadToken::Malformed)
        );
        assert_eq!(
            links.verify(&mac_of(&format!("1|{lead}|email|"))),
            Err(BadToken::Malformed)
        );
        assert_eq!(
            links.verify(&mac_of(&format!("2|{lead}|email|a@b.kz"))),
            Err(BadToken::Malformed)
        );
        assert!(
            links
                .verify(&mac_of(&format!("1|{lead}|sms|77051234567")))
                .is_ok()
        );
        assert!(links.url(&target()).is_some());
        assert!(Links::new(b"k", None).url(&target()).is_none());
    }
}
