//! What `reconcile` and `backfill` write: a message found at the provider
//! recorded as a job of leadrelay's own (`sent` at the provider's time,
//! `reconciled_at` set, mirrored onto `landing_leads` as any sent message
//! is), and the jobs of messages not found, created as `backfill` has
//! always created them (due now, the delivery policies applying at the
//! claim). Each statement writes its `ops_audit` row itself.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::domain::{Channel, DeliveryState};
use crate::store::operator::Actor;

/// Records the message $4 (campaign $5, delivery state $6) sent at $3 as
/// lead $1's job of channel $2 under its first enabled rule of that channel,
/// unless the lead has a job of the channel or another job holds the id;
/// mirrors it onto the lead, syncs the dashboard row again, and audits it
/// ($7 actor, $8 session, $9 address, $10 reason, $11 action). Returns the
/// job id (null when nothing was written) and the resyncs notified.
pub const RECORD_FOUND: &str = "
with lead as (
  select l.id, l.email, l.phone, l.source from public.landing_leads l
   where l.id = $1 for no key update
), rule as (
  select r.id, r.channel, r.template from public.notification_rules r
    join lead l on l.source like r.source_pattern
   where r.enabled and r.channel = $2
   order by r.id limit 1
), inserted as (
  insert into public.notification_jobs
    (lead_id, channel, template, rule_id, recipient, status, due_at, sent_at, finished_at,
     provider_message_id, provider_campaign_id, delivery_status, delivery_status_at, reconciled_at)
  select l.id, r.channel, r.template, r.id, leadrelay.recipient(r.channel, l.email, l.phone),
         'sent', $3::timestamptz, $3, now(), $4, $5, $6::text, case when $6 is not null then $3 end, now()
  from lead l cross join rule r
  where not exists (select 1 from public.notification_jobs j where j.lead_id = l.id and j.channel = r.channel)
    and not exists (select 1 from public.notification_jobs j where j.provider_message_id = $4 and j.channel = r.channel)
  on conflict on constraint notification_jobs_lead_channel_template_key do nothing
  returning id, lead_id, channel
), mirror as (
  update public.landing_leads l
     set email_sent = case when i.channel = 'email' then true else l.email_sent end,
         email_sent_at = case when i.channel = 'email' then $3 else l.email_sent_at end,
         email_delivery_status = case when i.channel = 'email' then coalesce($6, l.email_delivery_status)
                                      else l.email_delivery_status end,
         sms_sent = case when i.channel = 'sms' then true else l.sms_sent end,
         sms_sent_at = case when i.channel = 'sms' then $3 else l.sms_sent_at end,
         sms_delivery_status = case when i.channel = 'sms' then coalesce($6, l.sms_delivery_status)
                                    else l.sms_delivery_status end
    from inserted i
   where l.id = i.lead_id
  returning l.id
), resync as (
  -- the dashboard row shows the sent flags: sync it again, as a send does
  update public.notification_jobs t
     set status = 'due', due_at = now(), attempts = 0, finished_at = null,
         locked_by = null, locked_until = null, updated_at = now()
    from inserted i
   where t.lead_id = i.lead_id and t.channel = 'lead_tracking'
     and t.status in ('sent', 'failed', 'sending')
  returning t.id
), audit as (
  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  select $8, $7, $11, array[i.id], array[i.id], array[i.lead_id], left($10, 500), $9
    from inserted i
  returning id
)
select (select id from inserted), (select count(pg_notify('notification_jobs', r.id::text)) from resync r),
       (select count(*) from audit), (select count(*) from mirror)";

/// Events that came for the id before its job existed (a webhook of the
/// old system's email, say) apply now.
pub const APPLY_PENDING: &str = "select public.apply_pending_notification_events($1, $2)";

/// Creates the jobs the rules ask for, due now, for each lead $1[i] and
/// channel $2[i] it has no job of: the checks are the trigger's own, so an
/// unusable address gives an `invalid` job with its reason, never a failed
/// statement.
///
/// The delivery policies apply as to any job: one whose rule has a send
/// window is `scheduled`, so the promotion holds it until the window opens
/// (a backfill at night goes in the morning), and the claim's gate cancels
/// a lead already served under another id. $3 (`--ignore-policies`): none
/// of that. Audited once ($4 actor, $5 session, $6 address, $7 reason, $8
/// action). Returns the jobs due or scheduled, the invalid ones, the
/// notifications sent and the new ids.
pub const ENQUEUE: &str = "
with wanted as (
  select distinct w.lead_id, w.channel from unnest($1::uuid[], $2::text[]) as w(lead_id, channel)
), planned as (
  select l.id as lead_id, r.id as rule_id, r.channel, r.template,
         r.send_window_start is not null or r.send_days is not null as has_window,
         case r.channel
           when 'email' then public.leadrelay_email_problem(l.email)
           when 'sms' then public.leadrelay_phone_problem(l.phone)
         end as problem,
         l.email, l.phone
  from wanted w
  join public.landing_leads l on l.id = w.lead_id
  join public.notification_rules r on r.enabled and l.source like r.source_pattern and r.channel = w.channel
  where not exists (select 1 from public.notification_jobs j where j.lead_id = l.id and j.channel = r.channel)
), inserted as (
  insert into public.notification_jobs
    (lead_id, channel, template, rule_id, ignore_policies, recipient, status, due_at, last_error, finished_at)
  select p.lead_id, p.channel, p.template, p.rule_id, $3,
         leadrelay.recipient(p.channel, p.email, p.phone),
         case when p.problem is not null then 'invalid'
              when p.has_window and not $3 then 'scheduled'
              else 'due' end,
         now(), p.problem,
         case when p.problem is not null then now() end
  from planned p
  on conflict on constraint notification_jobs_lead_channel_template_key do nothing
  returning id, lead_id, status
), audit as (
  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  select $5, $4, $8, array_agg(i.id), array_agg(i.id), array_agg(distinct i.lead_id), left($7, 500), $6
    from inserted i
  having count(*) > 0
  returning id
)
select count(*) filter (where status in ('due', 'scheduled')),
       count(*) filter (where status = 'invalid'),
       (select count(pg_notify('notification_jobs', i.id::text)) from inserted i where i.status = 'due'),
       coalesce(array_agg(id), '{}'::bigint[]),
       (select count(*) from audit)
from inserted";

/// A message found at the provider, as it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub provider_id: String,
    pub campaign_id: Option<String>,
    /// When the provider says it was made.
    pub at: DateTime<Utc>,
    pub state: Option<DeliveryState>,
    /// Its subject or the start of its text, for the report.
    pub label: String,
}

/// The audit's words and who acts.
pub struct Audit<'a> {
    pub actor: &'a Actor,
    /// `reconcile` or `backfill`.
    pub action: &'a str,
}

/// Records `found` for `lead`'s `channel`; the job's id, or None when the
/// lead got a job of the channel meanwhile (or another job holds the id).
pub async fn record_found(
    client: &mut Client,
    lead: Uuid,
    channel: Channel,
    found: &Found,
    audit: &Audit<'_>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let provider = match channel {
        Channel::Email => "resend",
        _ => "mobizon",
    };
    let reason = format!(
        "found at {provider} by {}: message {} of {}, recorded as sent, not sent again",
        audit.action,
        found.provider_id,
        found.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let transaction = client.transaction().await?;
    let row = transaction
        .query_one(
            RECORD_FOUND,
            &[
                &lead,
                &channel.as_str(),
                &found.at,
                &found.provider_id,
                &found.campaign_id,
                &found.state.map(DeliveryState::as_str),
                &audit.actor.name,
                &audit.actor.session_id,
                &audit.actor.client_addr,
                &reason,
                &audit.action,
            ],
        )
        .await?;
    let id: Option<i64> = row.get(0);
    if id.is_some() {
        transaction
            .execute(APPLY_PENDING, &[&provider, &found.provider_id])
            .await?;
    }
    transaction.commit().await?;
    Ok(id)
}

/// What creating jobs did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub due: i64,
    pub invalid: i64,
    pub ids: Vec<i64>,
}

/// Creates the jobs of the pairs (lead, channel), 500 pairs a statement.
pub async fn enqueue(
    client: &Client,
    pairs: &[(Uuid, Channel)],
    ignore_policies: bool,
    audit: &Audit<'_>,
    reason: &str,
    progress: &indicatif::ProgressBar,
) -> Result<Enqueued, tokio_postgres::Error> {
    let statement = client.prepare(ENQUEUE).await?;
    let mut done = Enqueued::default();
    for chunk in pairs.chunks(500) {
        let leads: Vec<Uuid> = chunk.iter().map(|(l, _)| *l).collect();
        let channels: Vec<&str> = chunk.iter().map(|(_, c)| c.as_str()).collect();
        let row = client
            .query_one(
                &statement,
                &[
                    &leads,
                    &channels,
                    &ignore_policies,
                    &audit.actor.name,
                    &audit.actor.session_id,
                    &audit.actor.client_addr,
                    &reason,
                    &audit.action,
                ],
            )
            .await?;
        done.due += row.get::<_, i64>(0);
        done.invalid += row.get::<_, i64>(1);
        done.ids.extend(row.get::<_, Vec<i64>>(3));
        progress.inc(chunk.len() as u64);
    }
    Ok(done)
}

pub fn statements() -> [&'static str; 3] {
    [RECORD_FOUND, APPLY_PENDING, ENQUEUE]
}
