//! Operator commands: `status`, `retry`, `cancel` (`backfill` and
//! `reconcile` are in `cli::reconcile`). Each prints
//! what it is about to do and asks before changing anything (unless
//! `--yes`), and `--dry-run` changes nothing at all. `retry` and `cancel`
//! run the console's own statements (`store::operator`), audited as
//! `cli:<user>`.

use std::io::{BufRead, IsTerminal, Write};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::messages::mask;
use crate::store::describe;
use crate::store::operator::{self, Action, Actor};
use crate::store::search::LeadQuery;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(
        "{name} {value:?} is not a time: use 2026-11-24, \"2026-11-24 12:30\" (UTC) or 2026-11-24T12:30:00+05:00"
    )]
    Time { name: &'static str, value: String },
    #[error("--until must be after --since")]
    EmptyWindow,
    #[error("database error: {0}")]
    Db(String),
    #[error("not confirmed: nothing was changed (answer y, or pass --yes when not at a terminal)")]
    NotConfirmed,
    #[error("no lead matches {0:?} (search by lead id, email, phone or a name fragment)")]
    NoLead(String),
    #[error("{0}")]
    Input(String),
}

impl From<crate::reconcile::ReconcileError> for OpsError {
    fn from(e: crate::reconcile::ReconcileError) -> Self {
        match e {
            crate::reconcile::ReconcileError::Db(text) => OpsError::Db(text),
        }
    }
}

impl From<tokio_postgres::Error> for OpsError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpsError::Db(describe(&e))
    }
}

/// Parses an operator's time: RFC 3339, a date (midnight UTC) or a date and
/// time without zone (UTC).
pub fn parse_time(name: &'static str, value: &str) -> Result<DateTime<Utc>, OpsError> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(OpsError::Time {
        name,
        value: value.chars().take(60).collect(),
    })
}

/// Asks on the terminal; refuses when there is none to ask.
/// After listing the first ten of `n` jobs: whether to change them (none,
/// or a dry run: no; otherwise the operator confirms `question`, in which
/// `{}` stands for the count).
pub(super) fn go_ahead(
    n: usize,
    dry_run: bool,
    yes: bool,
    question: &str,
) -> Result<bool, OpsError> {
    if n > 10 {
        println!("  … and {} more", n - 10);
    }
    if n == 0 {
        return Ok(false);
    }
    if dry_run {
        println!("dry run: nothing was changed");
        return Ok(false);
    }
    confirm(&question.replace("{}", &n.to_string()), yes)?;
    Ok(true)
}

pub(super) fn confirm(question: &str, yes: bool) -> Result<(), OpsError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(OpsError::NotConfirmed);
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(OpsError::NotConfirmed)
    }
}

// ---------------------------------------------------------------- status

pub const LEAD_JOBS: &str = "
select id, channel, status, attempts, max_attempts, due_at, sent_at, delivery_status, last_error,
       recovered_at is not null, outcome_unknown_since is not null and status <> 'sent', template_version,
       leadrelay.held_until(status, held_until, due_at) is not null, hold_reason, cancelled_by,
       reconciled_at is not null
from public.notification_jobs where lead_id = $1 order by channel";

/// The leads a lead id, an email, a phone or a name fragment names (newest
/// first), as rows of the console's search (id, name, email, phone, source,
/// created_at first).
pub async fn find_leads(
    client: &Client,
    query: &str,
) -> Result<Vec<tokio_postgres::Row>, OpsError> {
    let parsed = LeadQuery::parse(query).map_err(|e| OpsError::Input(e.to_string()))?;
    let (statement, value) = parsed.statement();
    let leads = client.query(statement, &[&value]).await?;
    if leads.is_empty() {
        return Err(OpsError::NoLead(query.chars().take(80).collect()));
    }
    Ok(leads)
}

/// One job of `leadrelay status` (`LEAD_JOBS`), with what the look-up and
/// the delivery policies decided.
fn job_line(job: &tokio_postgres::Row) -> String {
    let fmt_time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let error: Option<String> = job.get(8);
    // what an SMS look-up decided, and the template version used
    let mut notes = Vec::new();
    if job.get::<_, bool>(9) {
        notes.push("found at Mobizon by a look-up, not sent again".to_string());
    }
    if job.get::<_, bool>(15) {
        notes.push("found at the provider by reconciliation, not sent by leadrelay".to_string());
    }
    if job.get::<_, bool>(10) {
        notes.push("in doubt: looked up at Mobizon before any resend".to_string());
    }
    if let Some(version) = job.get::<_, Option<i32>>(11) {
        notes.push(format!("template v{version}"));
    }
    // the delivery policies: a window's hold, a cancellation
    if let Some(hold) = job.get::<_, Option<String>>(13) {
        if job.get::<_, bool>(12) {
            notes.push(format!("held by the send window: {hold}"));
        } else {
            notes.push(format!("was held: {hold}"));
        }
    }
    match job.get::<_, Option<String>>(14).as_deref() {
        Some("suppressed") => notes
            .push("cancelled: the recipient is on the suppression list, no request made".into()),
        Some(policy) => notes.push(format!("cancelled by policy {policy}, no request made")),
        None => {}
    }
    let error = match (error, notes.is_empty()) {
        (error, true) => error,
        (Some(e), false) => Some(format!("{e} [{}]", notes.join("; "))),
        (None, false) => Some(format!("[{}]", notes.join("; "))),
    };
    format!(
        "  {:<8} {:<14} {:<10} {:<9} {:<17} {:<17} {:<17} {}\n",
        job.get::<_, i64>(0),
        job.get::<_, String>(1),
        job.get::<_, String>(2),
        format!("{}/{}", job.get::<_, i32>(3), job.get::<_, i32>(4)),
        fmt_time(Some(job.get(5))),
        fmt_time(job.get(6)),
        job.get::<_, Option<String>>(7)
            .unwrap_or_else(|| "-".into()),
        error
            .map(|e| e.chars().take(400).collect::<String>())
            .unwrap_or_default(),
    )
}

pub async fn status(client: &Client, query: &str) -> Result<String, OpsError> {
    let leads = find_leads(client, query).await?;
    let mut out = String::new();
    for lead in &leads {
        let lead_id: Uuid = lead.get(0);
        let name: Option<String> = lead.get(1);
        let email: Option<String> = lead.get(2);
        let phone: Option<String> = lead.get(3);
        let source: Option<String> = lead.get(4);
        let created: DateTime<Utc> = lead.get(5);
        out.push_str(&format!(
            "lead {lead_id}  {}  created {}  source {}\n  email {}  phone {}\n",
            name.map(|n| n.chars().take(60).collect::<String>())
                .unwrap_or_else(|| "(no name)".into()),
            created.format("%Y-%m-%d %H:%M:%S UTC"),
            source.unwrap_or_else(|| "(none)".into()),
            email
                .map(|e| mask::email(&e))
                .unwrap_or_else(|| "(none)".into()),
            phone
                .map(|p| mask::phone(&p))
                .unwrap_or_else(|| "(none)".into()),
        ));
        out.push_str(&suppression_lines(client, lead_id).await?);
        let jobs = client.query(LEAD_JOBS, &[&lead_id]).await?;
        if jobs.is_empty() {
            out.push_str("  no messages: this lead arrived before leadrelay or matched no rule (see `leadrelay backfill`)\n\n");
            continue;
        }
        out.push_str(&format!(
            "  {:<8} {:<14} {:<10} {:<9} {:<17} {:<17} {:<17} {}\n",
            "job", "channel", "status", "attempts", "due", "sent", "delivery", "error"
        ));
        for job in &jobs {
            out.push_str(&job_line(job));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The lead's email and phone on the suppression list, one line each.
async fn suppression_lines(client: &Client, lead: Uuid) -> Result<String, OpsError> {
    let rows = client
        .query(crate::store::suppressions::OF_LEAD, &[&lead])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let since: DateTime<Utc> = r.get(2);
            let note: Option<String> = r.get(3);
            format!(
                "  suppressed {}: {} since {}{}\n",
                r.get::<_, &str>(0),
                r.get::<_, &str>(1),
                since.format("%Y-%m-%d %H:%M UTC"),
                note.map(|n| format!(" ({})", n.chars().take(80).collect::<String>()))
                    .unwrap_or_default()
            )
        })
        .collect())
}

// ---------------------------------------------------------------- retry

pub async fn retry(
    client: &Client,
    job: Option<i64>,
    failed_since: Option<DateTime<Utc>>,
    dry_run: bool,
    yes: bool,
) -> Result<i64, OpsError> {
    let rows = client
        .query(operator::RETRY_CANDIDATES, &[&job, &failed_since])
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    println!("{} failed or invalid job(s) to put back to due:", ids.len());
    for row in rows.iter().take(10) {
        let error: Option<String> = row.get(3);
        println!(
            "  job {}  lead {}  {}  {}",
            row.get::<_, i64>(0),
            row.get::<_, Uuid>(1),
            row.get::<_, String>(2),
            error
                .map(|e| e.chars().take(100).collect::<String>())
                .unwrap_or_default()
        );
    }
    if !go_ahead(ids.len(), dry_run, yes, "Retry {} job(s) now?")? {
        return Ok(0);
    }
    let action = if job.is_some() {
        Action::Retry
    } else {
        Action::BulkRetry
    };
    let done = operator::act(client, action, &ids, None, &Actor::cli()).await?;
    let n = done.changed.len() as i64;
    println!("{n} job(s) are due again, each to its lead's current email or phone");
    if (n as usize) < ids.len() {
        println!(
            "{} job(s) left as they were: their lead's email or phone is still unusable (see `leadrelay status`)",
            ids.len() - n as usize
        );
    }
    Ok(n)
}

/// `leadrelay cancel --rule ID`: the rule's jobs not tried yet are cancelled
/// (shown first; `--dry-run` changes nothing). Jobs in flight finish.
pub async fn cancel_rule(
    client: &Client,
    rule: i64,
    dry_run: bool,
    yes: bool,
) -> Result<u64, OpsError> {
    let rule_row = client
        .query_opt(
            "select source_pattern, channel, template, enabled from public.notification_rules where id = $1",
            &[&rule],
        )
        .await?;
    let Some(rule_row) = rule_row else {
        return Err(OpsError::Input(format!(
            "no notification rule has id {rule}"
        )));
    };
    let enabled: bool = rule_row.get(3);
    println!(
        "rule {rule}: {} → {} ({}){}",
        rule_row.get::<_, String>(0),
        rule_row.get::<_, String>(1),
        rule_row.get::<_, String>(2),
        if enabled {
            ", still enabled: new leads will get jobs again (update notification_rules set enabled = false where id = …)"
        } else {
            ", disabled"
        }
    );
    let rows = client.query(operator::CANCEL_CANDIDATES, &[&rule]).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    println!("{} job(s) not tried yet:", ids.len());
    for row in rows.iter().take(10) {
        println!(
            "  job {}  lead {}  {}  {}",
            row.get::<_, i64>(0),
            row.get::<_, Uuid>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }
    if !go_ahead(ids.len(), dry_run, yes, "Cancel {} job(s)?")? {
        return Ok(0);
    }
    let reason = format!("`leadrelay cancel --rule {rule}`");
    let done = operator::act(
        client,
        Action::CancelRule,
        &ids,
        Some(&reason),
        &Actor::cli(),
    )
    .await?;
    let n = done.changed.len() as u64;
    println!("{n} job(s) cancelled (ops_audit id {})", done.audit_id);
    let in_doubt = client
        .query(operator::IN_DOUBT_BATCH_MEMBERS, &[&ids])
        .await?;
    if !in_doubt.is_empty() {
        println!(
            "{} job(s) left: each went to Resend in an email batch whose outcome is unknown (it may already have been delivered); cancelling part of a batch would change what Resend holds under its key, so they go again only with their whole batch: {}",
            in_doubt.len(),
            in_doubt
                .iter()
                .map(|r| r.get::<_, i64>(0).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(n)
}

/// The statements of these commands, for the prepare test (`crate::statements`).
pub fn statements() -> [&'static str; 1] {
    [LEAD_JOBS]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_times_parse_in_the_documented_forms() {
        assert_eq!(
            parse_time("--since", "2026-11-24").unwrap().to_rfc3339(),
            "2026-11-24T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("--since", "2026-11-24 12:30")
                .unwrap()
                .to_rfc3339(),
            "2026-11-24T12:30:00+00:00"
        );
        assert_eq!(
            parse_time("--since", "2026-11-24T12:30:00+05:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-24T07:30:00+00:00"
        );
        for bad in [
            "yesterday",
            "",
            "2026-13-01",
            "12:30",
            "2026-11-24; drop table x",
        ] {
            let err = parse_time("--since", bad).unwrap_err().to_string();
            assert!(err.starts_with("--since"), "{err}");
        }
    }
}
