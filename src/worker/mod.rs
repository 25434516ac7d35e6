//! The worker: a sweeper that promotes due jobs and arms a timer for the next
//! one, and one lane per channel that claims due jobs and sends them.
//!
//! Lanes are independent, so a slow or failing provider never holds up the
//! other channel. A lane claims four to twenty times `WORKER_CONCURRENCY`
//! jobs ahead (more while claims come back full), so one claim serves many
//! requests under load; at most
//! `WORKER_CONCURRENCY` requests are in flight. The claim's lease covers the
//! provider's pacing of the whole claim plus the request timeout, so a job is
//! never re-sent while its request is still running, and a job that waited
//! until its lease was nearly over is given back unsent.
//!
//! The worker room, one module per step a job goes through: `sweep`
//! (promotion, the timer, housekeeping), `lanes` (claiming and handing out
//! work), `email` and `sms` (building and sending), `record` (what the
//! outcome was, written back), `observe` (metrics and logs); with the
//! listener and wake-ups, the retry schedule, sent-outcome grouping, the SMS
//! look-up and the `lead_tracking` sync beside them. It uses `ingest`, `providers`, `store`,
//! `messages` and `domain`; `http`, `config` and `serve` use it.

mod email;
mod lanes;
pub mod lead_tracking;
pub mod listener;
mod observe;
pub mod preview;
mod record;
pub mod rendering;
pub mod retry;
pub mod sent_batches;
mod sms;
pub mod sms_lookup;
mod sweep;
pub mod template_check;
pub mod wakeups;

pub(crate) use observe::{lease_lost, log_state_change};

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::providers::mobizon::MobizonClient;
use crate::providers::resend::ResendClient;
use crate::store::queue::{Channel, Queue};

use crate::worker::sms_lookup::UnknownOutcome;
use crate::worker::wakeups::Wakeups;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often the table is swept for due jobs even without a notification.
    pub sweep_interval: std::time::Duration,
    /// How long a claimed job is ours before another worker may rescue it.
    pub lease: std::time::Duration,
    /// The longest a provider request may take, connection included.
    pub provider_timeout: std::time::Duration,
    pub backoff: crate::worker::retry::Backoff,
    /// Requests in flight per channel.
    pub concurrency: usize,
    /// How long SIGTERM waits for requests in flight.
    pub shutdown_grace: std::time::Duration,
    /// What happens to an SMS whose earlier attempt got no answer.
    pub sms_unknown_outcome: UnknownOutcome,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        use crate::domain::defaults;
        WorkerSettings {
            sweep_interval: defaults::SWEEP_INTERVAL,
            lease: defaults::JOB_LEASE,
            provider_timeout: defaults::PROVIDER_TIMEOUT,
            backoff: crate::worker::retry::Backoff {
                base: defaults::RETRY_BASE_DELAY,
                max: defaults::RETRY_MAX_DELAY,
            },
            concurrency: defaults::WORKER_CONCURRENCY,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            sms_unknown_outcome: UnknownOutcome::parse(defaults::SMS_UNKNOWN_OUTCOME)
                .unwrap_or_default(),
        }
    }
}

pub struct Worker {
    pub queue: Queue,
    pub tracking_pool: Pool,
    /// Shared with the console's reconciliation: one pacer for the team's limit.
    pub resend: Arc<ResendClient>,
    pub email_from: String,
    /// The most emails per batch request; 1: every email on its own.
    pub email_batch_size: usize,
    pub mobizon: Arc<MobizonClient>,
    pub product_url: String,
    /// Signs each message's unsubscribe link (`unsubscribe_url`,
    /// `List-Unsubscribe`).
    pub unsubscribe: crate::messages::unsubscribe::Links,
    /// Compiled message templates, by version.
    pub templates: rendering::TemplateCache,
    pub settings: WorkerSettings,
    pub wakeups: Arc<Wakeups>,
    pub tasks: TaskTracker,
    pub sent_batches: crate::worker::sent_batches::SentBatches,
}

impl Worker {
    /// Starts the sweeper and the lanes; they stop claiming when `cancel`
    /// fires. Await `self.tasks` (closed by then) for the requests in flight.
    pub fn start(self: &Arc<Self>, cancel: &CancellationToken) {
        let worker = Arc::clone(self);
        let token = cancel.clone();
        self.tasks
            .spawn(async move { worker.sweep_loop(token).await });
        for channel in Channel::ALL {
            let worker = Arc::clone(self);
            let token = cancel.clone();
            self.tasks
                .spawn(async move { worker.lane_loop(channel, token).await });
        }
    }
}
