//! The claims: due jobs become `sending` under a lease, through the gate,
//! with what their message is made of fixed by the first claim; and what a
//! claimed row holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::*;

// The plans: every claim runs a generic plan (`WORKER_SESSION`), made
// without knowing how many jobs it takes; when thousands of scheduled jobs
// are past their moment, PostgreSQL estimates a claim at hundreds of rows
// and would join the jobs and the leads by reading each table whole (a
// tenth of the processing benchmark's database time). So each statement
// here reaches the jobs and leads it writes or reads by key (`= any(array(…))`,
// a lateral look-up), whatever the estimate.

/// The end of both claims, after a data-modifying CTE `claimed` that updated
/// `j`: the columns `claimed_job` reads, by name. Each claim adds
/// `rest_of_batch_until` and its FROM.
macro_rules! claimed_rows {
    () => {
        "  returning j.status, j.id, j.lead_id, j.template, j.recipient, j.attempts, j.max_attempts,
            coalesce(j.errors -> -1 ->> 'error' = 'lease expired: outcome unknown', false) as previous_outcome_unknown,
            j.batch_key, j.idempotency_key, j.channel, j.sent_params, j.outcome_unknown_since,
            j.template_version, j.cancelled_by, j.last_error, j.due_at
)
select c.id, c.lead_id, c.template, c.recipient, c.attempts, c.max_attempts, c.previous_outcome_unknown,
       l.id is not null as lead_exists, l.name as lead_name, l.email as lead_email, l.phone as lead_phone,
       -- only the dashboard row uses the lead's metadata, which can be large
       case when c.channel = 'lead_tracking' then l.metadata end as lead_metadata,
       l.created_at as lead_created_at,
       coalesce(l.email_sent, false) as email_sent, l.email_sent_at,
       coalesce(l.sms_sent, false) as sms_sent, l.sms_sent_at,
       c.batch_key, c.idempotency_key, c.sent_params, c.outcome_unknown_since, c.template_version,
       c.cancelled_by, case when c.cancelled_by is not null then c.last_error end as cancelled_reason,
       -- claimed a little ahead of its moment: how long until then, by the
       -- database's clock (the worker holds its request that long)
       greatest(extract(epoch from (c.due_at - clock_timestamp())), 0)::float8 as due_in,"
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
            message_values!("j.lead_id", "j.rule_id", "j.channel", "j.template", $url),
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
/// seconds, oldest first, skipping jobs another worker holds: jobs the
/// promotion made due, then scheduled jobs whose moment has passed (not
/// promoted yet; within twice the time `left_to_claims!` gives the claims,
/// older ones are promoted). Returns them with
/// their lead. `previous_outcome_unknown`: the last attempt ended with an
/// expired lease, so it may have reached the provider.
///
/// $6: the product link a job's first claim fixes into `sent_params`.
///
/// $7: seconds ahead (at most 0.1): scheduled jobs whose moment comes
/// within them are claimed now, and `due_in` says how long the worker must
/// hold each before its request, so that a moment's claims are made before
/// it and nothing goes before its time.
///
/// $5 (or null): the batch key for the jobs of this claim that were never
/// tried, when there are two or more of them; stored before any request, so a
/// batch sent again after a crash is the same batch. Jobs already in a batch
/// are left to `CLAIM_BATCHES`.
///
/// The gate (`leadrelay_gate`) is applied here, before any request, whatever
/// made the job due: a job outside its rule's send window goes back to
/// `scheduled` until the opening (and is not returned); a job whose
/// recipient is on the suppression list, or that the de-duplication or the
/// per-recipient cap refuses, is `cancelled` with the reason in the same
/// write, and returned with `cancelled_by` set; the others pass
/// (`cleared_at`).
pub const CLAIM: &str = concat!(
    "
with due_now as (
  select j.id, j.attempts = 0 and j.errors = '[]'::jsonb as fresh
  from public.notification_jobs j
  where j.channel = $1 and j.status = 'due' and j.batch_key is null
  order by j.due_at, j.id
  limit $2
  for update skip locked
), came_due as (
  -- scheduled jobs whose moment has passed, claimed as they are: the
  -- promotion need not write them first (the sweeper's timer wakes the
  -- lanes at the moment); read only when the due jobs leave room
  select j.id, j.attempts = 0 and j.errors = '[]'::jsonb as fresh
  from public.notification_jobs j
  where j.status = 'scheduled' and j.channel = $1 and j.batch_key is null
    and j.due_at <= now() + make_interval(secs => least(greatest($7::float8, 0), 0.1))
    -- older ones are the promotion's (left_to_claims!): the look does not
    -- walk the dead entries of every job gone since the last vacuum
    and j.due_at > now() - 2 * ",
    left_to_claims!(),
    "
  order by j.due_at, j.id
  limit greatest($2 - (select count(*) from due_now), 0)
  for update skip locked
), claimable as (
  select d.id, d.fresh from due_now d
  union all
  select s.id, s.fresh from came_due s
), verdict as (
  -- the gate: the send window, then the delivery policies under a lock per
  -- recipient (see `leadrelay_gate`): the jobs to hold or cancel
  select v.job_id, v.verdict, v.duplicate_of, v.held_until, v.reason,
         v.verdict in ('duplicate', 'recipient_cap', 'suppressed') as cancels
  from public.leadrelay_gate(array(select c.id from claimable c)) v
  -- a claim that found nothing (a lane woken for nothing) calls no gate
  where exists (select 1 from claimable)
), policy_leads as (
  -- locked in id order, as the outcome statements lock them (MIRROR)
  select l.id from public.landing_leads l
   where l.id = any(array(select j.lead_id from public.notification_jobs j
                           where j.id = any(array(select v.job_id from verdict v where v.cancels))))
   order by l.id
   for no key update
), policy_mirror as (
  -- the dashboard row says why its lead got nothing
  update public.landing_leads l
     set email_error = coalesce(m.email_reason, l.email_error),
         sms_error = coalesce(m.sms_reason, l.sms_error)
    from (select j.lead_id,
                 max(v.reason) filter (where j.channel = 'email') as email_reason,
                 max(v.reason) filter (where j.channel = 'sms') as sms_reason
            from verdict v join public.notification_jobs j on j.id = v.job_id
           where v.cancels and j.id = any(array(select c.job_id from verdict c where c.cancels))
           group by j.lead_id) m
   -- the locked leads as one array, not a join (see MIRROR in record.rs)
   where l.id = m.lead_id and l.id = any(array(select k.id from policy_leads k))
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
   where j.id = c.id and j.id = any(array(select k.id from claimable k))
",
    claimed_rows!(),
    " null::timestamptz as rest_of_batch_until
from claimed c
left join lateral (select * from public.landing_leads x where x.id = c.lead_id limit 1) l on true
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
  -- no batch is due again (nearly always): the due emails are not read
  where j.channel = 'email' and j.status = 'due' and exists (select 1 from keys)
  for update of j
), held as (
  select m.batch_key, max(g.held_until) as held_until, max(g.reason) as reason
  from public.leadrelay_gate(array(select m.id from members m)) g
  join members m on m.id = g.job_id
  -- no batch is due again (nearly always): no gate is called
  where g.verdict = 'window' and exists (select 1 from members)
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
   where j.id = m.id and j.id = any(array(select k.id from members k))
",
    claimed_rows!(),
    "
       -- read before this statement's update: members not due are elsewhere
       (select max(case r.status when 'scheduled' then r.due_at else r.locked_until end)
          from public.notification_jobs r
         where r.batch_key = c.batch_key and r.status in ('scheduled', 'sending')) as rest_of_batch_until
from claimed c
left join lateral (select * from public.landing_leads x where x.id = c.lead_id limit 1) l on true
where c.status <> 'scheduled'
order by c.batch_key, c.id"
);

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
    /// Its moment, when it was claimed ahead of it: no request before then.
    pub not_before: Option<tokio::time::Instant>,
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

/// `rows_at`: when the claim's rows arrived, before its commit (see
/// `claim_rows`).
fn claimed_job(
    channel: Channel,
    row: &Row,
    lease_ends: tokio::time::Instant,
    lock: &str,
    rows_at: tokio::time::Instant,
) -> ClaimedJob {
    let lead_exists: bool = row.get("lead_exists");
    ClaimedJob {
        id: row.get("id"),
        lead_id: row.get("lead_id"),
        channel,
        template: row.get("template"),
        recipient: row.get("recipient"),
        attempts: row.get("attempts"),
        max_attempts: row.get("max_attempts"),
        previous_outcome_unknown: row.get("previous_outcome_unknown"),
        lead: lead_exists.then(|| Lead {
            name: row.get("lead_name"),
            email: row.get("lead_email"),
            phone: row.get("lead_phone"),
            metadata: row.get("lead_metadata"),
            created_at: row.get("lead_created_at"),
            email_sent: row.get("email_sent"),
            email_sent_at: row.get("email_sent_at"),
            sms_sent: row.get("sms_sent"),
            sms_sent_at: row.get("sms_sent_at"),
        }),
        lease_ends,
        claimed_at: rows_at,
        not_before: not_before(row.get("due_in"), rows_at),
        lock: lock.to_string(),
        batch_key: row.get("batch_key"),
        idempotency_key: row.get("idempotency_key"),
        sent_params: row.get("sent_params"),
        outcome_unknown_since: row.get("outcome_unknown_since"),
        template_version: row.get("template_version"),
        rest_of_batch_until: row.get("rest_of_batch_until"),
    }
}

/// When a job claimed `due_in` seconds ahead of its moment may go, counted
/// from `rows_at`, when its row arrived: a millisecond later, for the row's
/// way back from the database. Never held more than a second: only a `due`
/// job whose `due_at` an operator or a clock put later could say more, and
/// it was made due to go.
fn not_before(due_in: f64, rows_at: tokio::time::Instant) -> Option<tokio::time::Instant> {
    (due_in > 0.0)
        .then(|| rows_at + Duration::from_secs_f64(due_in.min(1.0)) + Duration::from_millis(1))
}

/// A claimed row that the delivery policies cancelled: its policy and
/// reason (None for a job to send).
fn policy_cancellation(row: &Row) -> Option<(String, String)> {
    let policy: Option<String> = row.get("cancelled_by");
    policy.map(|p| {
        (
            p,
            row.get::<_, Option<String>>("cancelled_reason")
                .unwrap_or_default(),
        )
    })
}

impl Queue {
    /// Claims up to `limit` due jobs. With `batching`, the jobs never tried
    /// before are put in one new email batch when there are two or more.
    pub async fn claim(
        &self,
        channel: Channel,
        limit: i64,
        lease: Duration,
        batching: bool,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        self.claim_ahead(channel, limit, lease, batching, Duration::ZERO)
            .await
    }

    /// `claim`, also taking the scheduled jobs whose moment comes within
    /// `early` (at most 100 ms), each with the moment it must wait for.
    pub async fn claim_ahead(
        &self,
        channel: Channel,
        limit: i64,
        lease: Duration,
        batching: bool,
        early: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let early = early.as_secs_f64();
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
            early > 0.0,
            &[
                &channel.as_str(),
                &limit,
                &lock,
                &secs,
                &batch_key,
                &self.product_url,
                &early,
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
            false,
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

    /// `ahead`: the claim takes jobs ahead of their moment, which are held
    /// until it by `due_in`, the database's count at the statement's end.
    /// Its rows are then read inside a transaction, before the commit: the
    /// commit's flush of the claim's writes, which can take tens of
    /// milliseconds under write load, would otherwise be added to every
    /// hold (the timing benchmark's 200 emails went 30–48 ms late in some
    /// runs, docs/benchmarks.md). Nothing is handed out before the commit.
    async fn claim_rows(
        &self,
        sql: &str,
        channel: Channel,
        lock: &str,
        lease_ends: tokio::time::Instant,
        ahead: bool,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let mut client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        let (rows, rows_at) = if ahead {
            let tx = client.transaction().await?;
            let rows = tx.query(&statement, params).await?;
            let rows_at = tokio::time::Instant::now();
            tx.commit().await?;
            (rows, rows_at)
        } else {
            let rows = client.query(&statement, params).await?;
            (rows, tokio::time::Instant::now())
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            match policy_cancellation(row) {
                None => jobs.push(claimed_job(channel, row, lease_ends, lock, rows_at)),
                Some((policy, reason)) => {
                    let job_id: i64 = row.get("id");
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

    /// Whether this claim still holds the job (see `STILL_HELD`).
    pub async fn still_held(&self, id: i64, lock: &str) -> Result<bool, QueueError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(STILL_HELD).await?;
        Ok(client.query_one(&statement, &[&id, &lock]).await?.get(0))
    }
}

/// Whether job $1 is still held under lease token $2: false once its lead
/// was deleted (the delete trigger deletes its jobs) or it was taken back.
pub const STILL_HELD: &str =
    "select exists (select 1 from public.notification_jobs where id = $1 and locked_by = $2)";
