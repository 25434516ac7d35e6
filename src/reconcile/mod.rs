//! Reconciliation with the providers: before leadrelay sends a lead's
//! message that it has no job for (a lead from before leadrelay, say), it
//! asks Resend and Mobizon whether the system before it sent one.
//!
//! `assess` asks and judges, writing nothing (the whole of a dry run); the
//! caller shows the report and asks; `apply` then writes: a message found
//! is recorded as a `sent` job with `reconciled_at` (`records`), one not
//! found is created as `backfill` creates it, and an ambiguous or unknown
//! one gets nothing. The CLI's `reconcile` and `backfill` and the console's
//! "Ask Resend and Mobizon" all run these two.
//!
//! The reconcile room: used by `http` and `cli`; it uses `ingest` (the
//! providers' state names), `store`, `providers`, `messages` and `domain`.

pub mod ask;
pub mod judge;
pub mod leads;
pub mod records;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::domain::Channel;
use crate::ingest::delivery::resend_last_event_state;
use crate::ingest::mobizon::mobizon_status;
use crate::messages::mask;
use crate::providers::mobizon::{ListedSms, MobizonClient};
use crate::providers::resend::ResendClient;
use crate::providers::resend_list::ListedEmail;
use judge::{Placed, Verdict};
pub use leads::{Leads, Wanted};
pub use records::{Audit, Enqueued, Found};

/// The clients `reconcile` asks.
#[derive(Clone)]
pub struct Providers {
    pub resend: Arc<ResendClient>,
    pub mobizon: Arc<MobizonClient>,
}

/// What was learnt about one lead and channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The provider holds exactly this message for the lead.
    Found(Found),
    /// The provider holds none: it is sent.
    NotFound,
    /// Candidates, and why they are not one answer: nothing is sent.
    Ambiguous(Vec<Found>, &'static str),
    /// The provider could not be asked: nothing is sent.
    Unknown(String),
    /// The recipient cannot be used: the job is made `invalid`, and the
    /// provider is never asked.
    Unusable(String),
    /// Not asked (`--no-provider-check`): it is sent.
    Unchecked,
    /// The dashboard's row (`lead_tracking`): no provider to ask; it is
    /// synced, with whatever was found or sent. Left out of the report.
    Dashboard,
}

impl Answer {
    /// Whether `apply` creates a job to send (or an `invalid` one).
    fn creates_a_job(&self) -> bool {
        matches!(
            self,
            Answer::NotFound | Answer::Unusable(_) | Answer::Unchecked | Answer::Dashboard
        )
    }
}

impl Line {
    /// Whether the report shows it: every email and SMS, not the
    /// dashboard's row.
    pub fn is_reported(&self) -> bool {
        self.answer != Answer::Dashboard
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub wanted: Wanted,
    pub answer: Answer,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for ReconcileError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReconcileError::Db(crate::store::describe(&e))
    }
}

/// Asks the providers about `leads` (only those with no job at all when
/// `no_job_at_all`, as `backfill` chooses) and judges each lead and
/// channel; `providers` None: nothing is asked (`--no-provider-check`).
pub async fn assess(
    client: &Client,
    providers: Option<&Providers>,
    leads: &Leads,
    no_job_at_all: bool,
    show_progress: bool,
) -> Result<Vec<Line>, ReconcileError> {
    let wanted = leads::wanted(client, leads, no_job_at_all).await?;
    let mut answers: Vec<Option<Answer>> = wanted
        .iter()
        .map(|w| match (&w.problem, providers) {
            _ if w.channel == Channel::LeadTracking => Some(Answer::Dashboard),
            (Some(problem), _) => Some(Answer::Unusable(problem.clone())),
            (None, None) => Some(Answer::Unchecked),
            (None, Some(_)) => None,
        })
        .collect();
    if let Some(providers) = providers {
        let open = |channel: Channel, answers: &[Option<Answer>]| -> Vec<usize> {
            (0..wanted.len())
                .filter(|&i| answers[i].is_none() && wanted[i].channel == channel)
                .collect()
        };
        let emails = open(Channel::Email, &answers);
        for (i, answer) in judge_emails(client, providers, &wanted, &emails, show_progress).await? {
            answers[i] = Some(answer);
        }
        let sms = open(Channel::Sms, &answers);
        for (i, answer) in judge_sms(client, providers, &wanted, &sms, show_progress).await? {
            answers[i] = Some(answer);
        }
    }
    Ok(wanted
        .into_iter()
        .zip(answers)
        .map(|(wanted, answer)| Line {
            wanted,
            answer: answer.unwrap_or(Answer::Unknown("not asked".into())),
        })
        .collect())
}

fn bar(show: bool, length: Option<u64>, what: &'static str) -> indicatif::ProgressBar {
    let bar = match length {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(what);
    bar
}

/// The address of a listed `to`: `Name <a@b.kz>` or `a@b.kz`.
fn address_of(to: &str) -> String {
    match (to.rfind('<'), to.rfind('>')) {
        (Some(open), Some(close)) if open < close => to[open + 1..close].to_string(),
        _ => to.to_string(),
    }
}

fn found_email(email: &ListedEmail) -> Found {
    Found {
        provider_id: email.id.clone(),
        campaign_id: None,
        at: email.created_at,
        state: email
            .last_event
            .as_deref()
            .and_then(resend_last_event_state),
        label: email.subject.clone().unwrap_or_default(),
    }
}

/// One walk of Resend's list, then a verdict for each open email of
/// `wanted` at `open`.
async fn judge_emails(
    client: &Client,
    providers: &Providers,
    wanted: &[Wanted],
    open: &[usize],
    show_progress: bool,
) -> Result<Vec<(usize, Answer)>, ReconcileError> {
    let Some(since) = open.iter().map(|&i| wanted[i].arrived).min() else {
        return Ok(Vec::new());
    };
    let progress = bar(show_progress, None, "reading Resend's list of sent emails");
    let read = std::sync::atomic::AtomicUsize::new(0);
    let walked = ask::sent_emails(&providers.resend, since, &|n| {
        let total = read.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress.set_message(format!("{total} sent emails read from Resend"));
        progress.tick();
    })
    .await;
    progress.finish_and_clear();
    let emails = match walked {
        Ok(emails) => emails,
        Err(e) => {
            let why = format!("{e}");
            return Ok(open
                .iter()
                .map(|&i| (i, Answer::Unknown(why.clone())))
                .collect());
        }
    };
    let emails: Vec<&ListedEmail> = emails.iter().filter(|e| !e.was_cancelled()).collect();
    let held = leads::held(
        client,
        Channel::Email,
        &emails.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
    )
    .await?;
    // every address of every email, keyed in the database
    let mut addresses = Vec::new();
    let mut owners = Vec::new();
    for (n, email) in emails.iter().enumerate() {
        if held.contains(&email.id) {
            continue;
        }
        for to in &email.to {
            addresses.push(address_of(to));
            owners.push(n);
        }
    }
    let keys = leads::keys(client, Channel::Email, &addresses).await?;
    let mut by_key: HashMap<String, Vec<Placed<Found>>> = HashMap::new();
    for (key, n) in keys.into_iter().zip(owners) {
        if let Some(key) = key {
            let email = emails[n];
            let list = by_key.entry(key).or_default();
            if !list.iter().any(|p| p.message.provider_id == email.id) {
                list.push(Placed {
                    earliest: email.created_at,
                    latest: email.created_at,
                    message: found_email(email),
                });
            }
        }
    }
    verdicts(client, Channel::Email, wanted, open, &by_key).await
}

fn found_sms(sms: &ListedSms, arrived: DateTime<Utc>) -> Found {
    // Mobizon's time, read as UTC (it names no zone), never before the lead
    let at = sms
        .listed_time()
        .map_or(arrived, |t| t.and_utc().max(arrived));
    Found {
        provider_id: sms.id.clone(),
        campaign_id: sms.campaign_id.clone(),
        at,
        state: sms.status.as_deref().and_then(mobizon_status),
        label: sms.text.chars().take(60).collect(),
    }
}

/// `message/list` for each open SMS of `wanted` at `open`, then a verdict
/// for each.
async fn judge_sms(
    client: &Client,
    providers: &Providers,
    wanted: &[Wanted],
    open: &[usize],
    show_progress: bool,
) -> Result<Vec<(usize, Answer)>, ReconcileError> {
    let progress = bar(show_progress, Some(open.len() as u64), "asking Mobizon");
    let mut answers = Vec::new();
    let mut listed: HashMap<String, Vec<Placed<Found>>> = HashMap::new();
    let mut asked = Vec::new();
    for &i in open {
        let w = &wanted[i];
        let (Some(digits), Some(key)) = (&w.recipient, &w.key) else {
            answers.push((i, Answer::Unknown("no number to ask about".into())));
            continue;
        };
        match ask::sent_sms(&providers.mobizon, digits, w.arrived).await {
            Ok(items) => {
                let list = listed.entry(key.clone()).or_default();
                for sms in items {
                    if list.iter().any(|p| p.message.provider_id == sms.id) {
                        continue;
                    }
                    let (earliest, latest) = sms
                        .possible_instants()
                        .unwrap_or((DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC));
                    list.push(Placed {
                        earliest,
                        latest,
                        message: found_sms(&sms, w.arrived),
                    });
                }
                asked.push(i);
            }
            Err(e) => answers.push((i, Answer::Unknown(e.to_string()))),
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let ids: Vec<String> = listed
        .values()
        .flatten()
        .map(|p| p.message.provider_id.clone())
        .collect();
    let held = leads::held(client, Channel::Sms, &ids).await?;
    for list in listed.values_mut() {
        list.retain(|p| !held.contains(&p.message.provider_id));
    }
    answers.extend(verdicts(client, Channel::Sms, wanted, &asked, &listed).await?);
    Ok(answers)
}

/// The judgement of each lead at `open`, among its address's neighbours.
async fn verdicts(
    client: &Client,
    channel: Channel,
    wanted: &[Wanted],
    open: &[usize],
    messages: &HashMap<String, Vec<Placed<Found>>>,
) -> Result<Vec<(usize, Answer)>, ReconcileError> {
    let asked: Vec<&Wanted> = open.iter().map(|&i| &wanted[i]).collect();
    let neighbours = leads::neighbours(client, channel, &asked).await?;
    let none = Vec::new();
    Ok(open
        .iter()
        .map(|&i| {
            let w = &wanted[i];
            let key = w.key.clone().unwrap_or_default();
            let same = neighbours.get(&key).unwrap_or(&none);
            let messages = messages.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let answer = match judge::judge(&w.arrival(), same, messages) {
                Verdict::Found(found) => Answer::Found(found),
                Verdict::NotFound => Answer::NotFound,
                Verdict::Ambiguous(candidates, why) => Answer::Ambiguous(candidates, why),
            };
            (i, answer)
        })
        .collect())
}

/// What `apply` wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Jobs recorded from messages found at a provider.
    pub recorded: Vec<i64>,
    pub enqueued: Enqueued,
    /// Lead channels left alone (ambiguous or unknown).
    pub held_back: usize,
}

/// Writes what `lines` decided; every job carries an `ops_audit` row.
pub async fn apply(
    client: &mut Client,
    lines: &[Line],
    ignore_policies: bool,
    audit: &Audit<'_>,
    show_progress: bool,
) -> Result<Applied, ReconcileError> {
    let mut applied = Applied::default();
    let mut pairs = Vec::new();
    for line in lines {
        match &line.answer {
            Answer::Found(found) => {
                let recorded = records::record_found(
                    client,
                    line.wanted.lead,
                    line.wanted.channel,
                    found,
                    audit,
                )
                .await?;
                applied.recorded.extend(recorded);
            }
            answer if answer.creates_a_job() => pairs.push((line.wanted.lead, line.wanted.channel)),
            _ => applied.held_back += 1,
        }
    }
    let reason = if lines.iter().any(|l| l.answer == Answer::Unchecked) {
        format!("{} without asking the providers", audit.action)
    } else {
        format!("{}: not found at the provider, sent now", audit.action)
    };
    let progress = bar(
        show_progress && pairs.len() >= 200,
        Some(pairs.len() as u64),
        "creating jobs",
    );
    applied.enqueued =
        records::enqueue(client, &pairs, ignore_policies, audit, &reason, &progress).await?;
    progress.finish_and_clear();
    Ok(applied)
}

/// A lead and channel's contact, masked as in the logs.
fn contact(wanted: &Wanted) -> String {
    match (&wanted.recipient, wanted.channel) {
        (Some(r), Channel::Email) => mask::email(r),
        (Some(r), _) => mask::phone(r),
        (None, _) => "(unusable)".into(),
    }
}

fn provider_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "Resend",
        _ => "Mobizon",
    }
}

fn found_text(found: &Found) -> String {
    format!(
        "{} of {}{}",
        found.provider_id,
        found.at.format("%Y-%m-%d %H:%M UTC"),
        found.state.map(|s| format!(", {s}")).unwrap_or_default()
    )
}

/// The report's line for `line`: the lead, when it arrived, the channel,
/// the contact masked, and the answer with what will be done.
pub fn line_text(line: &Line) -> String {
    let w = &line.wanted;
    let provider = provider_name(w.channel);
    let verdict = match &line.answer {
        Answer::Found(found) => format!(
            "found at {provider}: {} — recorded as sent, not sent again",
            found_text(found)
        ),
        Answer::NotFound => format!("not found at {provider} — will be sent"),
        Answer::Ambiguous(candidates, why) => format!(
            "ambiguous: {why} ({}) — nothing is sent; check them in {provider}'s dashboard; to send it anyway, \
             reconcile this lead with --no-provider-check",
            candidates
                .iter()
                .map(found_text)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Answer::Unknown(why) => {
            format!("unknown: {why} — nothing is sent; run again once {provider} can be asked")
        }
        Answer::Unusable(problem) => {
            format!("unusable: {problem} — recorded as invalid, never looked up")
        }
        Answer::Unchecked => format!("not asked at {provider} — will be sent"),
        Answer::Dashboard => "the dashboard's row — will be synced".to_string(),
    };
    format!(
        "{}  {}  {:<5}  {:<22}  {verdict}",
        w.lead,
        w.arrived.format("%Y-%m-%d %H:%M"),
        w.channel.as_str(),
        contact(w)
    )
}

/// Counts of the answers, for the report's last line.
pub fn tally(lines: &[Line]) -> String {
    let count = |f: fn(&Answer) -> bool| {
        lines
            .iter()
            .filter(|l| l.is_reported() && f(&l.answer))
            .count()
    };
    format!(
        "{} found, {} not found, {} ambiguous, {} unknown, {} unusable, {} not asked",
        count(|a| matches!(a, Answer::Found(_))),
        count(|a| matches!(a, Answer::NotFound)),
        count(|a| matches!(a, Answer::Ambiguous(..))),
        count(|a| matches!(a, Answer::Unknown(_))),
        count(|a| matches!(a, Answer::Unusable(_))),
        count(|a| matches!(a, Answer::Unchecked)),
    )
}

pub fn statements() -> Vec<&'static str> {
    let mut all = vec![leads::WANTED, leads::NEIGHBOURS, leads::KEYS, leads::HELD];
    all.extend(records::statements());
    all
}
