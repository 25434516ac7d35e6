//! `leadrelay doctor`: after configuring, one command that checks everything
//! `serve` depends on and prints one line per check (ok / warn / fail, what
//! it found, how to fix it), exiting non-zero when anything fails.
//!
//! The rule this room keeps: every check is read-only or sends nothing that
//! costs anything (LISTEN/NOTIFY on a private channel, Resend's domain list,
//! Mobizon's balance), so it is safe to run against production at any time.

mod database;
mod landing;
mod providers;
mod webhook_inbox;

pub use providers::STAND_IN_HEADER;

use serde::Serialize;

use crate::config::{self, ServeArgs, ServeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found, in a sentence.
    pub found: String,
    /// What to do about it, when anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("{status}  {:<13} {}", check.name, check.found));
            if let Some(fix) = &check.fix {
                out.push_str(&format!(" — {fix}"));
            }
            out.push('\n');
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        out.push_str(&format!(
            "{} checks: {} failed, {} warnings\n",
            self.checks.len(),
            failed,
            warned
        ));
        out
    }
}

/// Whether every email can carry a one-click unsubscribe link: it points
/// under PUBLIC_URL, and mail clients post to it only over https.
fn unsubscribe(args: &ServeArgs) -> Check {
    const NAME: &str = "unsubscribe";
    match config::optional(args.public_url.as_deref()) {
        None => Check::fail(
            NAME,
            "PUBLIC_URL is not set: emails go without List-Unsubscribe and the templates' unsubscribe_url is empty",
            "set PUBLIC_URL to the https address people reach this service at (Gmail and Yahoo require a one-click unsubscribe of promotional mail)",
        ),
        Some(url) if url.starts_with("http://") => Check::warn(
            NAME,
            format!(
                "unsubscribe links are http ({url}): mail clients offer one-click unsubscribe only for https"
            ),
            "put the service behind https and set PUBLIC_URL to it (dev mode and tests use http on purpose)",
        ),
        Some(url) => Check::ok(
            NAME,
            format!(
                "every email carries List-Unsubscribe under {url}/unsubscribe/, signed with {}",
                if config::optional(args.unsubscribe_secret.as_deref()).is_some() {
                    "UNSUBSCRIBE_SECRET"
                } else {
                    "the key kept in the database"
                }
            ),
        ),
    }
}

/// Runs every check; a failed one never stops the others.
pub async fn run(args: &ServeArgs) -> Report {
    let mut checks = vec![configuration(args)];
    let database_url = config::database_url("DATABASE_URL", args.database_url.as_deref());
    match database_url {
        Ok(url) => checks.extend(
            database::checks(
                url.expose(),
                config::optional(args.landing_role.as_deref()),
                config::optional(args.product_url.as_deref())
                    .unwrap_or("https://example.invalid/product"),
            )
            .await,
        ),
        Err(e) => checks.push(Check::fail(
            "database",
            e.to_string(),
            "set DATABASE_URL to the direct connection or the session pooler (port 5432), e.g. postgresql://postgres:…@db.<ref>.supabase.co:5432/postgres?sslmode=verify-full&sslrootcert=/etc/leadrelay/prod-ca-2021.crt",
        )),
    }
    checks.push(database::lead_tracking(args).await);
    checks.push(unsubscribe(args));
    checks.extend(providers::checks(args).await);
    Report {
        ok: checks.iter().all(|c| c.status != Status::Fail),
        checks,
    }
}

/// The whole configuration as `serve` would load it, and what it allows
/// that a careful operator would not.
fn configuration(args: &ServeArgs) -> Check {
    const NAME: &str = "configuration";
    match ServeConfig::from_args(args) {
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            "set it in the service's environment (see the configuration table in docs/deploying.md)",
        ),
        Ok(config) => Check::ok(
            NAME,
            format!(
                "complete: JOB_LEASE {} ≥ 2 × PROVIDER_TIMEOUT {}, secrets of sufficient length, PRODUCT_URL {}",
                humantime::format_duration(config.worker.lease),
                humantime::format_duration(config.worker.provider_timeout),
                config.product_url
            ),
        ),
    }
}
