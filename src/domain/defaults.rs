//! Every configuration default, written once: `config` falls back to these,
//! the worker's and the console's settings start from them, and a test
//! holds the configuration table of `docs/deploying.md` to `DOCUMENTED`.

use std::time::Duration;

pub const RESEND_API_URL: &str = "https://api.resend.com";
pub const MOBIZON_API_URL: &str = "https://api.mobizon.kz";
/// Requests a second to Resend until its rate-limit headers say otherwise
/// (Resend's default team limit).
pub const RESEND_MAX_RPS: f64 = 2.0;
pub const MOBIZON_MAX_RPS: f64 = 5.0;
/// The most emails per batch request: Resend's own limit.
pub const RESEND_BATCH_SIZE: usize = 100;
pub const LISTEN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
pub const JOB_LEASE: Duration = Duration::from_secs(120);
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);
pub const RETRY_BASE_DELAY: Duration = Duration::from_secs(30);
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(3600);
pub const WORKER_CONCURRENCY: usize = 4;
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
pub const MOBIZON_POLL_INTERVAL: Duration = Duration::from_secs(300);
pub const CONSOLE_CHART_TTL: Duration = Duration::from_secs(10);
/// The role supabase-js with the service key writes as through PostgREST.
pub const LANDING_ROLE: &str = "service_role";
/// What happens to an SMS whose attempt got no answer.
pub const SMS_UNKNOWN_OUTCOME: &str = "lookup";

/// Each variable with a default, and the default as the configuration table
/// writes it.
pub fn documented() -> Vec<(&'static str, String)> {
    let time = |d: Duration| humantime::format_duration(d).to_string();
    let (ip, port) = LISTEN_ADDR;
    vec![
        ("RESEND_API_URL", RESEND_API_URL.to_string()),
        ("MOBIZON_API_URL", MOBIZON_API_URL.to_string()),
        ("RESEND_MAX_RPS", RESEND_MAX_RPS.to_string()),
        ("MOBIZON_MAX_RPS", MOBIZON_MAX_RPS.to_string()),
        ("RESEND_BATCH_SIZE", RESEND_BATCH_SIZE.to_string()),
        (
            "LISTEN_ADDR",
            format!("{}:{port}", std::net::Ipv4Addr::from(ip)),
        ),
        ("SWEEP_INTERVAL", time(SWEEP_INTERVAL)),
        ("JOB_LEASE", time(JOB_LEASE)),
        ("PROVIDER_TIMEOUT", time(PROVIDER_TIMEOUT)),
        (
            "RETRY_BASE_DELAY`, `RETRY_MAX_DELAY",
            format!("{}`, `{}", time(RETRY_BASE_DELAY), time(RETRY_MAX_DELAY)),
        ),
        ("WORKER_CONCURRENCY", WORKER_CONCURRENCY.to_string()),
        ("SHUTDOWN_GRACE", time(SHUTDOWN_GRACE)),
        ("MOBIZON_POLL_INTERVAL", time(MOBIZON_POLL_INTERVAL)),
        ("CONSOLE_CHART_TTL", time(CONSOLE_CHART_TTL)),
        ("LANDING_ROLE", LANDING_ROLE.to_string()),
        ("SMS_UNKNOWN_OUTCOME", SMS_UNKNOWN_OUTCOME.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_read_as_the_table_writes_them() {
        let documented = super::documented();
        let get = |name: &str| {
            documented
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("JOB_LEASE").as_deref(), Some("2m"));
        assert_eq!(get("RESEND_MAX_RPS").as_deref(), Some("2"));
        assert_eq!(get("LISTEN_ADDR").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(
            get("RETRY_BASE_DELAY`, `RETRY_MAX_DELAY").as_deref(),
            Some("30s`, `1h")
        );
    }
}
