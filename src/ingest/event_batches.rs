//! Stores webhook events in groups: the events that arrive while a group is
//! being committed go together in the next statement, so a busy webhook pays
//! one transaction and one round trip for many events instead of one each.
//! Each request still waits for the commit of its own event before it is
//! answered, so a 2xx still means stored; a lone event is stored at once.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use crate::domain::DeliveryState;
use crate::ingest::delivery::{self, DeliveryEvent, StoreError, Stored};
use crate::store::grouping;

/// The most events one statement stores.
const MAX_GROUP: usize = 256;

/// Every event of a group stored and applied by one call, which answers each
/// event's outcome in order. The group is ordered by message id first (each
/// message's events in arrival order), so two groups (of two `serve`
/// processes) lock the jobs they touch in one order.
pub const RECORD_EVENTS: &str =
    "select public.record_notification_events($1, $2, $3, $4, $5, $6, $7)";

struct Pending {
    event: DeliveryEvent,
    answer: oneshot::Sender<Result<Stored, StoreError>>,
}

#[derive(Debug, Clone)]
pub struct EventBatches {
    tx: mpsc::UnboundedSender<Pending>,
}

impl EventBatches {
    /// Starts the recorder; it ends when every handle is dropped.
    pub fn start(pool: Pool) -> EventBatches {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        EventBatches { tx }
    }

    /// Stores `event` and applies it; returns once that is committed.
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
/// waiting events into many small ones and wait on each other's job locks
/// (measured: 8,500–8,900 events/s with two against 9,150–9,400 with one).
async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let group = grouping::with_waiting(first, &mut rx, MAX_GROUP);
        store_group(&pool, group).await;
    }
}

async fn store_group(pool: &Pool, mut group: Vec<Pending>) {
    if group.len() == 1 {
        let Some(p) = group.pop() else { return };
        let stored = delivery::store(pool, &p.event).await;
        let _ = p.answer.send(stored);
        return;
    }
    group.sort_by(|a, b| {
        (a.event.provider, &a.event.message_id).cmp(&(b.event.provider, &b.event.message_id))
    });
    match record_all(pool, &group).await {
        Ok(outcomes) if outcomes.len() == group.len() => {
            metrics::counter!("leadrelay_webhook_events_grouped_total")
                .increment(group.len() as u64);
            for (p, stored) in group.into_iter().zip(outcomes) {
                let _ = p.answer.send(Ok(stored));
            }
        }
        result => {
            // One event's trouble (or a deadlock with the worker) must not
            // cost the others: each goes again on its own.
            if let Err(e) = result {
                tracing::debug!(error = %e, events = group.len(), "storing a group of events failed; storing each alone");
            }
            for p in group {
                let stored = delivery::store(pool, &p.event).await;
                let _ = p.answer.send(stored);
            }
        }
    }
}

async fn record_all(pool: &Pool, group: &[Pending]) -> Result<Vec<Stored>, StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    let statement = client
        .prepare_cached(RECORD_EVENTS)
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
    let row = client
        .query_one(
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
    let outcomes: Vec<String> = row.try_get(0).map_err(|e| StoreError::from_db(&e))?;
    Ok(outcomes.iter().map(|o| delivery::stored_from(o)).collect())
}
