//! Operator commands: `backfill`, `status`, `retry`. Each prints what it is
//! about to do and asks before changing anything (unless `--yes`), and
//! `--dry-run` changes nothing at all.

use std::io::{BufRead, IsTerminal, Write};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::messages::mask;
use crate::store::describe;

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
    #[error("no lead matches {0:?} (search by lead id, email or phone)")]
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
         case
           when p.problem is not null then null
           when p.channel = 'email' then btrim(p.email)
           when p.channel = 'sms' then public.leadrelay_phone_digits(p.phone)
         end,
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
    println!(
        "{} lead(s) from {} to {} with source like {:?} have no messages yet.",
        ids.len(),
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
    if ids.len() > 10 {
        println!("  … and {} more", ids.len() - 10);
    }
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
            .query_one(&statement, &[&chunk, &request.ignore_policies])
            .await?;
        report.due += row.get::<_, i64>(0);
        report.invalid += row.get::<_, i64>(1);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
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

/// Leads found by id, email (case-insensitive) or phone (digits, 8 → 7, as
/// the trigger normalises them).
pub const FIND_LEADS: &str = "
select id, name, email, phone, source, created_at from public.landing_leads
where ($1::uuid is not null and id = $1)
   or ($2::text is not null and lower(btrim(email)) = lower(btrim($2)))
   or ($3::text is not null and public.leadrelay_phone_digits(phone) = public.leadrelay_phone_digits($3))
order by created_at desc
limit 20";

pub const LEAD_JOBS: &str = "
select id, channel, status, attempts, max_attempts, due_at, sent_at, delivery_status, last_error,
       recovered_at is not null, outcome_unknown_since is not null and status <> 'sent', template_version,
       status = 'scheduled' and held_until = due_at, hold_reason, cancelled_by
from public.notification_jobs where lead_id = $1 order by channel";

/// The leads a lead id, an email or a phone names (newest first), as rows
/// of `FIND_LEADS`.
pub async fn find_leads(
    client: &Client,
    query: &str,
) -> Result<Vec<tokio_postgres::Row>, OpsError> {
    let query = query.trim();
    if query.is_empty() || query.len() > 320 {
        return Err(OpsError::Input(
            "give a lead id, an email or a phone".into(),
        ));
    }
    let id = Uuid::parse_str(query).ok();
    let email = (id.is_none() && query.contains('@')).then(|| query.to_string());
    // the trigger's own normaliser, in SQL: the same digits as stored jobs
    let phone = (id.is_none() && email.is_none()).then(|| query.to_string());
    if phone.is_some() && query.chars().filter(char::is_ascii_digit).count() != 11 {
        return Err(OpsError::Input(format!(
            "{query:?} is not a lead id, an email or an 11-digit phone"
        )));
    }
    let leads = client.query(FIND_LEADS, &[&id, &email, &phone]).await?;
    if leads.is_empty() {
        return Err(OpsError::NoLead(query.chars().take(80).collect()));
    }
    Ok(leads)
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
            out.push_str(&format!(
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
            ));
        }
        out.push('\n');
    }
    Ok(out)
}

// ---------------------------------------------------------------- retry

/// Failed jobs to put back: one by id ($1), or all failed since $2.
pub const RETRY_CANDIDATES: &str = "
select j.id, j.lead_id, j.channel, j.last_error
from public.notification_jobs j
where j.status in ('failed', 'invalid') and j.channel in ('email', 'sms', 'lead_tracking')
  and (($1::bigint is not null and j.id = $1) or ($2::timestamptz is not null and j.finished_at >= $2))
order by j.id";

/// Puts failed or invalid jobs $1 back to due with fresh attempts; their
/// error history stays. The recipient is derived again from the lead, so a
/// contact corrected in `landing_leads` is the one used; a job whose lead's
/// contact is still unusable stays as it is. An email whose recipient
/// changed gets a key of its own: Resend would answer the old key's first
/// email (or a 409) to a different body. A job that failed because its
/// template could not render (no request was made) takes the current
/// template and values at its next claim, so "fix the template, then retry"
/// sends the fixed one.
pub const RETRY_UPDATE: &str = "
with fresh as (
  select j.id,
         case j.channel
           when 'email' then case when public.leadrelay_email_problem(l.email) is null
                                  then public.leadrelay_trim(l.email) end
           when 'sms' then case when public.leadrelay_phone_problem(l.phone) is null
                                then public.leadrelay_phone_digits(l.phone) end
           else j.recipient
         end as recipient,
         j.provider_message_id is null
           and (j.last_error like 'template % version %' or j.last_error like 'template % has no %'
                or j.last_error like 'no template %')
           as template_failed
  from public.notification_jobs j
  join public.landing_leads l on l.id = j.lead_id
  where j.id = any($1) and j.status in ('failed', 'invalid')
), retried as (
  update public.notification_jobs j
     set status = 'due', due_at = now(), attempts = 0, finished_at = null, updated_at = now(),
         idempotency_key = case
           when j.channel = 'email' and j.recipient is distinct from f.recipient
             then 'leadrelay-' || j.lead_id || '-' || j.template || '-' || left(md5(f.recipient), 8)
           else j.idempotency_key end,
         recipient = f.recipient,
         template_version = case when f.template_failed then null else j.template_version end,
         sent_params = case when f.template_failed then null else j.sent_params end,
         -- a retried job goes on its own: the rest of its batch is finished
         batch_key = null
    from fresh f
   where j.id = f.id and (f.recipient is not null or j.channel = 'lead_tracking')
  returning j.id
)
select count(pg_notify('notification_jobs', id::text)) from retried";

pub async fn retry(
    client: &Client,
    job: Option<i64>,
    failed_since: Option<DateTime<Utc>>,
    dry_run: bool,
    yes: bool,
) -> Result<i64, OpsError> {
    let rows = client
        .query(RETRY_CANDIDATES, &[&job, &failed_since])
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
    let n: i64 = client.query_one(RETRY_UPDATE, &[&ids]).await?.get(0);
    println!("{n} job(s) are due again, each to its lead's current email or phone");
    if (n as usize) < ids.len() {
        println!(
            "{} job(s) left as they were: their lead's email or phone is still unusable (see `leadrelay status`)",
            ids.len() - n as usize
        );
    }
    Ok(n)
}

/// The jobs of rule $1 not tried yet (scheduled or due): those of its
/// leads (source LIKE its pattern) on its channel and template. Disabling a
/// rule stops new jobs; these are the ones it already made.
pub const CANCEL_CANDIDATES: &str = "
select j.id, j.lead_id, j.channel, j.status, j.due_at
from public.notification_rules r
join public.notification_jobs j on j.channel = r.channel and j.template = r.template
join public.landing_leads l on l.id = j.lead_id and l.source like r.source_pattern
where r.id = $1 and j.status in ('scheduled', 'due')
order by j.due_at, j.id";

/// Cancels jobs $1 (still not tried), saying why: rule $2.
pub const CANCEL_UPDATE: &str = "
update public.notification_jobs
   set status = 'cancelled', finished_at = now(), updated_at = now(),
       last_error = format('cancelled by an operator with `leadrelay cancel --rule %s`', $2::bigint)
 where id = any($1) and status in ('scheduled', 'due')";

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
    let rows = client.query(CANCEL_CANDIDATES, &[&rule]).await?;
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
    let n = client.execute(CANCEL_UPDATE, &[&ids, &rule]).await?;
    println!("{n} job(s) cancelled");
    Ok(n)
}

/// The statements of these commands, for the prepare test (`crate::statements`).
pub fn statements() -> [&'static str; 8] {
    [
        CANCEL_CANDIDATES,
        CANCEL_UPDATE,
        BACKFILL_CANDIDATES,
        BACKFILL_INSERT,
        FIND_LEADS,
        LEAD_JOBS,
        RETRY_CANDIDATES,
        RETRY_UPDATE,
    ]
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
