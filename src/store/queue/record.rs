//! Writing an outcome back: each statement updates the job only while this
//! claim still holds it, and mirrors the outcome onto `landing_leads` in the
//! same statement.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::domain::FailureKind;
use crate::store::storable;

/// Mirrors a job's outcome onto its lead, for the channels that have columns
/// there. Used as the tail of each outcome statement, so job and mirror commit
/// together. Expects a CTE `done(lead_id, channel, error)`.
///
/// The leads are locked first, in id order, and the mirror and the resync
/// touch a lead's rows only once it is locked: two outcome statements that
/// share leads (an email batch recorded while SMS outcomes of the same
/// leads are) then wait for each other instead of deadlocking, which
/// PostgreSQL would find only after `deadlock_timeout` (a second's stall of
/// both, measured in the processing benchmark). The claim's mirror of
/// policy verdicts locks them the same way. The locked leads are one array,
/// not a join: joined, the CTE was read again for every job (100 × 100 rows
/// for an email batch; docs/benchmarks.md, 2026-12-02).
const MIRROR: &str = "
leads as (
  select l.id from public.landing_leads l
   where l.id in (select d.lead_id from done d)
   order by l.id
   for no key update
), mirror as (
  update public.landing_leads l
     set email_sent = case when d.channel = 'email' and d.sent then true else l.email_sent end,
         email_sent_at = case when d.channel = 'email' and d.sent then now() else l.email_sent_at end,
         email_error = case when d.channel = 'email' then d.error else l.email_error end,
         sms_sent = case when d.channel = 'sms' and d.sent then true else l.sms_sent end,
         sms_sent_at = case when d.channel = 'sms' and d.sent then now() else l.sms_sent_at end,
         sms_error = case when d.channel = 'sms' then d.error else l.sms_error end
    from done d
   where l.id = d.lead_id and d.channel in ('email', 'sms')
     and l.id = any(array(select k.id from leads k))
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
   where t.lead_id = any(array(select d.lead_id from done d where d.sent))
     and t.channel = 'lead_tracking' and t.status in ('sent', 'failed', 'sending')
     and t.lead_id = any(array(select k.id from leads k))
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

impl Queue {
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
}
