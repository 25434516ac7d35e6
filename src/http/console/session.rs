//! Who is at the console: a sign-in makes a random session id, kept in the
//! browser's cookie and, as its SHA-256, in `ops_sessions`; the session ends
//! after 12 hours, after 2 idle hours, or when its owner signs out (the row
//! is revoked, so the old cookie opens nothing anywhere). Each session has its
//! own CSRF token, which every form carries. Tries of the admin token are
//! limited in `token_guard`.
//!
//! The client's address and scheme are the connection's own, unless the
//! connection comes from a trusted proxy (TRUSTED_PROXIES): then its
//! `X-Forwarded-For` and `X-Forwarded-Proto` are believed.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::AppState;

/// How long a session lasts at most, and how long it may sit idle.
pub const SESSION_HOURS: i32 = 12;
pub const IDLE_HOURS: i32 = 2;
use super::state::ConsoleSettings;
use super::token_guard::{DEVICE_DAYS, Device, TokenGuard};

/// The visitor as the console sees it.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub addr: IpAddr,
    pub https: bool,
    pub user_agent: Option<String>,
    headers: HeaderMap,
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Visitor, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(visitor(peer, &parts.headers, &state.console.settings))
    }
}

fn visitor(peer: IpAddr, headers: &HeaderMap, settings: &ConsoleSettings) -> Visitor {
    let trusted = settings.trusted_proxies.contains(&peer);
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // The rightmost address the trusted proxies did not add themselves: the
    // left part of the header is whatever the client chose to send.
    let forwarded_for = trusted
        .then(|| header_text("x-forwarded-for"))
        .flatten()
        .and_then(|v| {
            v.rsplit(',')
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .find(|a| !settings.trusted_proxies.contains(a))
        });
    let forwarded_https = trusted
        && header_text("x-forwarded-proto").is_some_and(|p| {
            p.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("https")
        });
    Visitor {
        addr: forwarded_for.unwrap_or(peer),
        https: settings.public_https || forwarded_https,
        user_agent: header_text("user-agent").map(|u| u.chars().take(512).collect()),
        headers: headers.clone(),
    }
}

impl Visitor {
    /// `__Host-` needs `Secure`, which a browser only keeps over HTTPS.
    pub fn cookie_name(&self) -> &'static str {
        if self.https {
            "__Host-leadrelay_ops"
        } else {
            "leadrelay_ops"
        }
    }

    pub fn session_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name(),
            SESSION_HOURS * 3600,
            if self.https { "; Secure" } else { "" }
        )
    }

    pub fn cleared_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.cookie_name(),
            if self.https { "; Secure" } else { "" }
        )
    }

    fn device_cookie_name(&self) -> &'static str {
        if self.https {
            "__Host-leadrelay_device"
        } else {
            "leadrelay_device"
        }
    }

    /// The cookie that remembers this browser as the operator's.
    pub fn device_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.device_cookie_name(),
            DEVICE_DAYS * 86_400,
            if self.https { "; Secure" } else { "" }
        )
    }

    /// The browser, when its device cookie is one `tokens` issued.
    pub fn device(&self, tokens: &TokenGuard) -> Option<Device> {
        self.cookie_named(self.device_cookie_name())
            .and_then(|v| tokens.device_of(&v))
    }

    fn cookie(&self) -> Option<String> {
        self.cookie_named(self.cookie_name())
    }

    fn cookie_named(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                pair.trim()
                    .strip_prefix(prefix.as_str())
                    .map(str::to_string)
            })
            .filter(|v| !v.is_empty() && v.len() <= 128)
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn addr_text(&self) -> String {
        self.addr.to_string()
    }
}

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    csrf: String,
}

impl Session {
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The form's token is this session's (compared in constant time).
    pub fn csrf_matches(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| g.as_bytes().ct_eq(self.csrf.as_bytes()).into())
    }
}

/// How a request is let in: a session (forms and actions) or the admin
/// token as a bearer (read-only pages, for scripts).
#[derive(Debug, Clone)]
pub enum Access {
    Session(Session),
    Bearer,
}

impl Access {
    pub fn session(&self) -> Option<&Session> {
        match self {
            Access::Session(s) => Some(s),
            Access::Bearer => None,
        }
    }
}

const CREATE: &str = "
insert into public.ops_sessions (token_hash, csrf_token, client_addr, user_agent, expires_at)
values ($1, $2, $3, $4, now() + make_interval(hours => $5))
returning id";
const PRUNE: &str = "delete from public.ops_sessions where expires_at < now() - interval '7 days'";
const TOUCH: &str = "
update public.ops_sessions set last_seen_at = now()
 where token_hash = $1 and revoked_at is null and expires_at > now()
   and last_seen_at > now() - make_interval(hours => $2)
returning id, csrf_token";
const REVOKE: &str =
    "update public.ops_sessions set revoked_at = now() where id = $1 and revoked_at is null";

pub fn statements() -> [&'static str; 4] {
    [CREATE, PRUNE, TOUCH, REVOKE]
}

fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts a session; returns the cookie's value.
pub async fn create(
    client: &tokio_postgres::Client,
    visitor: &Visitor,
) -> Result<String, tokio_postgres::Error> {
    let token = random_token();
    client.execute(PRUNE, &[]).await?;
    client
        .query_one(
            CREATE,
            &[
                &digest(&token),
                &random_token(),
                &visitor.addr_text(),
                &visitor.user_agent,
                &SESSION_HOURS,
            ],
        )
        .await?;
    Ok(token)
}

/// The visitor's live session, if its cookie names one.
pub async fn find(
    client: &tokio_postgres::Client,
    visitor: &Visitor,
) -> Result<Option<Session>, tokio_postgres::Error> {
    let Some(token) = visitor.cookie() else {
        return Ok(None);
    };
    Ok(client
        .query_opt(TOUCH, &[&digest(&token), &IDLE_HOURS])
        .await?
        .map(|row| Session {
            id: row.get(0),
            csrf: row.get(1),
        }))
}

pub async fn revoke(
    client: &tokio_postgres::Client,
    session: &Session,
) -> Result<(), tokio_postgres::Error> {
    client.execute(REVOKE, &[&session.id]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let settings = ConsoleSettings {
            trusted_proxies: vec![proxy],
            ..Default::default()
        };
        let forwarded = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let from_stranger = visitor("198.51.100.1".parse().unwrap(), &forwarded, &settings);
        assert_eq!(from_stranger.addr_text(), "198.51.100.1");
        assert!(!from_stranger.https);
        assert_eq!(from_stranger.cookie_name(), "leadrelay_ops");
        let via_proxy = visitor(proxy, &forwarded, &settings);
        // the rightmost entry is the one the proxy saw; 6.6.6.6 is what the
        // client claimed
        assert_eq!(via_proxy.addr_text(), "203.0.113.9");
        assert!(via_proxy.https);
        assert_eq!(via_proxy.cookie_name(), "__Host-leadrelay_ops");
        let cookie = via_proxy.session_cookie("abc");
        for part in [
            "__Host-leadrelay_ops=abc",
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
        ] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!cookie.contains("Domain"), "__Host- forbids Domain");
        let hostile = headers(&[
            ("x-forwarded-for", "not-an-ip, , 999.1.1.1"),
            ("x-forwarded-proto", "gopher"),
        ]);
        let v = visitor(proxy, &hostile, &settings);
        assert_eq!(v.addr, proxy);
        assert!(!v.https);
    }

    #[test]
    fn public_url_https_makes_the_cookie_secure() {
        let settings = ConsoleSettings {
            public_https: true,
            ..Default::default()
        };
        let v = visitor("127.0.0.1".parse().unwrap(), &HeaderMap::new(), &settings);
        assert!(v.session_cookie("x").contains("; Secure"));
        assert!(v.cleared_cookie().starts_with("__Host-leadrelay_ops=;"));
    }

    #[test]
    fn the_cookie_is_read_by_its_exact_name_and_bounded() {
        let settings = ConsoleSettings::default();
        let peer = "127.0.0.1".parse().unwrap();
        let v = visitor(
            peer,
            &headers(&[("cookie", "other=1; xleadrelay_ops=evil; leadrelay_ops=good")]),
            &settings,
        );
        assert_eq!(v.cookie().as_deref(), Some("good"));
        let long = format!("leadrelay_ops={}", "a".repeat(500));
        let v = visitor(peer, &headers(&[("cookie", &long)]), &settings);
        assert_eq!(v.cookie(), None);
    }

    #[test]
    fn tokens_are_random_and_csrf_is_compared_exactly() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
        let s = Session {
            id: 1,
            csrf: random_token(),
        };
        assert!(s.csrf_matches(Some(&s.csrf.clone())));
        assert!(!s.csrf_matches(None));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(Some(&s.csrf[..42])));
    }
}
