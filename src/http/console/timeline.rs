//! A message's timeline on a lead's page, oldest first, made of named steps:
//! created, due, held by its send window, each failed attempt, in doubt,
//! sent, found by a look-up, each delivery report, the end, and every
//! operator action on it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::page::{esc, visitor_text};
use crate::domain::DeliveryState;

/// A job's statement on a lead's page: what the card and its timeline show,
/// read by column name.
pub const JOBS: &str = "
select id, channel, template, status, attempts, max_attempts, created_at, due_at, sent_at,
       finished_at, provider_message_id, delivery_status, last_error, errors,
       leadrelay.held_until(status, held_until, due_at) as held, hold_reason,
       duplicate_of_lead, recovered_at, outcome_unknown_since, recipient, sent_unconfirmed,
       reconciled_at
from public.notification_jobs where lead_id = $1
order by case channel when 'email' then 0 when 'sms' then 1 else 2 end, template, id";

/// Each job's delivery events, oldest first, with a provider's reason where
/// its report has one (a bounce's message, an SMS status).
pub const EVENTS: &str = "
select job_id, coalesce(occurred_at, received_at) as at, provider, event_type,
       coalesce(payload #>> '{data,bounce,message}', payload #>> '{data,bounce,subType}',
                payload #>> '{data,failed,reason}', payload #>> '{status}', '') as detail,
       delivery_status
from public.notification_events
where job_id = any($1::bigint[])
order by coalesce(occurred_at, received_at), id
limit 500";

/// One job as its card shows it.
pub struct Job {
    pub id: i64,
    pub channel: String,
    pub template: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    created: DateTime<Utc>,
    due: DateTime<Utc>,
    sent: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    provider_id: Option<String>,
    pub delivery: Option<String>,
    last_error: Option<String>,
    errors: serde_json::Value,
    held: Option<DateTime<Utc>>,
    hold_reason: Option<String>,
    duplicate_of: Option<Uuid>,
    recovered: Option<DateTime<Utc>>,
    in_doubt: Option<DateTime<Utc>>,
    recipient: Option<String>,
    unconfirmed: Option<String>,
    /// Found at the provider by `reconcile`: sent by the system before
    /// leadrelay.
    reconciled: Option<DateTime<Utc>>,
}

impl Job {
    pub fn from_row(row: &tokio_postgres::Row) -> Job {
        Job {
            id: row.get("id"),
            channel: row.get("channel"),
            template: row.get("template"),
            status: row.get("status"),
            attempts: row.get("attempts"),
            max_attempts: row.get("max_attempts"),
            created: row.get("created_at"),
            due: row.get("due_at"),
            sent: row.get("sent_at"),
            finished: row.get("finished_at"),
            provider_id: row.get("provider_message_id"),
            delivery: row.get("delivery_status"),
            last_error: row.get("last_error"),
            errors: row.get("errors"),
            held: row.get("held"),
            hold_reason: row.get("hold_reason"),
            duplicate_of: row.get("duplicate_of_lead"),
            recovered: row.get("recovered_at"),
            in_doubt: row.get("outcome_unknown_since"),
            recipient: row.get("recipient"),
            unconfirmed: row.get("sent_unconfirmed"),
            reconciled: row.get("reconciled_at"),
        }
    }

    fn is_dashboard_row(&self) -> bool {
        self.channel == "lead_tracking"
    }
}

/// One line of a timeline.
struct Entry {
    at: DateTime<Utc>,
    class: &'static str,
    text: String,
}

impl Entry {
    fn new(at: DateTime<Utc>, class: &'static str, text: impl Into<String>) -> Entry {
        Entry {
            at,
            class,
            text: text.into(),
        }
    }
}

/// The job's timeline as table rows, oldest first.
pub fn rows(job: &Job, events: &[tokio_postgres::Row], audit: &[tokio_postgres::Row]) -> String {
    let mut entries = vec![created(job)];
    entries.extend(due(job));
    entries.extend(held(job));
    entries.extend(attempts(job));
    entries.extend(in_doubt(job));
    entries.extend(sent(job));
    entries.extend(recovered(job));
    entries.extend(reconciled(job));
    entries.extend(reports(job, events));
    entries.extend(end(job));
    entries.extend(operator_actions(job, audit));
    entries.sort_by_key(|e| e.at);
    entries
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td class={}>{}</td></tr>",
                e.at.format("%Y-%m-%d %H:%M:%S"),
                e.class,
                e.text
            )
        })
        .collect()
}

fn created(job: &Job) -> Entry {
    let text = if job.is_dashboard_row() {
        "created: the sales dashboard's row for this lead".to_string()
    } else {
        format!(
            "created for {}",
            job.recipient
                .as_deref()
                .map(visitor_text)
                .unwrap_or_else(|| "(no recipient)".into())
        )
    };
    Entry::new(job.created, "muted", text)
}

fn due(job: &Job) -> Option<Entry> {
    let status = job.status.as_str();
    let shown = status == "scheduled" || job.sent.is_some() || job.attempts > 0 || status == "due";
    shown.then(|| {
        let text = match status {
            "scheduled" => "scheduled for this time",
            "due" => "due: waiting for the worker",
            _ => "due for sending",
        };
        Entry::new(job.due, "muted", text)
    })
}

fn held(job: &Job) -> Option<Entry> {
    let (until, reason) = (job.held?, job.hold_reason.as_deref()?);
    Some(Entry::new(
        until,
        "wait",
        format!("held by a send window: {}", esc(reason)),
    ))
}

/// Each failed attempt in the job's error history, and an operator's "Send
/// again" (the earlier message, kept there).
fn attempts(job: &Job) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in job.errors.as_array().into_iter().flatten() {
        let Some(at) = e["at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        let error = esc(e["error"].as_str().unwrap_or_default());
        out.push(if e["kind"] == "sent_again" {
            Entry::new(at, "muted", error)
        } else {
            let attempt = e["attempt"].as_i64().unwrap_or(0);
            Entry::new(at, "bad", format!("attempt {attempt} failed: {error}"))
        });
    }
    out
}

fn in_doubt(job: &Job) -> Option<Entry> {
    Some(Entry::new(
        job.in_doubt?,
        "wait",
        "no answer from Mobizon: waiting for a look-up before anything is sent again",
    ))
}

fn sent(job: &Job) -> Option<Entry> {
    let text = match (&job.unconfirmed, job.is_dashboard_row()) {
        (_, true) => "dashboard row synced (lead_tracking)".to_string(),
        (Some(why), false) => format!(
            "probably sent (no provider id): <span class=reason>{}</span>",
            esc(why)
        ),
        (None, false) if job.reconciled.is_some() => format!(
            "sent by the system before leadrelay · provider id <code>{}</code>",
            esc(job.provider_id.as_deref().unwrap_or("—"))
        ),
        (None, false) => format!(
            "sent · provider id <code>{}</code>",
            esc(job.provider_id.as_deref().unwrap_or("—"))
        ),
    };
    Some(Entry::new(job.sent?, "ok", text))
}

fn recovered(job: &Job) -> Option<Entry> {
    Some(Entry::new(
        job.recovered?,
        "ok",
        "found at Mobizon by a look-up: recorded sent, not sent again",
    ))
}

fn reconciled(job: &Job) -> Option<Entry> {
    let provider = if job.channel == "email" {
        "Resend"
    } else {
        "Mobizon"
    };
    Some(Entry::new(
        job.reconciled?,
        "ok reconciled",
        format!("found at {provider} by reconciliation: recorded sent, not sent by leadrelay"),
    ))
}

/// The providers' delivery reports (`EVENTS`) for this job, a failure in
/// red as `DeliveryState` says.
fn reports(job: &Job, events: &[tokio_postgres::Row]) -> Vec<Entry> {
    events
        .iter()
        .filter(|e| e.get::<_, Option<i64>>("job_id") == Some(job.id))
        .map(|e| {
            let detail: &str = e.get("detail");
            let bad = e
                .get::<_, Option<&str>>("delivery_status")
                .and_then(DeliveryState::parse)
                .is_some_and(DeliveryState::is_failure);
            let text = format!(
                "{} reported <b class=event>{}</b>{}",
                esc(e.get::<_, &str>("provider")),
                esc(e.get::<_, &str>("event_type")),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", esc(detail))
                }
            );
            Entry::new(e.get("at"), if bad { "bad" } else { "ok" }, text)
        })
        .collect()
}

fn end(job: &Job) -> Option<Entry> {
    let at = job.finished?;
    if !matches!(job.status.as_str(), "failed" | "invalid" | "cancelled") {
        return None;
    }
    let why = esc(job.last_error.as_deref().unwrap_or_default());
    let other = job
        .duplicate_of
        .map(|d| format!(" (<a href=\"/ops/leads/{d}\">the other lead</a>)"))
        .unwrap_or_default();
    Some(Entry::new(
        at,
        "bad",
        format!(
            "<b>{}</b>: <span class=reason>{why}</span>{other}",
            esc(&job.status)
        ),
    ))
}

/// The operator actions of the lead's audit (`LEAD_AUDIT`) that asked for
/// this job, saying when one changed nothing.
fn operator_actions(job: &Job, audit: &[tokio_postgres::Row]) -> Vec<Entry> {
    audit
        .iter()
        .filter(|a| a.get::<_, Vec<i64>>("job_ids").contains(&job.id))
        .map(|a| {
            let changed: Vec<i64> = a.get("changed_job_ids");
            let reason: Option<String> = a.get("reason");
            let session: Option<i64> = a.get("session_id");
            let text = format!(
                "operator action <b>{}</b> by {}{}{}{}",
                esc(a.get::<_, &str>("action")),
                esc(a.get::<_, &str>("actor")),
                session
                    .map(|s| format!(" (session {s})"))
                    .unwrap_or_default(),
                reason
                    .map(|r| format!(": “{}”", esc(&r)))
                    .unwrap_or_default(),
                if changed.contains(&job.id) {
                    ""
                } else {
                    " — nothing changed, the message had moved on"
                }
            );
            Entry::new(a.get("at"), "muted", text)
        })
        .collect()
}
