//! Typed configuration, loaded once at start. Every value comes from an
//! environment variable or the command-line flag of the same name; a missing
//! or malformed one stops the process with one line naming the variable.

use crate::domain::Secret;
use crate::domain::defaults;
use crate::worker::WorkerSettings;
use crate::worker::sms_lookup::UnknownOutcome;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

/// A PostgreSQL connection string as libpq reads it (URI or key=value, with
/// `sslmode` and `sslrootcert`), its root file read and checked now so that a
/// wrong path stops the process at start. Messages never contain the password.
pub fn database_url(name: &'static str, value: Option<&str>) -> Result<Secret, ConfigError> {
    let value = required(name, value)?;
    let malformed = |reason: String| ConfigError::Malformed { name, reason };
    let info = crate::store::ConnInfo::parse(value).map_err(|e| malformed(e.to_string()))?;
    crate::store::tls::connector(&info).map_err(|e| malformed(e.to_string()))?;
    Ok(Secret::new(value))
}

/// A value that must be present and not blank.
pub fn required<'a>(name: &'static str, value: Option<&'a str>) -> Result<&'a str, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Err(ConfigError::Missing(name)),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("postgres://u:hunter2@db/x");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "postgres://u:hunter2@db/x");
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let err = database_url("DATABASE_URL", None).unwrap_err();
        assert_eq!(err.to_string(), "DATABASE_URL is not set");
        let err = database_url("DATABASE_URL", Some("   ")).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DATABASE_URL"));
    }

    #[test]
    fn malformed_database_urls_are_refused_without_echoing_them() {
        for bad in [
            "mysql://u:hunter2@db/x",
            "postgres://u:hunter2@db/x?sslmode=verify-full&sslrootcert=/nonexistent.crt",
            "postgres://u:hunter2@db:notaport/x",
            "postgres://u:hunter2@db/x?sslmode=sometimes",
            "hunter2",
        ] {
            let err = database_url("DATABASE_URL", Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("DATABASE_URL is malformed"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn oversized_and_hostile_database_urls_are_refused() {
        let huge = format!("postgres://u@db/{}", "x".repeat(100_000));
        // A very long name is legal to the parser; the server refuses it later
        // with its own message. What matters is that nothing panics.
        let _ = database_url("DATABASE_URL", Some(&huge));
        let nul = "postgres://u@db/x\0; drop table landing_leads";
        let _ = database_url("DATABASE_URL", Some(nul));
    }

    #[test]
    fn valid_database_urls_are_accepted() {
        for good in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres?sslmode=require",
            "postgresql://postgres:pw@db.abcd.supabase.co:5432/postgres?sslmode=verify-full&sslrootcert=system",
            "host=db.abcd.supabase.co port=5432 user=postgres sslmode=prefer",
        ] {
            assert!(database_url("DATABASE_URL", Some(good)).is_ok(), "{good}");
        }
    }
}

/// Everything `leadrelay serve` needs, validated before anything starts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub database_url: Secret,
    /// Where `lead_tracking` lives when it is another database.
    pub lead_tracking_database_url: Option<Secret>,
    pub resend: ResendSettings,
    pub mobizon: MobizonSettings,
    pub listen_addr: std::net::SocketAddr,
    pub product_url: String,
    pub worker: WorkerSettings,
    /// The key of `RESEND_WEBHOOK_SECRET` (`whsec_…`).
    pub resend_webhook_key: crate::ingest::svix::SigningKey,
    /// The secret the Mobizon callback URL carries.
    pub mobizon_webhook_token: Secret,
    /// Mobizon's own webhook secret key: when set, its `sign` must match.
    pub mobizon_webhook_secret: Option<Secret>,
    /// Bearer token for the status API and the ops page.
    pub admin_token: Secret,
    /// How often sent SMS without a final state are asked about; None: never.
    pub mobizon_poll_interval: Option<std::time::Duration>,
    /// `leadrelay dev` only: the stand-in providers' outbox, shown on /ops.
    pub dev_outbox: Option<std::path::PathBuf>,
    pub console: crate::http::ConsoleSettings,
    /// METRICS_ADDR: /metrics on its own (private) address; the main one
    /// then answers 404 there.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// PUBLIC_URL: where people reach this service (the unsubscribe links);
    /// None: emails carry no `List-Unsubscribe` (doctor fails on it).
    pub public_url: Option<String>,
    /// UNSUBSCRIBE_SECRET; None: the key kept in `leadrelay_settings`.
    pub unsubscribe_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ResendSettings {
    pub api_key: Secret,
    pub api_url: String,
    pub from: String,
    pub max_rps: f64,
    /// The most emails one request to the batch endpoint carries; 1: never
    /// batch.
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
pub struct MobizonSettings {
    pub api_key: Secret,
    pub api_url: String,
    pub from: Option<String>,
    pub max_rps: f64,
}

/// The raw values, as they come from flags or the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "LEAD_TRACKING_DATABASE_URL", hide_env_values = true)]
    pub lead_tracking_database_url: Option<String>,
    #[arg(long, env = "RESEND_API_KEY", hide_env_values = true)]
    pub resend_api_key: Option<String>,
    #[arg(long, env = "RESEND_API_URL")]
    pub resend_api_url: Option<String>,
    #[arg(long, env = "EMAIL_FROM")]
    pub email_from: Option<String>,
    #[arg(long, env = "RESEND_MAX_RPS")]
    pub resend_max_rps: Option<String>,
    #[arg(long, env = "RESEND_BATCH_SIZE")]
    pub resend_batch_size: Option<String>,
    #[arg(long, env = "MOBIZON_API_KEY", hide_env_values = true)]
    pub mobizon_api_key: Option<String>,
    #[arg(long, env = "MOBIZON_API_URL")]
    pub mobizon_api_url: Option<String>,
    #[arg(long, env = "SMS_FROM")]
    pub sms_from: Option<String>,
    #[arg(long, env = "MOBIZON_MAX_RPS")]
    pub mobizon_max_rps: Option<String>,
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen_addr: Option<String>,
    #[arg(long, env = "PRODUCT_URL")]
    pub product_url: Option<String>,
    #[arg(long, env = "SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    #[arg(long, env = "JOB_LEASE")]
    pub job_lease: Option<String>,
    #[arg(long, env = "PROVIDER_TIMEOUT")]
    pub provider_timeout: Option<String>,
    #[arg(long, env = "RETRY_BASE_DELAY")]
    pub retry_base_delay: Option<String>,
    #[arg(long, env = "RETRY_MAX_DELAY")]
    pub retry_max_delay: Option<String>,
    #[arg(long, env = "WORKER_CONCURRENCY")]
    pub worker_concurrency: Option<String>,
    #[arg(long, env = "SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    #[arg(long, env = "RESEND_WEBHOOK_SECRET", hide_env_values = true)]
    pub resend_webhook_secret: Option<String>,
    #[arg(long, env = "MOBIZON_WEBHOOK_TOKEN", hide_env_values = true)]
    pub mobizon_webhook_token: Option<String>,
    #[arg(long, env = "MOBIZON_WEBHOOK_SECRET", hide_env_values = true)]
    pub mobizon_webhook_secret: Option<String>,
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "MOBIZON_POLL_INTERVAL")]
    pub mobizon_poll_interval: Option<String>,
    #[arg(long, env = "SMS_UNKNOWN_OUTCOME")]
    pub sms_unknown_outcome: Option<String>,
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Signs the unsubscribe links (at least 32 characters); default: a key
    /// generated once and kept in the database.
    #[arg(long, env = "UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<String>,
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    #[arg(long, env = "CONSOLE_CHART_TTL")]
    pub console_chart_ttl: Option<String>,
    /// The role the landing writes `landing_leads` as; `doctor` rehearses
    /// its INSERT as this role (`serve` does not use it).
    #[arg(long, env = "LANDING_ROLE")]
    pub landing_role: Option<String>,
}

/// The providers' keys, for the commands that read from them (`reconcile`,
/// `backfill`): the same variables as `serve`'s.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProviderArgs {
    #[arg(long, env = "RESEND_API_KEY", hide_env_values = true)]
    pub resend_api_key: Option<String>,
    #[arg(long, env = "RESEND_API_URL")]
    pub resend_api_url: Option<String>,
    #[arg(long, env = "RESEND_MAX_RPS")]
    pub resend_max_rps: Option<String>,
    #[arg(long, env = "MOBIZON_API_KEY", hide_env_values = true)]
    pub mobizon_api_key: Option<String>,
    #[arg(long, env = "MOBIZON_API_URL")]
    pub mobizon_api_url: Option<String>,
    #[arg(long, env = "MOBIZON_MAX_RPS")]
    pub mobizon_max_rps: Option<String>,
}

/// One provider's key, address and rate.
#[derive(Debug, Clone)]
pub struct ProviderAccess {
    pub api_key: Secret,
    pub api_url: String,
    pub max_rps: f64,
}

impl ProviderArgs {
    /// Resend's and Mobizon's access, validated as `serve` validates them.
    pub fn access(&self) -> Result<(ProviderAccess, ProviderAccess), ConfigError> {
        Ok((
            resend_access(
                self.resend_api_key.as_deref(),
                self.resend_api_url.as_deref(),
                self.resend_max_rps.as_deref(),
            )?,
            mobizon_access(
                self.mobizon_api_key.as_deref(),
                self.mobizon_api_url.as_deref(),
                self.mobizon_max_rps.as_deref(),
            )?,
        ))
    }
}

fn resend_access(
    key: Option<&str>,
    url: Option<&str>,
    max_rps: Option<&str>,
) -> Result<ProviderAccess, ConfigError> {
    Ok(ProviderAccess {
        api_key: Secret::new(required("RESEND_API_KEY", key)?),
        api_url: http_url("RESEND_API_URL", url, defaults::RESEND_API_URL)?,
        max_rps: rate("RESEND_MAX_RPS", max_rps, defaults::RESEND_MAX_RPS)?,
    })
}

fn mobizon_access(
    key: Option<&str>,
    url: Option<&str>,
    max_rps: Option<&str>,
) -> Result<ProviderAccess, ConfigError> {
    Ok(ProviderAccess {
        api_key: Secret::new(required("MOBIZON_API_KEY", key)?),
        api_url: http_url("MOBIZON_API_URL", url, defaults::MOBIZON_API_URL)?,
        max_rps: rate("MOBIZON_MAX_RPS", max_rps, defaults::MOBIZON_MAX_RPS)?,
    })
}

impl ServeConfig {
    /// Each part in the order of the configuration table; the first value
    /// that is missing or malformed stops here, named.
    pub fn from_args(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let database_url = database_url("DATABASE_URL", args.database_url.as_deref())?;
        let lead_tracking_database_url = optional(args.lead_tracking_database_url.as_deref())
            .map(|v| database_url_of("LEAD_TRACKING_DATABASE_URL", v))
            .transpose()?;
        Ok(ServeConfig {
            database_url,
            lead_tracking_database_url,
            resend: resend_settings(args)?,
            mobizon: mobizon_settings(args)?,
            listen_addr: listen_addr(args.listen_addr.as_deref())?,
            product_url: http_url("PRODUCT_URL", args.product_url.as_deref(), "")?,
            worker: worker_settings(args)?,
            resend_webhook_key: resend_webhook_key(args.resend_webhook_secret.as_deref())?,
            mobizon_webhook_token: token(
                "MOBIZON_WEBHOOK_TOKEN",
                args.mobizon_webhook_token.as_deref(),
            )?,
            mobizon_webhook_secret: mobizon_webhook_secret(args.mobizon_webhook_secret.as_deref())?,
            admin_token: token("ADMIN_TOKEN", args.admin_token.as_deref())?,
            mobizon_poll_interval: poll_interval(args.mobizon_poll_interval.as_deref())?,
            dev_outbox: None,
            console: console_settings(args)?,
            metrics_addr: optional(args.metrics_addr.as_deref())
                .map(|v| socket_addr("METRICS_ADDR", v))
                .transpose()?,
            public_url: optional(args.public_url.as_deref())
                .map(|v| http_url("PUBLIC_URL", Some(v), ""))
                .transpose()?,
            unsubscribe_secret: unsubscribe_secret(args.unsubscribe_secret.as_deref())?,
        })
    }
}

/// A value that may be absent; blank counts as absent.
pub fn optional(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn database_url_of(name: &'static str, value: &str) -> Result<Secret, ConfigError> {
    database_url(name, Some(value))
}

fn resend_settings(args: &ServeArgs) -> Result<ResendSettings, ConfigError> {
    let access = resend_access(
        args.resend_api_key.as_deref(),
        args.resend_api_url.as_deref(),
        args.resend_max_rps.as_deref(),
    )?;
    Ok(ResendSettings {
        api_key: access.api_key,
        api_url: access.api_url,
        from: email_from(args.email_from.as_deref())?,
        max_rps: access.max_rps,
        batch_size: batch_size(args.resend_batch_size.as_deref())?,
    })
}

fn batch_size(value: Option<&str>) -> Result<usize, ConfigError> {
    use crate::providers::resend::MAX_BATCH;
    match optional(value) {
        None => Ok(defaults::RESEND_BATCH_SIZE),
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_BATCH).contains(n))
            .ok_or(ConfigError::Malformed {
                name: "RESEND_BATCH_SIZE",
                reason: "expected a whole number from 1 (never batch) to 100 (Resend's limit)"
                    .into(),
            }),
    }
}

fn mobizon_settings(args: &ServeArgs) -> Result<MobizonSettings, ConfigError> {
    let access = mobizon_access(
        args.mobizon_api_key.as_deref(),
        args.mobizon_api_url.as_deref(),
        args.mobizon_max_rps.as_deref(),
    )?;
    Ok(MobizonSettings {
        api_key: access.api_key,
        api_url: access.api_url,
        from: sms_from(args.sms_from.as_deref())?,
        max_rps: access.max_rps,
    })
}

fn sms_from(value: Option<&str>) -> Result<Option<String>, ConfigError> {
    match optional(value) {
        None => Ok(None),
        Some(v) if v.chars().count() <= 20 && !v.chars().any(char::is_control) => {
            Ok(Some(v.to_string()))
        }
        Some(_) => Err(ConfigError::Malformed {
            name: "SMS_FROM",
            reason: "a sender name is at most 20 printable characters".into(),
        }),
    }
}

fn listen_addr(value: Option<&str>) -> Result<std::net::SocketAddr, ConfigError> {
    match optional(value) {
        None => Ok(std::net::SocketAddr::from(defaults::LISTEN_ADDR)),
        Some(v) => socket_addr("LISTEN_ADDR", v),
    }
}

fn socket_addr(name: &'static str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Malformed {
        name,
        reason: "expected host:port with an IP address, e.g. 127.0.0.1:8080".into(),
    })
}

/// PUBLIC_URL (optional; its scheme decides the cookie's `Secure`) and
/// TRUSTED_PROXIES (comma-separated IP addresses).
fn unsubscribe_secret(value: Option<&str>) -> Result<Option<Secret>, ConfigError> {
    use crate::messages::unsubscribe::MIN_SECRET_CHARS;
    match optional(value) {
        None => Ok(None),
        Some(v) if v.chars().count() >= MIN_SECRET_CHARS => Ok(Some(Secret::new(v))),
        Some(_) => Err(ConfigError::Malformed {
            name: "UNSUBSCRIBE_SECRET",
            reason: format!(
                "at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`); unset, a key kept in the database is used"
            ),
        }),
    }
}

fn console_settings(args: &ServeArgs) -> Result<crate::http::ConsoleSettings, ConfigError> {
    let public_https = match optional(args.public_url.as_deref()) {
        None => false,
        Some(v) => http_url("PUBLIC_URL", Some(v), "")?.starts_with("https://"),
    };
    Ok(crate::http::ConsoleSettings {
        public_https,
        trusted_proxies: trusted_proxies(args.trusted_proxies.as_deref())?,
        chart_ttl: match optional(args.console_chart_ttl.as_deref()) {
            Some("0") => std::time::Duration::ZERO,
            other => duration("CONSOLE_CHART_TTL", other, defaults::CONSOLE_CHART_TTL)?,
        },
    })
}

fn trusted_proxies(value: Option<&str>) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    let Some(v) = optional(value) else {
        return Ok(Vec::new());
    };
    if v.len() > 4096 {
        return Err(ConfigError::Malformed {
            name: "TRUSTED_PROXIES",
            reason: "longer than 4096 characters".into(),
        });
    }
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse().map_err(|_| ConfigError::Malformed {
                name: "TRUSTED_PROXIES",
                reason: format!(
                    "{:?} is not an IP address (a comma-separated list such as 127.0.0.1,::1)",
                    p.chars().take(60).collect::<String>()
                ),
            })
        })
        .collect()
}

/// SMS_UNKNOWN_OUTCOME: lookup (default), resend or fail.
fn sms_unknown_outcome(value: Option<&str>) -> Result<UnknownOutcome, ConfigError> {
    match optional(value) {
        None => Ok(UnknownOutcome::parse(defaults::SMS_UNKNOWN_OUTCOME).unwrap_or_default()),
        Some(v) => UnknownOutcome::parse(v).ok_or_else(|| ConfigError::Malformed {
            name: "SMS_UNKNOWN_OUTCOME",
            reason: format!("must be {}", UnknownOutcome::NAMES),
        }),
    }
}

fn worker_settings(args: &ServeArgs) -> Result<WorkerSettings, ConfigError> {
    let defaults = WorkerSettings::default();
    let worker = WorkerSettings {
        sweep_interval: duration(
            "SWEEP_INTERVAL",
            args.sweep_interval.as_deref(),
            defaults.sweep_interval,
        )?,
        lease: duration("JOB_LEASE", args.job_lease.as_deref(), defaults.lease)?,
        provider_timeout: duration(
            "PROVIDER_TIMEOUT",
            args.provider_timeout.as_deref(),
            defaults.provider_timeout,
        )?,
        backoff: crate::worker::retry::Backoff {
            base: duration(
                "RETRY_BASE_DELAY",
                args.retry_base_delay.as_deref(),
                defaults.backoff.base,
            )?,
            max: duration(
                "RETRY_MAX_DELAY",
                args.retry_max_delay.as_deref(),
                defaults.backoff.max,
            )?,
        },
        concurrency: concurrency(args.worker_concurrency.as_deref(), defaults.concurrency)?,
        shutdown_grace: duration(
            "SHUTDOWN_GRACE",
            args.shutdown_grace.as_deref(),
            defaults.shutdown_grace,
        )?,
        sms_unknown_outcome: sms_unknown_outcome(args.sms_unknown_outcome.as_deref())?,
    };
    // A lease shorter than a request would let a second worker send a job
    // the first is still sending.
    if worker.lease < worker.provider_timeout * 2 {
        return Err(ConfigError::Malformed {
            name: "JOB_LEASE",
            reason: format!(
                "must be at least twice PROVIDER_TIMEOUT ({}), or a slow request could be sent twice",
                humantime::format_duration(worker.provider_timeout)
            ),
        });
    }
    Ok(worker)
}

fn concurrency(value: Option<&str>, default: usize) -> Result<usize, ConfigError> {
    match optional(value) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or(ConfigError::Malformed {
                name: "WORKER_CONCURRENCY",
                reason: "expected a whole number from 1 to 256".into(),
            }),
    }
}

fn resend_webhook_key(value: Option<&str>) -> Result<crate::ingest::svix::SigningKey, ConfigError> {
    crate::ingest::svix::SigningKey::parse(required("RESEND_WEBHOOK_SECRET", value)?).map_err(
        |reason| ConfigError::Malformed {
            name: "RESEND_WEBHOOK_SECRET",
            reason,
        },
    )
}

/// Required: without it a report is authenticated by the URL token alone,
/// which travels in logs and proxies.
fn mobizon_webhook_secret(value: Option<&str>) -> Result<Option<Secret>, ConfigError> {
    match optional(value) {
        None => Err(ConfigError::Missing("MOBIZON_WEBHOOK_SECRET")),
        Some(v) if v.len() <= 512 && !v.chars().any(char::is_control) => Ok(Some(Secret::new(v))),
        Some(_) => Err(ConfigError::Malformed {
            name: "MOBIZON_WEBHOOK_SECRET",
            reason: "expected at most 512 printable characters".into(),
        }),
    }
}

fn poll_interval(value: Option<&str>) -> Result<Option<std::time::Duration>, ConfigError> {
    match value.map(str::trim) {
        Some("off") | Some("0") => Ok(None),
        other => Ok(Some(duration(
            "MOBIZON_POLL_INTERVAL",
            other,
            defaults::MOBIZON_POLL_INTERVAL,
        )?)),
    }
}

/// A shared secret someone could guess if it were short.
fn token(name: &'static str, value: Option<&str>) -> Result<Secret, ConfigError> {
    let value = required(name, value)?;
    if value.len() < 16 || value.len() > 512 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::Malformed {
            name,
            reason: "expected 16 to 512 printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)".into(),
        });
    }
    Ok(Secret::new(value))
}

fn http_url(name: &'static str, value: Option<&str>, default: &str) -> Result<String, ConfigError> {
    let value = match value.map(str::trim) {
        None | Some("") if !default.is_empty() => return Ok(default.to_string()),
        None | Some("") => return Err(ConfigError::Missing(name)),
        Some(v) => v,
    };
    let parsed = reqwest::Url::parse(value).map_err(|e| ConfigError::Malformed {
        name,
        reason: format!("not a URL ({e})"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
        || value.len() > 2048
    {
        return Err(ConfigError::Malformed {
            name,
            reason: "expected an http:// or https:// URL with a host".into(),
        });
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn email_from(value: Option<&str>) -> Result<String, ConfigError> {
    let value = required("EMAIL_FROM", value)?;
    // Resend accepts "address" or "Name <address>".
    let address = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close && close == value.len() - 1 => {
            &value[open + 1..close]
        }
        (None, None) => value,
        _ => "",
    };
    crate::messages::recipients::email(Some(address)).map_err(|_| ConfigError::Malformed {
        name: "EMAIL_FROM",
        reason: "expected an address like hello@example.com or Name <hello@example.com>".into(),
    })?;
    Ok(value.to_string())
}

fn rate(name: &'static str, value: Option<&str>, default: f64) -> Result<f64, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r >= 0.1 && *r <= 100_000.0)
            .ok_or(ConfigError::Malformed {
                name,
                reason: "expected requests per second, a number from 0.1 to 100000".into(),
            }),
    }
}

fn duration(
    name: &'static str,
    value: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .ok()
            .filter(|d| {
                *d >= std::time::Duration::from_millis(10)
                    && *d <= std::time::Duration::from_secs(7 * 86_400)
            })
            .ok_or(ConfigError::Malformed {
                name,
                reason: "expected a duration such as 500ms, 30s or 5m, between 10ms and 7 days"
                    .into(),
            }),
    }
}

#[cfg(test)]
mod serve_tests {
    use super::*;

    /// A variable's name and how to spoil it.
    type Case = (&'static str, fn(&mut ServeArgs));

    fn complete() -> ServeArgs {
        ServeArgs {
            database_url: Some("postgres://postgres@127.0.0.1/postgres".into()),
            resend_api_key: Some("re_123".into()),
            email_from: Some("Академия <hello@academy.kz>".into()),
            mobizon_api_key: Some("kz123".into()),
            product_url: Some("https://academy.kz/product".into()),
            resend_webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            mobizon_webhook_token: Some("mobizon-token-0123456789".into()),
            mobizon_webhook_secret: Some("mobizon-webhook-secret-key".into()),
            admin_token: Some("admin-token-0123456789".into()),
            ..Default::default()
        }
    }

    /// The configuration table of docs/deploying.md gives each default as
    /// `domain::defaults` has it: one definition, and the docs follow it.
    #[test]
    fn the_documented_defaults_are_the_ones_in_force() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploying.md"))
                .unwrap();
        for (name, default) in defaults::documented() {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} has no row in docs/deploying.md"));
            let cells: Vec<&str> = row.split(" | ").collect();
            assert_eq!(
                cells.get(2).copied(),
                Some(format!("`{default}`").as_str()),
                "{name}'s default in docs/deploying.md"
            );
        }
        let parsed = ServeConfig::from_args(&complete()).unwrap();
        assert_eq!(parsed.worker.lease, defaults::JOB_LEASE);
        assert_eq!(parsed.resend.max_rps, defaults::RESEND_MAX_RPS);
        assert_eq!(parsed.console.chart_ttl, defaults::CONSOLE_CHART_TTL);
    }

    #[test]
    fn a_complete_configuration_gets_the_documented_defaults() {
        let c = ServeConfig::from_args(&complete()).unwrap();
        assert_eq!(c.resend.api_url, "https://api.resend.com");
        assert_eq!(c.resend.max_rps, 2.0);
        assert_eq!(c.resend.batch_size, 100);
        assert_eq!(c.mobizon.api_url, "https://api.mobizon.kz");
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.worker.sweep_interval, std::time::Duration::from_secs(30));
        assert_eq!(c.worker.sms_unknown_outcome, UnknownOutcome::Lookup);
        assert!(c.lead_tracking_database_url.is_none());
        assert!(
            !format!("{c:?}").contains("re_123"),
            "secrets stay hidden in Debug"
        );
    }

    #[test]
    fn each_missing_variable_is_named() {
        let cases: [Case; 9] = [
            ("DATABASE_URL", |a| a.database_url = None),
            ("RESEND_API_KEY", |a| a.resend_api_key = None),
            ("EMAIL_FROM", |a| a.email_from = Some(" ".into())),
            ("MOBIZON_API_KEY", |a| a.mobizon_api_key = None),
            ("PRODUCT_URL", |a| a.product_url = None),
            ("RESEND_WEBHOOK_SECRET", |a| a.resend_webhook_secret = None),
            ("MOBIZON_WEBHOOK_TOKEN", |a| a.mobizon_webhook_token = None),
            ("ADMIN_TOKEN", |a| a.admin_token = Some("".into())),
            ("MOBIZON_WEBHOOK_SECRET", |a| {
                a.mobizon_webhook_secret = None
            }),
        ];
        for (name, unset) in cases {
            let mut args = complete();
            unset(&mut args);
            assert_eq!(
                ServeConfig::from_args(&args).unwrap_err(),
                ConfigError::Missing(name)
            );
        }
    }

    #[test]
    fn malformed_values_are_named_and_explained() {
        let cases: [Case; 26] = [
            ("RESEND_MAX_RPS", |a| a.resend_max_rps = Some("fast".into())),
            ("RESEND_BATCH_SIZE", |a| {
                a.resend_batch_size = Some("101".into())
            }),
            ("RESEND_BATCH_SIZE", |a| {
                a.resend_batch_size = Some("0".into())
            }),
            ("RESEND_MAX_RPS", |a| a.resend_max_rps = Some("0".into())),
            ("MOBIZON_MAX_RPS", |a| {
                a.mobizon_max_rps = Some("NaN".into())
            }),
            ("RESEND_API_URL", |a| {
                a.resend_api_url = Some("ftp://x".into())
            }),
            ("MOBIZON_API_URL", |a| {
                a.mobizon_api_url = Some("not a url".into())
            }),
            ("PRODUCT_URL", |a| {
                a.product_url = Some("javascript:alert(1)".into())
            }),
            ("EMAIL_FROM", |a| a.email_from = Some("Name <broken".into())),
            ("LISTEN_ADDR", |a| a.listen_addr = Some("localhost".into())),
            ("SWEEP_INTERVAL", |a| a.sweep_interval = Some("-5s".into())),
            ("WORKER_CONCURRENCY", |a| {
                a.worker_concurrency = Some("100000".into())
            }),
            ("JOB_LEASE", |a| a.job_lease = Some("5s".into())),
            ("LEAD_TRACKING_DATABASE_URL", |a| {
                a.lead_tracking_database_url = Some("mysql://x".into())
            }),
            ("RESEND_WEBHOOK_SECRET", |a| {
                a.resend_webhook_secret = Some("whsec_***not-base64***".into())
            }),
            ("ADMIN_TOKEN", |a| a.admin_token = Some("short".into())),
            ("MOBIZON_WEBHOOK_TOKEN", |a| {
                a.mobizon_webhook_token = Some("has spaces in it, sixteen+".into())
            }),
            ("MOBIZON_POLL_INTERVAL", |a| {
                a.mobizon_poll_interval = Some("often".into())
            }),
            ("SMS_UNKNOWN_OUTCOME", |a| {
                a.sms_unknown_outcome = Some("retry".into())
            }),
            ("SMS_UNKNOWN_OUTCOME", |a| {
                a.sms_unknown_outcome = Some(format!("lookup{}", "x".repeat(10_000)))
            }),
            ("PUBLIC_URL", |a| {
                a.public_url = Some("ops.academy.kz".into())
            }),
            ("UNSUBSCRIBE_SECRET", |a| {
                a.unsubscribe_secret = Some("too short to sign links".into())
            }),
            ("TRUSTED_PROXIES", |a| {
                a.trusted_proxies = Some("127.0.0.1, proxy.local".into())
            }),
            ("TRUSTED_PROXIES", |a| {
                a.trusted_proxies = Some("1.1.1.1,".repeat(1000))
            }),
            ("METRICS_ADDR", |a| a.metrics_addr = Some(":9100".into())),
            ("CONSOLE_CHART_TTL", |a| {
                a.console_chart_ttl = Some("forever".into())
            }),
        ];
        for (name, spoil) in cases {
            let mut args = complete();
            spoil(&mut args);
            match ServeConfig::from_args(&args).unwrap_err() {
                ConfigError::Malformed { name: got, .. } => assert_eq!(got, name),
                other => panic!("{name}: {other}"),
            }
        }
    }

    #[test]
    fn the_console_learns_https_and_its_proxies() {
        let config = ServeConfig::from_args(&complete()).unwrap();
        assert!(!config.console.public_https && config.console.trusted_proxies.is_empty());
        assert_eq!(config.metrics_addr, None);
        let mut args = complete();
        args.public_url = Some("https://ops.academy.kz/".into());
        args.trusted_proxies = Some(" 127.0.0.1 , ::1 ".into());
        args.metrics_addr = Some("127.0.0.1:9100".into());
        let config = ServeConfig::from_args(&args).unwrap();
        assert!(config.console.public_https);
        assert_eq!(config.console.trusted_proxies.len(), 2);
        assert_eq!(config.metrics_addr, Some(([127, 0, 0, 1], 9100).into()));
    }

    #[test]
    fn oversized_and_hostile_values_are_refused() {
        let mut args = complete();
        args.product_url = Some(format!("https://a.kz/{}", "x".repeat(5000)));
        assert!(ServeConfig::from_args(&args).is_err());
        let mut args = complete();
        args.sms_from = Some("Academy\r\nX-Evil: 1".into());
        assert!(ServeConfig::from_args(&args).is_err());
        let mut args = complete();
        args.email_from = Some("a@b.kz\r\nBcc: all@x.kz".into());
        assert!(ServeConfig::from_args(&args).is_err());
    }
}
