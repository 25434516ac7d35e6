//! Forgetting a person: what has not gone is cancelled, and the person's
//! email, phone, name and metadata are erased from every table of
//! leadrelay's (jobs and their fixed values and errors, delivery events'
//! payloads, the audit's free text, the suppressions' readable recipient),
//! from `landing_leads` when asked, and from the dashboard's `lead_tracking`
//! row. Counts and states stay: a job keeps its channel, template, status,
//! times, attempts and delivery state, so every statistic reads the same.
//! A suppression keeps its hash, so a new lead with the same address is
//! still not emailed until an operator lifts it.
//!
//! Each statement takes the leads `$1` (uuid[]); they run in one
//! transaction with the audit row, which names no data.

use tokio_postgres::Client;
use uuid::Uuid;

use super::operator::Actor;

/// What an erased text reads.
const ERASED: &str = "erased: the person asked to be forgotten";

/// Jobs not sent yet (and not in flight) end `cancelled`.
pub const CANCEL_UNSENT: &str = "
update public.notification_jobs
   set status = 'cancelled', finished_at = now(), last_error = 'cancelled: the person asked to be forgotten',
       locked_by = null, locked_until = null, updated_at = now()
 where lead_id = any($1) and status in ('scheduled', 'due')
returning id";

/// The jobs' recipients, fixed values and error texts; each failed
/// attempt keeps its number and time.
pub const ERASE_JOBS: &str = "
update public.notification_jobs j
   set recipient = null, sent_params = null,
       last_error = case when j.last_error is not null then $2 end,
       sent_unconfirmed = case when j.sent_unconfirmed is not null then $2 end,
       hold_reason = case when j.hold_reason is not null then $2 end,
       errors = coalesce((select jsonb_agg(case jsonb_typeof(e)
                                             when 'object' then (e - 'error') || jsonb_build_object('error', $2::text)
                                             else jsonb_build_object('error', $2::text) end)
                            from jsonb_array_elements(case jsonb_typeof(j.errors) when 'array' then j.errors
                                                           else '[]'::jsonb end) e), '[]'::jsonb),
       updated_at = now()
 where j.lead_id = any($1)
returning j.id";

/// The delivery events of those jobs (and any waiting for their ids).
pub const ERASE_EVENTS: &str = "
update public.notification_events e
   set payload = jsonb_build_object('erased', true)
 where e.job_id in (select j.id from public.notification_jobs j where j.lead_id = any($1))
    or (e.job_id is null and e.provider_message_id in (
          select j.provider_message_id from public.notification_jobs j
           where j.lead_id = any($1) and j.provider_message_id is not null))";

/// The suppressions of the leads' addresses and phones keep their hash.
pub const ERASE_SUPPRESSIONS: &str = "
update public.notification_suppressions s
   set recipient = null, note = null, lift_reason = case when s.lift_reason is not null then $2 end
 where s.lead_id = any($1)
    or s.recipient_hash in (
         select leadrelay.recipient_hash('email', leadrelay.recipient('email', l.email, null))
           from public.landing_leads l where l.id = any($1)
         union all
         select leadrelay.recipient_hash('sms', leadrelay.recipient('sms', null, l.phone))
           from public.landing_leads l where l.id = any($1))";

/// The audit's free text about the leads.
pub const ERASE_AUDIT: &str = "
update public.ops_audit set reason = $2
 where lead_ids && $1 and reason is not null";

/// The mirror columns leadrelay writes on the leads: an error may quote
/// the address (a bounce's message).
pub const ERASE_LEAD_ERRORS: &str = "
update public.landing_leads
   set email_error = case when email_error is not null then $2 end,
       sms_error = case when sms_error is not null then $2 end
 where id = any($1) and (email_error is not null or sms_error is not null)";

/// The lead rows themselves (`--lead-row`): contacts, name and metadata.
pub const ERASE_LEAD_ROWS: &str = "
update public.landing_leads
   set name = null, email = null, phone = null, metadata = null
 where id = any($1)";

/// The audit row: who forgot how many leads, and when; no data.
pub const AUDIT: &str = "
insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
values ($2, $3, 'forget', $4, $4, $1, 'a person was forgotten', $5)
returning id";

/// The dashboard row's contacts, kept linked to its lead (so a later sync
/// updates its flags instead of writing the contacts again).
pub const ERASE_TRACKING: &str = "
update public.lead_tracking
   set full_name = null, email = null, phone = null,
       metadata = jsonb_build_object('landing_lead_id', metadata ->> 'landing_lead_id')
 where metadata ->> 'landing_lead_id' = any($1)";

/// What forgetting did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub cancelled: u64,
    pub jobs: u64,
    pub events: u64,
    pub suppressions: u64,
    pub audit_rows: u64,
    pub lead_rows: u64,
    pub audit_id: i64,
}

/// Forgets `leads` in one transaction.
pub async fn forget(
    client: &mut Client,
    leads: &[Uuid],
    lead_rows: bool,
    actor: &Actor,
) -> Result<Forgotten, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let cancelled = transaction.query(CANCEL_UNSENT, &[&leads]).await?.len() as u64;
    let jobs: Vec<i64> = transaction
        .query(ERASE_JOBS, &[&leads, &ERASED])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let events = transaction.execute(ERASE_EVENTS, &[&leads]).await?;
    let suppressions = transaction
        .execute(ERASE_SUPPRESSIONS, &[&leads, &ERASED])
        .await?;
    let audit_rows = transaction.execute(ERASE_AUDIT, &[&leads, &ERASED]).await?;
    transaction
        .execute(ERASE_LEAD_ERRORS, &[&leads, &ERASED])
        .await?;
    let lead_rows = if lead_rows {
        transaction.execute(ERASE_LEAD_ROWS, &[&leads]).await?
    } else {
        0
    };
    let audit_id: i64 = transaction
        .query_one(
            AUDIT,
            &[
                &leads,
                &actor.session_id,
                &actor.name,
                &jobs,
                &actor.client_addr,
            ],
        )
        .await?
        .get(0);
    transaction.commit().await?;
    Ok(Forgotten {
        cancelled,
        jobs: jobs.len() as u64,
        events,
        suppressions,
        audit_rows,
        lead_rows,
        audit_id,
    })
}

/// Erases the dashboard rows of `leads` in `client`'s database (the
/// service's own, or LEAD_TRACKING_DATABASE_URL's); how many.
pub async fn erase_tracking(client: &Client, leads: &[Uuid]) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<String> = leads.iter().map(Uuid::to_string).collect();
    client.execute(ERASE_TRACKING, &[&ids]).await
}

pub fn statements() -> [&'static str; 9] {
    [
        ERASE_LEAD_ERRORS,
        CANCEL_UNSENT,
        ERASE_JOBS,
        ERASE_EVENTS,
        ERASE_SUPPRESSIONS,
        ERASE_AUDIT,
        ERASE_LEAD_ROWS,
        AUDIT,
        ERASE_TRACKING,
    ]
}
