//! The job queue in PostgreSQL: every statement the worker runs, each one short
//! and committed on its own. No transaction or row lock is held while a
//! provider is called: a claim sets `sending` with a lease and commits; the
//! outcome is recorded by a second statement that also updates the mirror on
//! `landing_leads` (both in one statement, so they commit together).

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{describe, storable};
pub use crate::domain::Channel;
use crate::domain::FailureKind;

/// The end of both claims, after a data-modifying CTE `claimed` that updated
/// `j`: the columns `claimed_job` reads, in its order, up to the batch key.
/// Each claim adds `rest_of_batch_until` and its FROM.
macro_rules! claimed_rows {
    () => {
        "  returning j.status, j.id, j.lead_id, j.template, j.recipient, j.attempts, j.max_attempts,
            coalesce(j.errors -> -1 ->> 'error' = 'lease expired: outcome unknown', false) as previous_outcome_unknown,
            j.batch_key, j.idempotency_key, j.channel, j.sent_params, j.outcome_unknown_since,
            j.template_version, j.cancelled_by, j.last_error
)
select c.id, c.lead_id, c.template, c.recipient, c.attempts, c.max_attempts, c.previous_outcome_unknown,
       l.id is not null as lead_exists, l.name, l.email, l.phone,
       -- only the dashboard row uses the lead's metadata, which can be large
       case when c.channel = 'lead_tracking' then l.metadata end, l.created_at,
       coalesce(l.email_sent, false), l.email_sent_at, coalesce(l.sms_sent, false), l.sms_sent_at,
       c.batch_key, c.idempotency_key, c.sent_params, c.outcome_unknown_since, c.template_version,
       c.cancelled_by, case when c.cancelled_by is not null then c.last_error end,"
    };
}

/// The SET items that fix what a job's message is made of, at its first
/// claim that sends it (`$sending`: a job the gate holds for its window is
/// not fixed yet, so a template edited meanwhile still applies): the
/// template's version, the lead's fields and metadata, the rule's params,
/// and `$url` (the product link this worker uses by default). Both claims
/// use it, so a job claimed first in a batch is fixed the same way.
macro_rules! fixed_by_first_claim {
    ($sending:literal, $url:literal) => {
        concat!(
            "template_version = case when ",
            $sending,
            " then coalesce(j.template_version,
           (select t.version from public.notification_templates t
             where t.key = j.template and t.channel = j.channel)) else j.template_version end,
         sent_params = case when ",
            $sending,
            " then coalesce(j.sent_params, case when j.channel in ('email', 'sms') then ",
            message_values!("j.lead_id", "j.channel", "j.template", $url),
            " end) else j.sent_params end,"
        )
    };
}

/// What a claim does with a job the gate holds for its send window: back to
/// waiting for the opening, with the reason, and no attempt counted. The
/// promotion makes it due when the window opens. Expects `v` (the gate's
/// verdict, `v.verdict = 'window'`).
macro_rules! held_by_window {
    () => {
        "due_at = case when v.verdict = 'window' then v.held_until else j.due_at end,
         held_until = case when v.verdict = 'window' then v.held_until else j.held_until end,
         hold_reason = case when v.verdict = 'window' then v.reason else j.hold_reason end,"
    };
}

/// Claims up to $2 due jobs of channel $1 under lease token $3 for $4
/// seconds, oldest first, skipping jobs another worker holds. Returns them with
/// their lead. `previous_outcome_unknown`: the last attempt ended with an
/// expired lease, so it may have reached the provider.
///
/// $6: the product link a job's first claim fixes into `sent_params`.
///
/// $5 (or null): the batch key for the jobs of this claim that were never
/// tried, when there are two or more of them; stored before any request, so a
/// batch sent again after a crash is the same batch. Jobs already in a batch
/// are left to `CLAIM_BATCHES`.
///
/// The gate (`leadrelay_gate`) is applied here, before any request, whatever
/// made the job due: a job outside its rule's send window goes back to
/// `scheduled` until the opening (and is not returned); a job the
/// de-duplication or the per-recipient cap refuses is `cancelled` with the
/// reason in the same write, and returned with `cancelled_by` set; the
/// others pass (`cleared_at`).
pub const CLAIM: &str = concat!(
    "
with claimable as (
  select j.id, j.attempts = 0 and j.errors = '[]'::jsonb as fresh
  from public.notification_jobs j
  where j.channel = $1 and j.status = 'due' and j.batch_key is null
  order by j.due_at, j.id
  limit $2
  for update skip locked
), verdict as (
  -- the gate: the send window, then the delivery policies under a lock per
  -- recipient (see `leadrelay_gate`): the jobs to hold or cancel
  select v.job_id, v.verdict, v.duplicate_of, v.held_until, v.reason,
         v.verdict in ('duplicate', 'recipient_cap') as cancels
  from public.leadrelay_gate(array(select c.id from claimable c)) v
), policy_mirror as (
  -- the dashboard row says why its lead got nothing
  update public.landing_leads l
     set email_error = coalesce(m.email_reason, l.email_error),
         sms_error = coalesce(m.sms_reason, l.sms_error)
    from (select j.lead_id,
                 max(v.reason) filter (where j.channel = 'email') as email_reason,
                 max(v.reason) filter (where j.channel = 'sms') as sms_reason
            from verdict v join public.notification_jobs j on j.id = v.job_id
           where v.cancels
           group by j.lead_id) m
   where l.id = m.lead_id
), claimed as (
  update public.notification_jobs j
     set status = case when v.job_id is null then 'sending'
                       when v.cancels then 'cancelled' else 'scheduled' end,
         attempts = case when v.job_id is null then j.attempts + 1 else j.attempts end,
         locked_by = case when v.job_id is null then $3 end,
         locked_until = case when v.job_id is null then now() + make_interval(secs => $4) end,
         batch_key = case when v.job_id is null and c.fresh
                               and (select count(*) from claimable f
                                     where f.fresh and f.id not in (select job_id from verdict)) >= 2
                          then $5::text end,
         -- fixed by the first claim that sends it: the lead's uuid and the
         -- template are unique across databases; a job tried before keys
         -- were stored keeps the key it was tried under
         idempotency_key = case when j.channel = 'email' and v.job_id is null then coalesce(j.idempotency_key,
                             case when j.attempts > 0 then 'leadrelay-job-' || j.id
                                  else leadrelay.idempotency_key(j.lead_id, j.template, null) end)
                           else j.idempotency_key end,
",
    fixed_by_first_claim!("v.job_id is null", "$6"),
    held_by_window!(),
    "
         -- passed the gate: from now on it counts as sent or in flight
         cleared_at = case when v.job_id is null and j.channel in ('email', 'sms')
                           then coalesce(j.cleared_at, now()) else j.cleared_at end,
         cancelled_by = case when v.cancels then v.verdict end,
         duplicate_of_lead = case when v.cancels then v.duplicate_of end,
         last_error = case when v.cancels then v.reason else j.last_error end,
         finished_at = case when v.cancels then now() else j.finished_at end,
         updated_at = now()
    from claimable c
    left join verdict v on v.job_id = c.id
   where j.id = c.id
",
    claimed_rows!(),
    " null::timestamptz as rest_of_batch_until
from claimed c
left join public.landing_leads l on l.id = c.lead_id
where c.status <> 'scheduled'
order by c.id"
);

/// Claims up to $1 email batches that are due again (their last attempt
/// failed for a temporary reason, or its outcome is unknown), each with every
/// due member, under lease token $2 for $3 seconds.
///
/// A batch is taken only under a transaction-scoped advisory lock on its key,
/// so two workers never split one. `rest_of_batch_until`: when members of the
/// batch are elsewhere (scheduled, or held by a lease), the latest moment they
/// are expected back; such a batch must not be sent in part (Resend's key
/// needs the same body), so the worker puts it off until then.
///
/// The gate's window applies to a batch as a whole: when any due member is
/// outside its rule's window, every due member waits for the latest of
/// their openings (and none is returned). Its members passed the policies
/// when the batch was made, and are not judged again: a batch whose outcome
/// is unknown goes again whole, or not at all.
pub const CLAIM_BATCHES: &str = concat!(
    "
with keys as (
  select k.batch_key from (
    select j.batch_key from public.notification_jobs j
    where j.channel = 'email' and j.status = 'due' and j.batch_key is not null
    group by j.batch_key
    order by min(j.due_at)
    limit $1
  ) k
  where pg_try_advisory_xact_lock(hashtext('leadrelay email batch'), hashtext(k.batch_key))
), members as (
  select j.id, j.batch_key from public.notification_jobs j
  join keys k on k.batch_key = j.batch_key
  where j.channel = 'email' and j.status = 'due'
  for update of j
), held as (
  select m.batch_key, max(g.held_until) as held_until, max(g.reason) as reason
  from public.leadrelay_gate(array(select m.id from members m)) g
  join members m on m.id = g.job_id
  where g.verdict = 'window'
  group by m.batch_key
), claimed as (
  update public.notification_jobs j
     set status = case when v.batch_key is null then 'sending' else 'scheduled' end,
         attempts = case when v.batch_key is null then j.attempts + 1 else j.attempts end,
         locked_by = case when v.batch_key is null then $2 end,
         locked_until = case when v.batch_key is null then now() + make_interval(secs => $3) end,
         ",
    fixed_by_first_claim!("v.batch_key is null", "$4"),
    "
         due_at = coalesce(v.held_until, j.due_at),
         held_until = coalesce(v.held_until, j.held_until),
         hold_reason = coalesce(v.reason, j.hold_reason),
         updated_at = now()
    from members m
    left join held v on v.batch_key = m.batch_key
   where j.id = m.id
",
    claimed_rows!(),
    "
       -- read before this statement's update: members not due are elsewhere
       (select max(case r.status when 'scheduled' then r.due_at else r.locked_until end)
          from public.notification_jobs r
         where r.batch_key = c.batch_key and r.status in ('scheduled', 'sending')) as rest_of_batch_until
from claimed c
left join public.landing_leads l on l.id = c.lead_id
where c.status <> 'scheduled'
order by c.batch_key, c.id"
);

/// Mirrors a job's outcome onto its lead, for the channels that have columns
/// there. Used as the tail of each outcome statement, so job and mirror commit
/// together. Expects a CTE `done(lead_id, channel, error)`.
const MIRROR: &str = "
mirror as (
  update public.landing_leads l
     set email_sent = case when d.channel = 'email' and d.sent then true else l.email_sent end,
         email_sent_at = case when d.channel = 'email' and d.sent then now() else l.email_sent_at end,
         email_error = case when d.channel = 'email' then d.error else l.email_error end,
         sms_sent = case when d.channel = 'sms' and d.sent then true else l.sms_sent end,
         sms_sent_at = case when d.channel = 'sms' and d.sent then now() else l.sms_sent_at end,
         sms_error = case when d.channel = 'sms' then d.error else l.sms_error end
    from done d
   where l.id = d.lead_id and d.channel in ('email', 'sms')
  returning l.id
), resync as (
  -- The dashboard row shows the sent flags: sync it again. A sync in flight
  -- ('sending') is taken back too: it may have read the flags before this
  -- statement commits, and its own completion may not see this commit either
  -- (each statement reads its own snapshot). Taking it back makes the row
  -- lock order the two: the in-flight sync then finds its job no longer its
  -- own and the job runs once more with fresh flags.
  update public.notification_jobs t
     set status = 'due', due_at = now(), attempts = 0, finished_at = null,
         locked_by = null, locked_until = null, updated_at = now()
    from done d
   where d.sent and t.lead_id = d.lead_id and t.channel = 'lead_tracking'
     and t.status in ('sent', 'failed', 'sending')
  returning t.id
)
";

/// The end of a one-job outcome statement: 1 if the job was still ours.
const ONE_RESULT: &str = "
select (select count(*) from done),
       (select count(pg_notify('notification_jobs', r.id::text)) from resync r)";

/// Appends error $3 to the job's history, keeping the last 20.
const APPEND_ERROR: &str = "errors = (case when jsonb_array_length(j.errors) >= 20 then j.errors - 0 else j.errors end)
                  || jsonb_build_array(jsonb_build_object('attempt', j.attempts, 'at', now(), 'error', left($3, 2000)))";

/// Whether a send may be recorded for the claim with lease token `lock`: it
/// still holds the job, or its lease expired and the rescue put the job back
/// (noting the token) with no other claim begun since. A known send is kept
/// rather than sent again.
fn still_this_claims(lock: &str) -> String {
    format!(
        "((j.status = 'sending' and j.locked_by = {lock})
       or (j.status in ('due', 'failed') and j.locked_by is null
           and j.errors -> -1 ->> 'lock' = {lock}))"
    )
}

/// The provider accepted job $1 (held by worker $2) as message $3 (of
/// campaign $4, for Mobizon).
pub fn record_sent_sql() -> String {
    let still_this_claims = still_this_claims("$2");
    format!(
        "with done as (
  update public.notification_jobs j
     set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = $3,
         provider_campaign_id = $4::text, outcome_unknown_since = null,
         last_error = null, locked_by = null, locked_until = null, updated_at = now()
   where j.id = $1 and {still_this_claims}
  returning j.id, j.lead_id, j.channel, null::text as error, true as sent
), {MIRROR}{ONE_RESULT}"
    )
}

/// Many jobs of one channel were accepted: job ids $1 with provider message
/// ids $2 (and campaign ids $4, for Mobizon), each held under lease token $3,
/// recorded in one statement (the hot path of a busy queue). Returns the ids
/// that were still ours.
pub fn record_sent_batch_sql() -> String {
    let still_this_claims = still_this_claims("i.lock");
    format!(
        "with input as (
  select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
           as t(id, provider_message_id, lock, campaign_id)
), done as (
  update public.notification_jobs j
     set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = i.provider_message_id,
         provider_campaign_id = i.campaign_id, outcome_unknown_since = null,
         last_error = null, locked_by = null, locked_until = null, updated_at = now()
    from input i
   where j.id = i.id and {still_this_claims}
  returning j.id, j.lead_id, j.channel, null::text as error, true as sent
), {MIRROR}
select coalesce((select array_agg(id) from done), '{{}}'::bigint[]),
       (select count(pg_notify('notification_jobs', r.id::text)) from resync r)"
    )
}

/// Job $1 (worker $2) was most likely sent without an id to show for it
/// (`Outcome::ProbablySent`, $3 says why): `sent`, with the mirror.
pub fn record_probably_sent_sql() -> String {
    let still_this_claims = still_this_claims("$2");
    format!(
        "with done as (
  update public.notification_jobs j
     set status = 'sent', sent_at = now(), finished_at = now(), sent_unconfirmed = left($3, 2000),
         last_error = null, locked_by = null, locked_until = null, updated_at = now()
   where j.id = $1 and {still_this_claims}
  returning j.id, j.lead_id, j.channel, null::text as error, true as sent
), {MIRROR}{ONE_RESULT}"
    )
}

/// Job $1 (worker $2) failed for a reason worth another attempt ($3); try
/// again in $4 seconds. $5: whether this attempt counts against max_attempts
/// (a rate limit is not the message's failure). $6: when an SMS attempt
/// whose outcome is still unknown began (null: nothing to look up). The last
/// 20 errors are kept.
pub fn record_retry_sql() -> String {
    format!(
        "with done as (
  update public.notification_jobs j
     set status = 'scheduled', outcome_unknown_since = $6::timestamptz,
         due_at = now() + make_interval(secs => $4),
         attempts = case when $5 then j.attempts else j.attempts - 1 end,
         last_error = left($3, 2000),
         {APPEND_ERROR},
         locked_by = null, locked_until = null, updated_at = now()
   where j.id = $1 and j.status = 'sending' and j.locked_by = $2
  returning j.id, j.lead_id, j.channel, j.last_error as error, false as sent
), {MIRROR}{ONE_RESULT}"
    )
}

/// The members of one batch, job ids $1 held under lease tokens $2, failed
/// together for a reason worth another attempt ($3): they are tried again
/// together in $4 seconds, or at $7 when given ($5: whether this attempt
/// counts). With $6 the batch is dissolved (Resend refused it without sending
/// anything): each member is then sent on its own. $8 (or null): an attempt
/// whose outcome is unknown began then (the earliest is kept). Returns the
/// ids that were still ours.
pub fn record_retry_many_sql() -> String {
    format!(
        "with input as (
  select * from unnest($1::bigint[], $2::text[]) as t(id, lock)
), done as (
  update public.notification_jobs j
     set status = 'scheduled',
         due_at = coalesce($7::timestamptz, now() + make_interval(secs => $4)),
         attempts = case when $5 then j.attempts else j.attempts - 1 end,
         batch_key = case when $6 then null else j.batch_key end,
         outcome_unknown_since = least(j.outcome_unknown_since, $8::timestamptz),
         last_error = left($3, 2000),
         {APPEND_ERROR},
         locked_by = null, locked_until = null, updated_at = now()
    from input i
   where j.id = i.id and j.status = 'sending' and j.locked_by = i.lock
  returning j.id, j.lead_id, j.channel, j.last_error as error, false as sent
), {MIRROR}
select coalesce((select array_agg(id) from done), '{{}}'::bigint[]),
       (select count(pg_notify('notification_jobs', r.id::text)) from resync r)"
    )
}

/// A look-up found what SMS job $1 (worker $2) sent: the first of the
/// candidates, message ids $3 with campaign ids $4 in order of preference,
/// that no other job holds; $5 (or null): the error of this claim's own
/// unanswered attempt, kept in the history. Run after `LOOKUP_LOCK` in the
/// same transaction,
/// so two look-ups never take the same message. Returns whether the job was
/// recorded, the notifications of the dashboard resync, the message taken
/// and how many candidates were free.
///
/// Nothing is taken while another job is sending to the same phone (its
/// request may have made one of these messages, and its answer is on its way
/// to be recorded): the look-up then says `Busy` and the job looks again
/// later, so the send path and a look-up never both claim one message.
pub fn record_found_sql() -> String {
    let still_this_claims = still_this_claims("$2");
    format!(
        "with busy as (
  select exists (
    select 1 from public.notification_jobs o, public.notification_jobs me
     where me.id = $1 and o.id <> $1 and o.channel = 'sms' and o.status = 'sending'
       and o.recipient = me.recipient) as sending_elsewhere
), candidate as (
  select c.message_id, c.campaign_id
  from unnest($3::text[], $4::text[]) with ordinality as c(message_id, campaign_id, n)
  where not exists (select 1 from public.notification_jobs o
                     where o.provider_message_id = c.message_id and o.channel = 'sms' and o.id <> $1)
    and not (select sending_elsewhere from busy)
  order by c.n
  limit 1
), done as (
  update public.notification_jobs j
     set status = 'sent', sent_at = now(), finished_at = now(),
         provider_message_id = k.message_id, provider_campaign_id = k.campaign_id,
         recovered_at = now(), outcome_unknown_since = null,
         errors = case when $5::text is null then j.errors
                       else (case when jsonb_array_length(j.errors) >= 20 then j.errors - 0 else j.errors end)
                            || jsonb_build_array(jsonb_build_object('attempt', j.attempts, 'at', now(),
                                                                    'error', left($5, 2000))) end,
         last_error = null, locked_by = null, locked_until = null, updated_at = now()
    from candidate k
   where j.id = $1 and {still_this_claims}
  returning j.id, j.lead_id, j.channel, null::text as error, true as sent, j.provider_message_id
), {MIRROR}
select (select count(*) from done),
       (select count(pg_notify('notification_jobs', r.id::text)) from resync r),
       (select provider_message_id from done),
       (select count(*) from candidate),
       (select sending_elsewhere from busy)"
    )
}

/// Taken before `record_found_sql`: look-ups record one at a time (they are
/// rare), each seeing what the one before took.
pub const LOOKUP_LOCK: &str = "select pg_advisory_xact_lock(hashtext('leadrelay sms lookup'))";

/// Job $1 (worker $2) ends with status $4 (failed, invalid or cancelled)
/// because of $3, of the kind $6 (`FailureKind`; null for cancelled). $5: as in `record_retry_sql`, kept so that `leadrelay
/// retry` of a failed SMS still looks it up first.
pub fn record_final_sql() -> String {
    format!(
        "with done as (
  update public.notification_jobs j
     set status = $4, finished_at = now(), outcome_unknown_since = $5::timestamptz,
         last_error = left($3, 2000), failed_because = $6::text,
         {APPEND_ERROR},
         locked_by = null, locked_until = null, updated_at = now()
   where j.id = $1 and j.status = 'sending' and j.locked_by = $2
  returning j.id, j.lead_id, j.channel, j.last_error as error, false as sent
), {MIRROR}{ONE_RESULT}"
    )
}

/// The dashboard row of job $1 (worker $2) was written with the sent flags
/// $3 (email) and $4 (sms). If the lead's flags changed meanwhile, the job
/// runs again at once; otherwise it is done.
pub const RECORD_TRACKED: &str = "
with done as (
  update public.notification_jobs j
     set status = case when l.email_sent = $3 and l.sms_sent = $4 then 'sent' else 'due' end,
         sent_at = now(),
         finished_at = case when l.email_sent = $3 and l.sms_sent = $4 then now() end,
         due_at = now(),
         last_error = null, locked_by = null, locked_until = null, updated_at = now()
    from public.landing_leads l
   where j.id = $1 and j.status = 'sending' and j.locked_by = $2 and l.id = j.lead_id
  returning j.id, j.status
)
select (select count(*) from done),
       (select count(pg_notify('notification_jobs', d.id::text)) from done d where d.status = 'due')";

/// Gives job $1 back (worker $2) without an attempt: it was claimed but not
/// sent because the worker is stopping.
pub const RELEASE: &str = "
update public.notification_jobs j
   set status = 'due', attempts = greatest(j.attempts - 1, 0),
       locked_by = null, locked_until = null, updated_at = now()
 where j.id = $1 and j.status = 'sending' and j.locked_by = $2";

pub const PROMOTE: &str = "select public.promote_due_notification_jobs()";

/// Whether job $1 is still held under lease token $2: false once its lead
/// was deleted (the delete trigger deletes its jobs) or it was taken back.
pub const STILL_HELD: &str =
    "select exists (select 1 from public.notification_jobs where id = $1 and locked_by = $2)";

/// One bounded batch of housekeeping (old provider events, pg_cron's run
/// log); the worker runs it only where pg_cron does not.
pub const PRUNE_HISTORY: &str = "select public.prune_leadrelay_history()::text";

/// Whether pg_cron runs in this database: the migrations then scheduled the
/// promotion and the pruning there.
pub const PG_CRON_HERE: &str =
    "select exists (select 1 from pg_extension where extname = 'pg_cron')";

/// Seconds until the next scheduled job is due (negative: overdue), or null;
/// and whether any job is due now. Two probes of partial indexes.
pub const GLANCE: &str = "
select (select extract(epoch from (min(due_at) - clock_timestamp()))::float8
          from public.notification_jobs where status = 'scheduled'),
       exists (select 1 from public.notification_jobs where status = 'due')";

/// Sent SMS without a final delivery state yet, oldest news first: what the
/// Mobizon status poll asks about (at most $1, sent within the last 2 days:
/// Mobizon gives up delivering after one).
pub const SMS_AWAITING_STATUS: &str = "
select provider_message_id from public.notification_jobs
where channel = 'sms' and status = 'sent'
  and (delivery_status is null or delivery_status in ('accepted', 'partly_delivered'))
  and sent_at > now() - interval '2 days' and provider_message_id is not null
order by coalesce(delivery_status_at, sent_at)
limit $1";

/// Applies the waiting events of messages $2 of providers $1, in one round
/// trip; messages with none waiting cost one index probe.
pub const APPLY_PENDING_MANY: &str = "
select coalesce(sum(public.apply_pending_notification_events(t.provider, t.message_id)), 0)::int
from unnest($1::text[], $2::text[]) as t(provider, message_id)
where exists (select 1 from public.notification_events e
               where e.applied_at is null and e.provider = t.provider
                 and e.provider_message_id = t.message_id)";
pub const APPLY_ALL_PENDING: &str = "select public.apply_all_pending_notification_events()";

/// Every statement above, for the test that prepares each one against the
/// migrated schema (`crate::statements` adds the other rooms' statements).
pub fn statements() -> Vec<String> {
    [
        CLAIM.to_string(),
        CLAIM_BATCHES.to_string(),
        record_sent_sql(),
        record_sent_batch_sql(),
        record_retry_sql(),
        record_retry_many_sql(),
        record_final_sql(),
        record_probably_sent_sql(),
        record_found_sql(),
        LOOKUP_LOCK.to_string(),
        RECORD_TRACKED.to_string(),
        RELEASE.to_string(),
        PROMOTE.to_string(),
        PRUNE_HISTORY.to_string(),
        PG_CRON_HERE.to_string(),
        STILL_HELD.to_string(),
        GLANCE.to_string(),
        SMS_AWAITING_STATUS.to_string(),
        APPLY_PENDING_MANY.to_string(),
        APPLY_ALL_PENDING.to_string(),
    ]
    .into()
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("database unavailable: {0}")]
    Pool(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for QueueError {
    fn from(e: tokio_postgres::Error) -> Self {
        QueueError::Db(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for QueueError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        QueueError::Pool(e.to_string())
    }
}

/// A job this worker holds, with the lead it belongs to.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub lead_id: Uuid,
    pub channel: Channel,
    pub template: String,
    pub recipient: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub previous_outcome_unknown: bool,
    pub lead: Option<Lead>,
    /// When this worker's lease ends (by our clock, a little early).
    pub lease_ends: tokio::time::Instant,
    /// When it was claimed: a job held a while is checked again before its
    /// request (its lead may have been deleted since).
    pub claimed_at: tokio::time::Instant,
    /// The lease token of this claim (`locked_by`): the worker id and a
    /// claim number, so that a stale claim of a job this same worker claimed
    /// again later can never record or release over the new one.
    pub lock: String,
    /// The idempotency key of the email batch this job is sent in, if any.
    pub batch_key: Option<String>,
    /// The Resend idempotency key of an email sent on its own, fixed by the
    /// job's first claim (None for other channels).
    pub idempotency_key: Option<String>,
    /// The values the message is made of (`name`, `product_url`), fixed by
    /// the job's first claim.
    pub sent_params: Option<serde_json::Value>,
    /// An SMS attempt that began then got no answer: it may have been taken,
    /// so it is looked up before this attempt sends (SMS_UNKNOWN_OUTCOME).
    pub outcome_unknown_since: Option<DateTime<Utc>>,
    /// The template version the job's first claim fixed (None: the template
    /// did not exist then).
    pub template_version: Option<i32>,
    /// Members of this job's batch are elsewhere until then (see
    /// `CLAIM_BATCHES`): the batch must wait for them.
    pub rest_of_batch_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Lead {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub email_sent: bool,
    pub email_sent_at: Option<DateTime<Utc>>,
    pub sms_sent: bool,
    pub sms_sent_at: Option<DateTime<Utc>>,
}

fn claimed_job(
    channel: Channel,
    row: &Row,
    lease_ends: tokio::time::Instant,
    lock: &str,
) -> ClaimedJob {
    let lead_exists: bool = row.get(7);
    ClaimedJob {
        id: row.get(0),
        lead_id: row.get(1),
        channel,
        template: row.get(2),
        recipient: row.get(3),
        attempts: row.get(4),
        max_attempts: row.get(5),
        previous_outcome_unknown: row.get(6),
        lead: lead_exists.then(|| Lead {
            name: row.get(8),
            email: row.get(9),
            phone: row.get(10),
            metadata: row.get(11),
            created_at: row.get(12),
            email_sent: row.get(13),
            email_sent_at: row.get(14),
            sms_sent: row.get(15),
            sms_sent_at: row.get(16),
        }),
        lease_ends,
        claimed_at: tokio::time::Instant::now(),
        lock: lock.to_string(),
        batch_key: row.get(17),
        idempotency_key: row.get(18),
        sent_params: row.get(19),
        outcome_unknown_since: row.get(20),
        template_version: row.get(21),
        rest_of_batch_until: row.get(24),
    }
}

/// A claimed row that the delivery policies cancelled: its policy and
/// reason (None for a job to send).
fn policy_cancellation(row: &Row) -> Option<(String, String)> {
    let policy: Option<String> = row.get(22);
    policy.map(|p| (p, row.get::<_, Option<String>>(23).unwrap_or_default()))
}

/// How a job ends, or when it runs again.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        provider_message_id: String,
        campaign_id: Option<String>,
    },
    Retry {
        error: String,
        after: Duration,
        counts: bool,
        /// An SMS attempt whose outcome is still unknown began then: look
        /// it up before sending again.
        unknown_since: Option<DateTime<Utc>>,
    },
    Failed {
        error: String,
        unknown_since: Option<DateTime<Utc>>,
        because: FailureKind,
    },
    Invalid {
        error: String,
        because: FailureKind,
    },
    Cancelled {
        error: String,
    },
    /// The provider most likely sent it but gave no id: Resend answered 409
    /// for an idempotency key it holds with another body. Recorded as `sent`
    /// with why in `sent_unconfirmed`, so no retry sends it again.
    ProbablySent {
        note: String,
    },
}

/// What recording a look-up's find came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundRecord {
    /// The job is `sent` as this message.
    Recorded(String),
    /// Every message found is another job's: this one was not taken.
    HeldByOtherJobs,
    /// Another job is sending to this phone right now: nothing was taken,
    /// look again once it has recorded what it sent.
    Busy,
    /// The job is no longer this claim's.
    NotOurs,
}

/// What the sweeper sees between sweeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Glance {
    /// How long until the next scheduled job is due, if any is.
    pub next_due: Option<Duration>,
    /// Whether jobs are due now (claimable).
    pub any_due: bool,
}

/// When and how the members of a batch go again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRetry {
    pub after: Duration,
    /// At this moment instead of `after`, when given.
    pub at: Option<DateTime<Utc>>,
    /// Whether this attempt counts against max_attempts.
    pub counts: bool,
    /// Each member goes on its own from now on.
    pub dissolve: bool,
    /// An attempt of the batch whose outcome is unknown began then: Resend
    /// may hold the batch under its key (kept until the batch is sent).
    pub unknown_since: Option<DateTime<Utc>>,
}

impl BatchRetry {
    /// The batch is dissolved before anything was sent (Resend refused it
    /// whole, or it cannot go as a batch): each member goes on its own at
    /// once; `counts` whether this was an attempt.
    pub fn dissolved(counts: bool) -> BatchRetry {
        BatchRetry {
            after: Duration::ZERO,
            at: None,
            counts,
            dissolve: true,
            unknown_since: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Queue {
    pool: Pool,
    worker_id: String,
    claims: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The product link a first claim fixes into the job (`sent_params`).
    product_url: String,
}

impl Queue {
    /// This process's worker id, which every claim's lease token carries.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn new(pool: Pool, worker_id: String) -> Queue {
        Queue {
            pool,
            worker_id,
            claims: Default::default(),
            product_url: String::new(),
        }
    }

    /// The product link the jobs this queue claims first are fixed to.
    pub fn with_product_url(mut self, product_url: &str) -> Queue {
        self.product_url = product_url.to_string();
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Claims up to `limit` due jobs. With `batching`, the jobs never tried
    /// before are put in one new email batch when there are two or more.
    pub async fn claim(
        &self,
        channel: Channel,
        limit: i64,
        lease: Duration,
        batching: bool,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        // A fresh key for every claim: Resend keeps keys for 24 hours, so one
        // must never be used for two different batches.
        let batch_key = batching.then(|| format!("leadrelay-batch-{}", Uuid::new_v4()));
        let (lock, lease_ends) = self.next_claim(lease);
        let secs = lease.as_secs_f64();
        self.claim_rows(
            CLAIM,
            channel,
            &lock,
            lease_ends,
            &[
                &channel.as_str(),
                &limit,
                &lock,
                &secs,
                &batch_key,
                &self.product_url,
            ],
        )
        .await
    }

    /// Claims up to `limit` email batches that are due again, whole.
    pub async fn claim_batches(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let (lock, lease_ends) = self.next_claim(lease);
        let secs = lease.as_secs_f64();
        self.claim_rows(
            CLAIM_BATCHES,
            Channel::Email,
            &lock,
            lease_ends,
            &[&limit, &lock, &secs, &self.product_url],
        )
        .await
    }

    /// The lease token of a new claim, and when its lease ends by our clock:
    /// counted from before the claim, so never later than the database's.
    fn next_claim(&self, lease: Duration) -> (String, tokio::time::Instant) {
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (
            format!("{}:{n}", self.worker_id),
            tokio::time::Instant::now() + lease,
        )
    }

    async fn claim_rows(
        &self,
        sql: &str,
        channel: Channel,
        lock: &str,
        lease_ends: tokio::time::Instant,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, params).await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            match policy_cancellation(row) {
                None => jobs.push(claimed_job(channel, row, lease_ends, lock)),
                Some((policy, reason)) => {
                    let job_id: i64 = row.get(0);
                    tracing::info!(job_id, channel = channel.as_str(), %policy, %reason,
                        "cancelled by a delivery policy: nothing sent");
                    metrics::counter!("leadrelay_policy_cancellations_total",
                        "channel" => channel.as_str(), "policy" => policy)
                    .increment(1);
                }
            }
        }
        Ok(jobs)
    }

    /// Records that the members of one batch failed together and go again
    /// together (or, with `dissolve`, each on its own); returns the ids that
    /// were still ours.
    pub async fn record_batch_retry(
        &self,
        jobs: &[ClaimedJob],
        error: &str,
        retry: BatchRetry,
    ) -> Result<Vec<i64>, QueueError> {
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let locks: Vec<String> = jobs.iter().map(|j| j.lock.clone()).collect();
        let error = storable::text(error);
        let client = self.pool.get().await?;
        let st = client.prepare_cached(&record_retry_many_sql()).await?;
        let row = client
            .query_one(
                &st,
                &[
                    &ids,
                    &locks,
                    &error,
                    &retry.after.as_secs_f64(),
                    &retry.counts,
                    &retry.dissolve,
                    &retry.at,
                    &retry.unknown_since,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records how job `id` ended. Returns false when the job was no longer
    /// ours (its lease expired and another worker took it).
    ///
    /// Provider text is made storable first: an odd byte in an error message
    /// or a message id must never make this statement fail, which would
    /// leave a sent job to be rescued and sent again.
    pub async fn record(&self, id: i64, lock: &str, outcome: &Outcome) -> Result<bool, QueueError> {
        let client = self.pool.get().await?;
        let row = match outcome {
            Outcome::Sent {
                provider_message_id,
                campaign_id,
            } => {
                let st = client.prepare_cached(&record_sent_sql()).await?;
                let provider_message_id = storable::text(provider_message_id);
                let campaign_id = campaign_id.as_deref().map(storable::text);
                client
                    .query_one(&st, &[&id, &lock, &provider_message_id, &campaign_id])
                    .await?
            }
            Outcome::Retry {
                error,
                after,
                counts,
                unknown_since,
            } => {
                let st = client.prepare_cached(&record_retry_sql()).await?;
                let error = storable::text(error);
                client
                    .query_one(
                        &st,
                        &[
                            &id,
                            &lock,
                            &error,
                            &after.as_secs_f64(),
                            counts,
                            unknown_since,
                        ],
                    )
                    .await?
            }
            Outcome::ProbablySent { note } => {
                let st = client.prepare_cached(&record_probably_sent_sql()).await?;
                let note = storable::text(note);
                client.query_one(&st, &[&id, &lock, &note]).await?
            }
            Outcome::Failed { error, .. }
            | Outcome::Invalid { error, .. }
            | Outcome::Cancelled { error } => {
                let (status, unknown_since, because) = match outcome {
                    Outcome::Failed {
                        unknown_since,
                        because,
                        ..
                    } => ("failed", *unknown_since, Some(because.as_str())),
                    Outcome::Invalid { because, .. } => ("invalid", None, Some(because.as_str())),
                    _ => ("cancelled", None, None),
                };
                let st = client.prepare_cached(&record_final_sql()).await?;
                let error = storable::text(error);
                client
                    .query_one(
                        &st,
                        &[&id, &lock, &error, &status, &unknown_since, &because],
                    )
                    .await?
            }
        };
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Records `sent` for many jobs of one channel; returns the ids that
    /// were still ours. Delivery reports that beat this write (rare) are
    /// applied next, in one statement; the sweep applies what that misses.
    pub async fn record_sent_batch(
        &self,
        channel: Channel,
        ids: &[i64],
        message_ids: &[String],
        locks: &[String],
        campaign_ids: &[Option<String>],
    ) -> Result<Vec<i64>, QueueError> {
        let message_ids: Vec<String> = message_ids
            .iter()
            .map(|id| storable::text(id).into_owned())
            .collect();
        let campaign_ids: Vec<Option<String>> = campaign_ids
            .iter()
            .map(|id| id.as_deref().map(|id| storable::text(id).into_owned()))
            .collect();
        let recorded: Vec<i64> = {
            let client = self.pool.get().await?;
            let st = client.prepare_cached(&record_sent_batch_sql()).await?;
            client
                .query_one(&st, &[&ids, &message_ids, &locks, &campaign_ids])
                .await?
                .get(0)
        };
        let applicable: Vec<&str> = ids
            .iter()
            .zip(&message_ids)
            .filter(|(id, _)| recorded.contains(id))
            .map(|(_, message_id)| message_id.as_str())
            .collect();
        if !applicable.is_empty()
            && let Err(e) = self.apply_pending_events(channel, &applicable).await
        {
            tracing::warn!(error = %e, "applying early delivery events failed; the next sweep retries");
        }
        Ok(recorded)
    }

    /// Records that a look-up found the SMS job `id` sent: the first of
    /// `candidates` (message id, campaign id) no other job holds.
    pub async fn record_found(
        &self,
        id: i64,
        lock: &str,
        candidates: &[(String, Option<String>)],
        attempt_error: Option<&str>,
    ) -> Result<FoundRecord, QueueError> {
        let attempt_error = attempt_error.map(storable::text);
        let message_ids: Vec<String> = candidates
            .iter()
            .map(|(m, _)| storable::text(m).into_owned())
            .collect();
        let campaign_ids: Vec<Option<String>> = candidates
            .iter()
            .map(|(_, c)| c.as_deref().map(|c| storable::text(c).into_owned()))
            .collect();
        let mut client = self.pool.get().await?;
        let st = client.prepare_cached(&record_found_sql()).await?;
        let tx = client.transaction().await?;
        tx.execute(LOOKUP_LOCK, &[]).await?;
        let row = tx
            .query_one(
                &st,
                &[&id, &lock, &message_ids, &campaign_ids, &attempt_error],
            )
            .await?;
        tx.commit().await?;
        let recorded: Option<String> = row.get(2);
        let free: i64 = row.get(3);
        let busy: bool = row.get(4);
        let found = match recorded {
            Some(message_id) => FoundRecord::Recorded(message_id),
            None if busy => FoundRecord::Busy,
            None if free == 0 => FoundRecord::HeldByOtherJobs,
            None => FoundRecord::NotOurs,
        };
        if let FoundRecord::Recorded(message_id) = &found
            && let Err(e) = self
                .apply_pending_events(Channel::Sms, &[message_id.as_str()])
                .await
        {
            tracing::warn!(error = %e, "applying early delivery events failed; the next sweep retries");
        }
        Ok(found)
    }

    pub async fn record_tracked(
        &self,
        id: i64,
        lock: &str,
        email_sent: bool,
        sms_sent: bool,
    ) -> Result<bool, QueueError> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(RECORD_TRACKED).await?;
        let row = client
            .query_one(&st, &[&id, &lock, &email_sent, &sms_sent])
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    pub async fn release(&self, id: i64, lock: &str) -> Result<(), QueueError> {
        let client = self.pool.get().await?;
        client.execute(RELEASE, &[&id, &lock]).await?;
        Ok(())
    }

    /// Promotes due jobs (and rescues expired leases); returns how many.
    /// Prunes one batch of old history, unless pg_cron does it here; returns
    /// what was deleted, as JSON text, when it ran.
    pub async fn prune_history_without_pg_cron(&self) -> Result<Option<String>, QueueError> {
        let client = self.pool.get().await?;
        if client.query_one(PG_CRON_HERE, &[]).await?.get::<_, bool>(0) {
            return Ok(None);
        }
        Ok(Some(client.query_one(PRUNE_HISTORY, &[]).await?.get(0)))
    }

    /// Whether this claim still holds the job (see `STILL_HELD`).
    pub async fn still_held(&self, id: i64, lock: &str) -> Result<bool, QueueError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(STILL_HELD).await?;
        Ok(client.query_one(&statement, &[&id, &lock]).await?.get(0))
    }

    pub async fn promote(&self) -> Result<i32, QueueError> {
        let client = self.pool.get().await?;
        Ok(client.query_one(PROMOTE, &[]).await?.get(0))
    }

    /// Applies webhook events that arrived before this message id was recorded.
    /// Applies webhook events that arrived before these messages' ids were
    /// recorded (sent jobs of `channel`).
    async fn apply_pending_events(
        &self,
        channel: Channel,
        message_ids: &[&str],
    ) -> Result<i32, QueueError> {
        let provider = match channel {
            Channel::Email => "resend",
            Channel::Sms => "mobizon",
            Channel::LeadTracking => return Ok(0),
        };
        let providers = vec![provider; message_ids.len()];
        let client = self.pool.get().await?;
        let st = client.prepare_cached(APPLY_PENDING_MANY).await?;
        Ok(client
            .query_one(&st, &[&providers, &message_ids])
            .await?
            .get(0))
    }

    pub async fn apply_all_pending_events(&self) -> Result<i32, QueueError> {
        let client = self.pool.get().await?;
        Ok(client.query_one(APPLY_ALL_PENDING, &[]).await?.get(0))
    }

    pub async fn sms_awaiting_status(&self, limit: i64) -> Result<Vec<String>, QueueError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(SMS_AWAITING_STATUS, &[&limit])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// When the next scheduled job is due, and whether jobs are due now.
    pub async fn glance(&self) -> Result<Glance, QueueError> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(GLANCE).await?;
        let row = client.query_one(&st, &[]).await?;
        let seconds: Option<f64> = row.get(0);
        Ok(Glance {
            next_due: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
            any_due: row.get(1),
        })
    }
}
