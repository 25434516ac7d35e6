//! Stores webhook events in groups: the events that arrive while a group is
//! being committed go together in the next statement, so a busy webhook pays
//! one transaction and one round trip for many events instead of one each.
//!
//! A lone event, while nothing this process stored waits to be applied, is
//! stored and applied at once, before its answer. A group is written into
//! `notification_event_inbox` and answered as soon as that commits (a 2xx
//! means stored, which is what the providers ask). The applier applies what
//! has piled up there at the first quiet moment, or once the oldest of it
//! has waited `MAX_LAG`: during a flood the answers get the cores, and the
//! applying, done in large calls, costs less per event. Measured in
//! docs/benchmarks.md (2026-12-02, "Webhooks answered once stored").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::domain::DeliveryState;
use crate::ingest::delivery::{self, DeliveryEvent, StoreError, Stored};
use crate::store::grouping;

/// The most events one statement stores.
const MAX_GROUP: usize = 256;

/// The most events one call of the applier takes: a call holds its jobs'
/// row locks until it commits (about 35 µs an event), so the worker's claim
/// of one of them waits at most that long.
pub const APPLY_LIMIT: i32 = 500;

/// How often the applier looks in the inbox without being woken: for the
/// events another process (or a run that stopped) left there.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// A flood has paused when no group has been stored for this long (groups
/// follow one another within a millisecond or two while it lasts).
const QUIET: Duration = Duration::from_millis(20);

/// The longest a stored event waits for a quiet moment: the delivery state
/// of a report shows at most this late, even under a flood that never
/// pauses.
pub const MAX_LAG: Duration = Duration::from_secs(5);

/// A group's events into the inbox, in arrival order (the ids keep it).
pub const STORE_IN_INBOX: &str = "
insert into public.notification_event_inbox
  (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload, delivery_status)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::jsonb[], $7::text[])";

/// Applies up to $1 events of the inbox, oldest first; answers how many.
pub const APPLY_INBOX: &str = "select public.apply_notification_event_inbox($1)";

struct Pending {
    event: DeliveryEvent,
    answer: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Which of this process's inbox writes the applier has caught up with: a
/// lone event is applied at once only when it has, so that no event of a
/// message overtakes an earlier one still in the inbox.
#[derive(Debug, Default)]
struct Progress {
    stored: AtomicU64,
    applied: AtomicU64,
    wake: Notify,
}

#[derive(Debug, Clone)]
pub struct EventBatches {
    tx: mpsc::UnboundedSender<Pending>,
}

impl EventBatches {
    /// Starts the recorder and the applier; they end when every handle is
    /// dropped, the applier after one last look in the inbox.
    pub fn start(pool: Pool) -> EventBatches {
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress::default());
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(apply_loop(pool.clone(), Arc::clone(&progress), done_rx));
        tokio::spawn(async move {
            run(pool, rx, progress).await;
            let _ = done_tx.send(());
        });
        EventBatches { tx }
    }

    /// Stores `event` (applying it too when it comes alone); returns once
    /// that is committed.
    pub async fn store(&self, event: DeliveryEvent) -> Result<Stored, StoreError> {
        let (answer, wait) = oneshot::channel();
        let stopped = || StoreError::Pool("the event recorder has stopped".into());
        self.tx
            .send(Pending { event, answer })
            .map_err(|_| stopped())?;
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// One group at a time: the events that arrive while a group is stored make
/// the next group, so the groups stay large; two groups at once split the
/// waiting events into many small ones (measured: 8,500–8,900 events/s with
/// two against 9,150–9,400 with one, when groups were applied in line).
async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<Pending>, progress: Arc<Progress>) {
    while let Some(first) = rx.recv().await {
        let group = grouping::with_waiting(first, &mut rx, MAX_GROUP);
        store_group(&pool, group, &progress).await;
    }
}

async fn store_group(pool: &Pool, mut group: Vec<Pending>, progress: &Progress) {
    let caught_up =
        progress.applied.load(Ordering::Acquire) == progress.stored.load(Ordering::Acquire);
    if group.len() == 1 && caught_up {
        let Some(p) = group.pop() else { return };
        let stored = delivery::store(pool, &p.event).await;
        let _ = p.answer.send(stored);
        return;
    }
    match store_in_inbox(pool, &group).await {
        Ok(()) => {
            progress.stored.fetch_add(1, Ordering::AcqRel);
            progress.wake.notify_one();
            metrics::counter!("leadrelay_webhook_events_grouped_total")
                .increment(group.len() as u64);
            for p in group {
                let _ = p.answer.send(Ok(Stored::Received));
            }
        }
        Err(e) => {
            // One event's trouble must not cost the others: each goes again
            // on its own, applied at once, so that its own error is its own.
            tracing::debug!(error = %e, events = group.len(), "storing a group of events failed; storing each alone");
            for p in group {
                let stored = delivery::store(pool, &p.event).await;
                let _ = p.answer.send(stored);
            }
        }
    }
}

async fn store_in_inbox(pool: &Pool, group: &[Pending]) -> Result<(), StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    let statement = client
        .prepare_cached(STORE_IN_INBOX)
        .await
        .map_err(|e| StoreError::from_db(&e))?;
    let events = group.iter().map(|p| &p.event);
    let providers: Vec<&str> = events.clone().map(|e| e.provider).collect();
    let ids: Vec<&str> = events.clone().map(|e| e.event_id.as_str()).collect();
    let types: Vec<&str> = events.clone().map(|e| e.event_type.as_str()).collect();
    let message_ids: Vec<Option<&str>> = events.clone().map(|e| e.message_id.as_deref()).collect();
    let occurred: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        events.clone().map(|e| e.occurred_at).collect();
    let payloads: Vec<&serde_json::Value> = events.clone().map(|e| &e.payload).collect();
    let statuses: Vec<Option<&str>> = events
        .map(|e| e.delivery_status.map(DeliveryState::as_str))
        .collect();
    client
        .execute(
            &statement,
            &[
                &providers,
                &ids,
                &types,
                &message_ids,
                &occurred,
                &payloads,
                &statuses,
            ],
        )
        .await
        .map_err(|e| StoreError::from_db(&e))?;
    Ok(())
}

/// Applies the inbox: at start (what an earlier run left), whenever a group
/// is stored, every `LOOK_EVERY` (what another process left), and one last
/// time once the recorder has ended. A failure (the database away, a
/// deadlock with the worker) leaves the events in the inbox for the next try.
async fn apply_loop(pool: Pool, progress: Arc<Progress>, mut done: oneshot::Receiver<()>) {
    let mut failures = 0u32;
    let mut last = false;
    loop {
        match drain(&pool, &progress).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics::counter!("leadrelay_webhook_inbox_errors_total").increment(1);
                tracing::warn!(error = %e, failures, "applying the stored webhook events failed; they wait in the inbox");
                if !last {
                    tokio::time::sleep(retry_after(failures)).await;
                    continue;
                }
            }
        }
        if last {
            return;
        }
        last = tokio::select! {
            _ = progress.wake.notified() => quiet_moment(&progress, &mut done).await,
            _ = tokio::time::sleep(LOOK_EVERY) => false,
            _ = &mut done => true,
        };
    }
}

/// Waits, after a group was stored, until none has been for `QUIET`, or
/// `MAX_LAG` has passed; true when the recorder ended meanwhile.
async fn quiet_moment(progress: &Progress, done: &mut oneshot::Receiver<()>) -> bool {
    let since = tokio::time::Instant::now();
    loop {
        let left = MAX_LAG.saturating_sub(since.elapsed());
        if left.is_zero() {
            return false;
        }
        tokio::select! {
            _ = progress.wake.notified() => continue,
            _ = tokio::time::sleep(QUIET.min(left)) => return false,
            _ = &mut *done => return true,
        }
    }
}

/// Calls the applier until the inbox holds less than a call's worth.
async fn drain(pool: &Pool, progress: &Progress) -> Result<(), StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    let statement = client
        .prepare_cached(APPLY_INBOX)
        .await
        .map_err(|e| StoreError::from_db(&e))?;
    loop {
        // every group counted before this call committed before it began
        let seen = progress.stored.load(Ordering::Acquire);
        let taken: i32 = client
            .query_one(&statement, &[&APPLY_LIMIT])
            .await
            .map_err(|e| StoreError::from_db(&e))?
            .try_get(0)
            .map_err(|e| StoreError::from_db(&e))?;
        if taken > 0 {
            metrics::counter!("leadrelay_webhook_events_applied_after_total")
                .increment(taken as u64);
        }
        if taken < APPLY_LIMIT {
            progress.applied.fetch_max(seen, Ordering::AcqRel);
            return Ok(());
        }
    }
}

/// 50 ms, doubling, at most 5 s.
fn retry_after(failures: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applier_backs_off_to_five_seconds() {
        assert_eq!(retry_after(1), Duration::from_millis(100));
        assert_eq!(retry_after(3), Duration::from_millis(400));
        assert_eq!(retry_after(7), Duration::from_secs(5));
        assert_eq!(retry_after(u32::MAX), Duration::from_secs(5));
    }
}
