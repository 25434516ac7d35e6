//! The job queue in PostgreSQL: every statement the worker runs, each one short
//! and committed on its own. No transaction or row lock is held while a
//! provider is called: a claim sets `sending` with a lease and commits; the
//! outcome is recorded by a second statement that also updates the mirror on
//! `landing_leads` (both in one statement, so they commit together).
//!
//! By step: `claim` (the two claims and what a claimed row holds), `record`
//! (writing an outcome back, with the mirror), `sweep` (promotion, the glance
//! for due jobs, early delivery events, pruning).

/// How long past its moment a scheduled job is left to the claims, which
/// take it as it is; the promotion takes it after that (`PROMOTE`). The
/// claims and the glance look back twice as far, no further: every job that
/// left `scheduled` since the table's last vacuum leaves a dead entry at its
/// moment in the index they read, and a look from the beginning of time
/// walks them all (at 50,000 of them, 0.34 ms of the claim against
/// 0.01 ms; autovacuum's default waits for a fifth of the table).
macro_rules! left_to_claims {
    () => {
        "interval '1 minute'"
    };
}

mod claim;
mod record;
mod sweep;

pub use claim::*;
pub use record::*;
pub use sweep::*;

use deadpool_postgres::Pool;

use super::describe;
pub use crate::domain::Channel;

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
}
