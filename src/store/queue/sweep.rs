//! The sweep's statements: promotion, the glance for due jobs, early
//! delivery events, the SMS status poll's list, pruning.

use std::time::Duration;

use super::*;

/// The sweep's promotion, and pg_cron's (20261216090000 schedules this very
/// command; a test holds the two equal): a scheduled job past its moment for
/// less than a minute is left to the claims, which take it as it is (the
/// sweeper's timer woke the lanes at its moment), so a burst due at one
/// moment is written once, and no promotion's row locks hide it from the
/// claims. Expired leases, and email batches, are promoted at once.
pub const PROMOTE: &str = concat!(
    "select public.promote_due_notification_jobs(10000, ",
    left_to_claims!(),
    ")"
);

/// One bounded batch of housekeeping (old provider events, pg_cron's run
/// log); the worker runs it only where pg_cron does not.
pub const PRUNE_HISTORY: &str = "select public.prune_leadrelay_history()::text";

/// Whether pg_cron runs in this database: the migrations then scheduled the
/// promotion and the pruning there.
pub const PG_CRON_HERE: &str =
    "select exists (select 1 from pg_extension where extname = 'pg_cron')";

/// Seconds until the next scheduled job is due, or null; and whether any
/// job is claimable now (due, or scheduled with its moment passed, as far
/// back as the claims look: the claim takes both; older ones the promotion
/// just before the glance made due). Three probes of partial indexes, each
/// a range of the index bounded by `now()` (`clock_timestamp()` is volatile
/// and cannot bound an index scan): the first reads from now up to the
/// first job to come, not from the beginning of the index (the dead entries
/// of every job gone since the last vacuum, 1.4–1.7 ms a glance at 50,000
/// of them against 0.17–0.19 ms). A job whose moment passed between now()
/// and the clock's reading is the next moment, due in 0 s.
pub const GLANCE: &str = concat!(
    "
select (select extract(epoch from (j.due_at - clock_timestamp()))::float8
          from public.notification_jobs j
         where j.status = 'scheduled' and j.due_at > now()
         order by j.due_at
         limit 1),
       exists (select 1 from public.notification_jobs where status = 'due')
       or exists (select 1 from public.notification_jobs
                   where status = 'scheduled' and due_at <= now()
                     and due_at > now() - 2 * ",
    left_to_claims!(),
    ")"
);

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

/// What the sweeper sees between sweeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Glance {
    /// How long until the next scheduled job is due, if any is yet to be.
    pub next_due: Option<Duration>,
    /// Whether jobs are claimable now.
    pub any_due: bool,
}

// Every statement here is prepared once per connection (`prepare_cached`):
// the sweeper runs them every few seconds for the life of the process, and
// an unnamed statement is parsed and described again at each call, one more
// round trip.
impl Queue {
    /// Promotes due jobs (and rescues expired leases); returns how many.
    /// Prunes one batch of old history, unless pg_cron does it here; returns
    /// what was deleted, as JSON text, when it ran.
    pub async fn prune_history_without_pg_cron(&self) -> Result<Option<String>, QueueError> {
        let client = self.pool.get().await?;
        let here = client.prepare_cached(PG_CRON_HERE).await?;
        if client.query_one(&here, &[]).await?.get::<_, bool>(0) {
            return Ok(None);
        }
        let prune = client.prepare_cached(PRUNE_HISTORY).await?;
        Ok(Some(client.query_one(&prune, &[]).await?.get(0)))
    }

    pub async fn promote(&self) -> Result<i32, QueueError> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(PROMOTE).await?;
        Ok(client.query_one(&st, &[]).await?.get(0))
    }

    pub async fn apply_all_pending_events(&self) -> Result<i32, QueueError> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(APPLY_ALL_PENDING).await?;
        Ok(client.query_one(&st, &[]).await?.get(0))
    }

    pub async fn sms_awaiting_status(&self, limit: i64) -> Result<Vec<String>, QueueError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &client.prepare_cached(SMS_AWAITING_STATUS).await?,
                &[&limit],
            )
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
