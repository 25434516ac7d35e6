//! The console's shared state: what it learns from its configuration, the
//! guard every try of the admin token passes, and the charts as last drawn.

use std::net::IpAddr;

use super::charts::ChartCache;
use super::token_guard::TokenGuard;

/// What the console learns from its configuration.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// PUBLIC_URL starts with https://: the session cookie is `Secure`.
    pub public_https: bool,
    /// TRUSTED_PROXIES: peers whose X-Forwarded-For and X-Forwarded-Proto
    /// are believed (a reverse proxy on the same host, say).
    pub trusted_proxies: Vec<IpAddr>,
    /// CONSOLE_CHART_TTL: how long drawn charts are reused (0: never).
    pub chart_ttl: std::time::Duration,
}

impl Default for ConsoleSettings {
    fn default() -> ConsoleSettings {
        ConsoleSettings {
            public_https: false,
            trusted_proxies: Vec::new(),
            chart_ttl: crate::domain::defaults::CONSOLE_CHART_TTL,
        }
    }
}

/// The console's shared state: its settings, the guard every try of the
/// admin token passes, and the charts as last drawn.
#[derive(Clone)]
pub struct Console {
    pub settings: ConsoleSettings,
    pub tokens: TokenGuard,
    pub charts: ChartCache,
}

impl Console {
    pub fn new(settings: ConsoleSettings, admin_token: &crate::domain::Secret) -> Console {
        Console {
            charts: ChartCache::new(settings.chart_ttl),
            tokens: TokenGuard::new(admin_token),
            settings,
        }
    }
}
