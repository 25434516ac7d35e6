//! Records `sent` outcomes in batches: under load, many requests finish at
//! once, and one statement for all of them (per channel) replaces one round
//! trip per job. A job's task waits for its own answer, so "recorded" still
//! means committed, and shutdown still waits for it.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use crate::store::queue::{Channel, Queue, QueueError};

/// The most outcomes one statement records.
const MAX_BATCH: usize = 500;

struct Pending {
    channel: Channel,
    job_id: i64,
    lock: String,
    provider_message_id: String,
    campaign_id: Option<String>,
    answer: oneshot::Sender<Result<bool, QueueError>>,
}

#[derive(Debug, Clone)]
pub struct SentBatches {
    tx: mpsc::UnboundedSender<Pending>,
}

impl SentBatches {
    /// Starts the recorder; it ends when every handle is dropped.
    pub fn start(queue: Queue) -> SentBatches {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, rx));
        SentBatches { tx }
    }

    /// Records that `job_id` was accepted as `provider_message_id` (of
    /// Mobizon's `campaign_id`); true when the job was still ours.
    pub async fn record(
        &self,
        channel: Channel,
        job_id: i64,
        lock: &str,
        provider_message_id: &str,
        campaign_id: Option<&str>,
    ) -> Result<bool, QueueError> {
        let (answer, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                channel,
                job_id,
                lock: lock.to_string(),
                provider_message_id: provider_message_id.to_string(),
                campaign_id: campaign_id.map(str::to_string),
                answer,
            })
            .map_err(|_| QueueError::Db("the outcome recorder has stopped".into()))?;
        wait.await
            .unwrap_or_else(|_| Err(QueueError::Db("the outcome recorder has stopped".into())))
    }
}

async fn run(queue: Queue, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let batch = crate::store::grouping::with_waiting(first, &mut rx, MAX_BATCH);
        // One statement per channel: the mirror update joins on the lead,
        // which must appear once per statement.
        let mut by_channel: HashMap<Channel, Vec<Pending>> = HashMap::new();
        for p in batch {
            by_channel.entry(p.channel).or_default().push(p);
        }
        for (channel, group) in by_channel {
            let ids: Vec<i64> = group.iter().map(|p| p.job_id).collect();
            let message_ids: Vec<String> = group
                .iter()
                .map(|p| p.provider_message_id.clone())
                .collect();
            let locks: Vec<String> = group.iter().map(|p| p.lock.clone()).collect();
            let campaign_ids: Vec<Option<String>> =
                group.iter().map(|p| p.campaign_id.clone()).collect();
            let result = queue
                .record_sent_batch(channel, &ids, &message_ids, &locks, &campaign_ids)
                .await;
            for p in group {
                let answer = result
                    .as_ref()
                    .map(|recorded| recorded.contains(&p.job_id))
                    .map_err(Clone::clone);
                let _ = p.answer.send(answer);
            }
        }
    }
}
