//! Operator commands: `backfill`, `status`, `retry`, `cancel`. Each prints
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
fn go_ahead(n: usize, dry_run: bool, yes: bool, question: &str) -> Result<bool, OpsError> {
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

fn confirm(question: &str, yes: bool) -> Result<(), OpsError> {
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

// ---------------------------------------------------------------- backfill

/// Leads in [$1, $2) whose source matches $3 and that have no job at all.
pub const BACKFILL_CANDIDATES: &str = "
select l.id, l.source, l.created_at
from public.landing_leads l
where l.created_at >= $1 and l.created_at < $2 and l.source like $3
  and not exists (select 1 from public.notification_jobs j where j.lead_id = l.id)
  and exists (select 1 from public.notification_rules r where r.enabled and l.source like r.source_pattern)
order by l.created_at, l.id";

/// Creates the jobs the rules ask for, due now, for the leads $1 that still
/// have none: the checks are the trigger's own, so an unusable address gives
/// an `invalid` job with its reason, never a failed statement.
///
/// The delivery policies apply as to any job: one whose rule has a send
/// window is `scheduled`, so the promotion holds it until the window opens
/// (a backfill at night goes in the morning), and the claim's gate cancels
/// a lead already served under another id. $2 (`--ignore-policies`): none
/// of that.
pub const BACKFILL_INSERT: &str = "
with leads as (
  select l.* from public.landing_leads l
  where l.id = any($1)
    and not exists (select 1 from public.notification_jobs j where j.lead_id = l.id)
), planned as (
  select l.id as lead_id, r.id as rule_id, r.channel, r.template, r.send_window_start is not null as has_window,
         case r.channel
           when 'email' then public.leadrelay_email_problem(l.email)
           when 'sms' then public.leadrelay_phone_problem(l.phone)
         end as problem,
         l.email, l.phone
  from leads l
  join public.notification_rules r on r.enabled and l.source like r.source_pattern
), inserted as (
  insert into public.notification_jobs
    (lead_id, channel, template, rule_id, ignore_policies, recipient, status, due_at, last_error, finished_at)
  select p.lead_id, p.channel, p.template, p.rule_id, $2,
         leadrelay.recipient(p.channel, p.email, p.phone),
         case when p.problem is not null then 'invalid'
              when p.has_window and not $2 then 'scheduled'
              else 'due' end,
         now(), p.problem,
         case when p.problem is not null then now() end
  from planned p
  on conflict on constraint notification_jobs_lead_channel_template_key do nothing
  returning id, status
)
select count(*) filter (where status in ('due', 'scheduled')),
       count(*) filter (where status = 'invalid'),
       (select count(pg_notify('notification_jobs', i.id::text)) from inserted i where i.status = 'due')
from inserted";

#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub source_pattern: String,
    pub dry_run: bool,
    pub yes: bool,
    /// Send at once, whatever the rules' windows, de-duplication and caps say.
    pub ignore_policies: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub leads: usize,
    pub due: i64,
    pub invalid: i64,
}

/// The leads a backfill found: how many, and the first ten.
fn print_candidates(request: &BackfillRequest, rows: &[tokio_postgres::Row]) {
    println!(
        "{} lead(s) from {} to {} with source like {:?} have no messages yet.",
        rows.len(),
        request.since.format("%Y-%m-%d %H:%M:%S UTC"),
        request.until.format("%Y-%m-%d %H:%M:%S UTC"),
        request.source_pattern
    );
    for row in rows.iter().take(10) {
        let id: Uuid = row.get(0);
        let source: Option<String> = row.get(1);
        let created: DateTime<Utc> = row.get(2);
        println!(
            "  {id}  {}  {}",
            created.format("%Y-%m-%d %H:%M"),
            source.unwrap_or_default()
        );
    }
    if rows.len() > 10 {
        println!("  … and {} more", rows.len() - 10);
    }
}

/// Creates the jobs of leads `ids`, 500 a statement, with a progress bar on
/// long lists.
async fn enqueue(
    client: &Client,
    ids: &[Uuid],
    ignore_policies: bool,
) -> Result<BackfillReport, OpsError> {
    let progress = indicatif::ProgressBar::new(ids.len() as u64);
    if ids.len() < 200 {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut report = BackfillReport {
        leads: ids.len(),
        ..Default::default()
    };
    let statement = client.prepare(BACKFILL_INSERT).await?;
    for chunk in ids.chunks(500) {
        let row = client
            .query_one(&statement, &[&chunk, &ignore_policies])
            .await?;
        report.due += row.get::<_, i64>(0);
        report.invalid += row.get::<_, i64>(1);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(report)
}

pub async fn backfill(
    client: &mut Client,
    request: &BackfillRequest,
) -> Result<BackfillReport, OpsError> {
    if request.until <= request.since {
        return Err(OpsError::EmptyWindow);
    }
    let rows = client
        .query(
            BACKFILL_CANDIDATES,
            &[&request.since, &request.until, &request.source_pattern],
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    print_candidates(request, &rows);
    if ids.is_empty() {
        return Ok(BackfillReport::default());
    }
    if request.dry_run {
        println!("dry run: nothing was changed");
        return Ok(BackfillReport {
            leads: ids.len(),
            ..Default::default()
        });
    }
    let question = if request.ignore_policies {
        format!(
            "Send their messages now, ignoring send windows, de-duplication and caps ({} lead(s))?",
            ids.len()
        )
    } else {
        format!(
            "Send their messages ({} lead(s)), within their rules' send windows and policies?",
            ids.len()
        )
    };
    confirm(&question, request.yes)?;
    let report = enqueue(client, &ids, request.ignore_policies).await?;
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
    Ok(report)
}

// ---------------------------------------------------------------- status

pub const LEAD_JOBS: &str = "
select id, channel, status, attempts, max_attempts, due_at, sent_at, delivery_status, last_error,
       recovered_at is not null, outcome_unknown_since is not null and status <> 'sent', template_version,
       leadrelay.held_until(status, held_until, due_at) is not null, hold_reason, cancelled_by
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
    if let Some(policy) = job.get::<_, Option<String>>(14) {
        notes.push(format!("cancelled by policy {policy}, no request made"));
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
pub fn statements() -> [&'static str; 3] {
    [BACKFILL_CANDIDATES, BACKFILL_INSERT, LEAD_JOBS]
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
