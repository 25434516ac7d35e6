//! `leadrelay reconcile` and `leadrelay backfill`: the leads of a window
//! that lack messages, the providers asked first whether the system before
//! leadrelay sent them (unless `--no-provider-check`), a report of one line
//! per lead and channel, a confirmation, and then the writes (`reconcile`).
//!
//! The two differ in the leads they take: `reconcile` every lead and
//! channel without a job of that channel; `backfill` (as it always has)
//! only leads without any job.
//!
//! Resend's rate limit is the team's, shared with a running `serve`: these
//! commands take `--provider-share` of it (half by default) and follow the
//! `ratelimit-*` headers every answer carries, which count the whole team's
//! requests; a 429 pauses them for its `retry-after`, and the worker treats
//! one as a wait, not a failed attempt.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::ops::{OpsError, confirm};
use crate::config::ProviderArgs;
use crate::providers::http_client;
use crate::providers::mobizon::MobizonClient;
use crate::providers::resend::ResendClient;
use crate::reconcile::{self, Answer, Audit, Leads, Line, Providers};
use crate::store::operator::Actor;

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Reconcile,
    Backfill,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Reconcile => "reconcile",
            Command::Backfill => "backfill",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub source_pattern: String,
    pub dry_run: bool,
    pub yes: bool,
    /// Send at once, whatever the rules' windows, de-duplication and caps say.
    pub ignore_policies: bool,
}

/// What a run wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub leads: usize,
    pub recorded: usize,
    pub due: i64,
    pub invalid: i64,
    pub held_back: usize,
}

/// The part of each provider's rate limit these commands take by default.
pub const DEFAULT_SHARE: f64 = 0.5;

/// The providers' clients, at `share` of their rate limits.
pub fn providers(args: &ProviderArgs, share: f64) -> Result<Providers, crate::config::ConfigError> {
    let (resend, mobizon) = args.access()?;
    let http = http_client(std::time::Duration::from_secs(30));
    let resend = ResendClient::new(
        http.clone(),
        &resend.api_url,
        resend.api_key,
        resend.max_rps,
    )
    .with_rate_share(share);
    let mobizon = MobizonClient::new(
        http,
        &mobizon.api_url,
        mobizon.api_key,
        None,
        mobizon.max_rps,
    );
    mobizon.pacer.set_share(share);
    Ok(Providers {
        resend: Arc::new(resend),
        mobizon: Arc::new(mobizon),
    })
}

/// Runs `request`: asks `providers` (None: `--no-provider-check`), prints
/// the report, asks, writes.
pub async fn run(
    client: &mut Client,
    providers: Option<&Providers>,
    request: &Request,
) -> Result<Report, OpsError> {
    if request.until <= request.since {
        return Err(OpsError::EmptyWindow);
    }
    let leads = Leads::Window {
        since: request.since,
        until: request.until,
        source_pattern: request.source_pattern.clone(),
    };
    let no_job_at_all = request.command == Command::Backfill;
    let lines = reconcile::assess(client, providers, &leads, no_job_at_all, true).await?;
    let lead_count = distinct_leads(&lines);
    print_report(request, providers.is_some(), &lines, lead_count);
    let mut report = Report {
        leads: lead_count,
        ..Default::default()
    };
    if lines.is_empty() {
        return Ok(report);
    }
    if request.dry_run {
        println!("dry run: nothing was changed");
        return Ok(report);
    }
    confirm(&question(request, &lines), request.yes)?;
    let actor = Actor::cli();
    let audit = Audit {
        actor: &actor,
        action: request.command.name(),
    };
    let applied = reconcile::apply(client, &lines, request.ignore_policies, &audit, true).await?;
    report.recorded = applied.recorded.len();
    report.due = applied.enqueued.due;
    report.invalid = applied.enqueued.invalid;
    report.held_back = applied.held_back;
    print_outcome(request, &report);
    Ok(report)
}

fn distinct_leads(lines: &[Line]) -> usize {
    let mut leads: Vec<_> = lines.iter().map(|l| l.wanted.lead).collect();
    leads.sort();
    leads.dedup();
    leads.len()
}

fn print_report(request: &Request, asked: bool, lines: &[Line], leads: usize) {
    let which = match request.command {
        Command::Backfill => "have no messages yet",
        Command::Reconcile => "lack a message",
    };
    println!(
        "{leads} lead(s) from {} to {} with source like {:?} {which}.",
        request.since.format("%Y-%m-%d %H:%M:%S UTC"),
        request.until.format("%Y-%m-%d %H:%M:%S UTC"),
        request.source_pattern
    );
    if !asked {
        println!(
            "The providers were not asked (--no-provider-check): a message the system before \
             leadrelay sent will be sent a second time."
        );
    }
    for line in lines.iter().filter(|l| l.is_reported()) {
        println!("  {}", reconcile::line_text(line));
    }
    if !lines.is_empty() {
        println!("{}", reconcile::tally(lines));
    }
}

fn question(request: &Request, lines: &[Line]) -> String {
    let found = lines
        .iter()
        .filter(|l| matches!(l.answer, Answer::Found(_)))
        .count();
    let send = lines
        .iter()
        .filter(|l| matches!(l.answer, Answer::NotFound | Answer::Unchecked))
        .count();
    let how = if request.ignore_policies {
        "now, ignoring send windows, de-duplication and caps"
    } else {
        "within their rules' send windows and policies"
    };
    format!("Record {found} message(s) found at the providers and send {send} ({how})?")
}

fn print_outcome(request: &Request, report: &Report) {
    if report.recorded > 0 {
        println!(
            "recorded {} message(s) found at the providers as sent (not sent again)",
            report.recorded
        );
    }
    if request.ignore_policies {
        println!(
            "enqueued {} message(s) due now, policies ignored; {} invalid (unusable address, see `leadrelay status`)",
            report.due, report.invalid
        );
    } else {
        println!(
            "enqueued {} message(s): due now, or at the opening of their rule's send window; \
             one already sent to the same person is cancelled before its request; \
             {} invalid (unusable address, see `leadrelay status`)",
            report.due, report.invalid
        );
    }
    if report.held_back > 0 {
        println!(
            "{} message(s) left alone (ambiguous or unknown, above): nothing was sent for them",
            report.held_back
        );
    }
}
