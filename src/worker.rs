//! The worker: a sweeper that promotes due jobs and arms a timer for the next
//! one, and one lane per channel that claims due jobs and sends them.
//!
//! Lanes are independent, so a slow or failing provider never holds up the
//! other channel. A lane claims only as many jobs as it has free request slots
//! (`WORKER_CONCURRENCY`), and its lease covers the provider's pacing of that
//! batch plus the request timeout, so a job is never held while it waits
//! behind others, and never re-sent while its request is still running.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WorkerSettings;
use crate::providers::mobizon::MobizonClient;
use crate::providers::resend::{self, OutgoingEmail, ResendClient, Tag};
use crate::providers::{SendError, Sent};
use crate::queue::{Channel, ClaimedJob, Outcome, Queue};

use crate::wakeups::Wakeups;
use crate::{lead_tracking, mask, recipients, templates};

/// The template the proftest rules name.
pub const PROFTEST_TEMPLATE: &str = "proftest_result";

pub struct Worker {
    pub queue: Queue,
    pub tracking_pool: Pool,
    pub resend: ResendClient,
    pub email_from: String,
    pub mobizon: MobizonClient,
    pub product_url: String,
    pub settings: WorkerSettings,
    pub wakeups: Arc<Wakeups>,
    pub tasks: TaskTracker,
    pub sent_batches: crate::sent_batches::SentBatches,
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

    /// Promotes due jobs, then sleeps until the next one is due, the sweep
    /// interval passes, or a reconnect asks for a sweep.
    async fn sweep_loop(&self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let mut sleep_for = self.settings.sweep_interval;
            match self.queue.promote().await {
                Ok(promoted) => {
                    if promoted > 0 {
                        tracing::debug!(promoted, "promoted due jobs");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweep failed");
                    sleep_for = sleep_for.min(Duration::from_secs(1));
                }
            }
            // Webhook events that beat the worker's own write of a message id.
            if let Err(e) = self.queue.apply_all_pending_events().await {
                tracing::warn!(error = %e, "applying pending delivery events failed");
            }
            // Lanes look for work after every sweep, notification or not.
            self.wakeups.wake_all();
            if let Ok(Some(next)) = self.queue.next_due().await {
                // Wake just after the job is due, whatever pg_cron's tick is.
                sleep_for = sleep_for.min(next + Duration::from_millis(2));
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(sleep_for) => {}
                _ = self.wakeups.sweep().notified() => {}
            }
        }
    }

    async fn lane_loop(self: Arc<Self>, channel: Channel, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        // Claimed ahead of free slots, so that one claim serves many jobs
        // under load instead of one claim per finished request.
        let batch = self.settings.concurrency * 2;
        let mut claimed: VecDeque<ClaimedJob> = VecDeque::new();
        loop {
            if claimed.is_empty() {
                match self
                    .queue
                    .claim(channel, batch as i64, self.lease_for(channel, batch))
                    .await
                {
                    Ok(jobs) if !jobs.is_empty() => claimed.extend(jobs),
                    Ok(_) => {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = self.wakeups.lane(channel).notified() => {}
                            _ = tokio::time::sleep(self.settings.sweep_interval) => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(channel = channel.as_str(), error = %e, "claim failed");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let Some(job) = claimed.pop_front() else {
                continue;
            };
            let worker = Arc::clone(&self);
            let token = cancel.clone();
            self.tasks.spawn(async move {
                worker.process(job, token).await;
                drop(permit);
            });
        }
        // Stopping: what was claimed but not started goes back unsent.
        for job in claimed {
            if let Err(e) = self.queue.release(job.id, &job.lock).await {
                tracing::warn!(job_id = job.id, error = %e, "could not release job; its lease will expire");
            }
        }
    }

    /// The lease for a claim of `n`: the request timeout twice over (at least
    /// JOB_LEASE), plus the wait of the last job for a free slot (n /
    /// concurrency requests) and for its pacing turn.
    fn lease_for(&self, channel: Channel, n: usize) -> Duration {
        let pacing = match channel {
            Channel::Email => self.resend.pacer.interval(),
            Channel::Sms => self.mobizon.pacer.interval(),
            Channel::LeadTracking => Duration::ZERO,
        };
        let rounds = n.div_ceil(self.settings.concurrency.max(1)) as u32;
        self.settings.lease.max(self.settings.provider_timeout * 2)
            + self.settings.provider_timeout * rounds
            + pacing * n as u32
    }

    /// After a long pacing pause (a provider's Retry-After), the lease may be
    /// about to end: another worker could then rescue the job and send it
    /// while we do. Such a job is given back unsent instead.
    fn lease_covers_a_request(&self, job: &ClaimedJob) -> bool {
        // the request, and half as long again to record its outcome
        let needed = self.settings.provider_timeout + self.settings.provider_timeout / 2;
        let covered = tokio::time::Instant::now() + needed <= job.lease_ends;
        if !covered {
            tracing::info!(
                lead_id = %job.lead_id, job_id = job.id, channel = job.channel.as_str(),
                "lease too close to its end after waiting for the provider's pace: giving the job back unsent"
            );
        }
        covered
    }

    /// Sends one claimed job and records how it went.
    pub async fn process(&self, job: ClaimedJob, cancel: CancellationToken) {
        let outcome = match job.channel {
            Channel::Email => self.send_email(&job, &cancel).await,
            Channel::Sms => self.send_sms(&job, &cancel).await,
            Channel::LeadTracking => {
                self.sync_lead_tracking(&job).await;
                return;
            }
        };
        let Some(outcome) = outcome else {
            // Stopping before the request was made: give the job back unsent.
            if let Err(e) = self.queue.release(job.id, &job.lock).await {
                tracing::warn!(job_id = job.id, error = %e, "could not release job; its lease will expire");
            }
            return;
        };
        self.record(&job, outcome).await;
    }

    async fn send_email(&self, job: &ClaimedJob, cancel: &CancellationToken) -> Option<Outcome> {
        if let Some(outcome) = precheck(job) {
            return Some(outcome);
        }
        let lead = job.lead.as_ref()?;
        let to = match recipients::email(job.recipient.as_deref()) {
            Ok(to) => to,
            Err(reason) => {
                return Some(Outcome::Invalid {
                    error: reason.to_string(),
                });
            }
        };
        let content = templates::proftest_email(lead.name.as_deref(), &self.product_url);
        let email = OutgoingEmail {
            from: self.email_from.clone(),
            to: vec![to.clone()],
            subject: content.subject,
            html: content.html,
            text: content.text,
            tags: vec![
                Tag {
                    name: "leadrelay_job".into(),
                    value: job.id.to_string(),
                },
                Tag {
                    name: "template".into(),
                    value: job.template.clone(),
                },
            ],
        };
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = self.resend.pacer.wait_turn() => {}
        }
        if !self.lease_covers_a_request(job) {
            return None;
        }
        tracing::debug!(lead_id = %job.lead_id, job_id = job.id, to = %mask::email(&to), "sending email");
        let result = self
            .resend
            .send(&email, &resend::idempotency_key(job.id))
            .await;
        Some(self.outcome_of(job, result))
    }

    async fn send_sms(&self, job: &ClaimedJob, cancel: &CancellationToken) -> Option<Outcome> {
        if let Some(outcome) = precheck(job) {
            return Some(outcome);
        }
        let to = match recipients::phone(job.recipient.as_deref()) {
            Ok(to) => to,
            Err(reason) => {
                return Some(Outcome::Invalid {
                    error: reason.to_string(),
                });
            }
        };
        if job.previous_outcome_unknown {
            // Mobizon has no idempotency key: the crashed attempt may have
            // been delivered. Sending again is the lesser harm; say so.
            tracing::warn!(
                lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                to = %mask::phone(&to),
                "previous attempt's outcome is unknown (the worker stopped mid-request): this SMS may be delivered twice"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = self.mobizon.pacer.wait_turn() => {}
        }
        if !self.lease_covers_a_request(job) {
            return None;
        }
        let text = templates::proftest_sms(&self.product_url);
        let started = std::time::Instant::now();
        let result = self.mobizon.send(&to, &text, &job.template).await;
        observe_request("mobizon", started, &result);
        if let Err(SendError::Temporary {
            outcome_unknown: true,
            ..
        }) = &result
        {
            tracing::warn!(
                lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                "no answer from Mobizon after the request was sent: the retry may deliver this SMS twice"
            );
        }
        Some(self.outcome_of(job, result))
    }

    async fn sync_lead_tracking(&self, job: &ClaimedJob) {
        match lead_tracking::sync(&self.tracking_pool, job).await {
            Ok((email_sent, sms_sent)) => {
                match self
                    .queue
                    .record_tracked(job.id, &job.lock, email_sent, sms_sent)
                    .await
                {
                    Ok(true) => tracing::info!(
                        lead_id = %job.lead_id, job_id = job.id, channel = "lead_tracking",
                        attempt = job.attempts, outcome = "sent", email_sent, sms_sent, "state change"
                    ),
                    Ok(false) => lease_lost(job),
                    Err(e) => {
                        tracing::warn!(job_id = job.id, error = %e, "could not record lead_tracking outcome")
                    }
                }
            }
            Err(e) => {
                let outcome = self.outcome_of(job, Err(SendError::temporary(e.to_string())));
                self.record(job, outcome).await;
            }
        }
    }

    /// Turns a provider's answer into the job's next state.
    fn outcome_of(&self, job: &ClaimedJob, result: Result<Sent, SendError>) -> Outcome {
        match result {
            Ok(sent) => Outcome::Sent {
                provider_message_id: sent.provider_message_id,
            },
            Err(SendError::Permanent { message }) => Outcome::Failed { error: message },
            Err(SendError::Temporary {
                message,
                retry_after,
                rate_limited,
                ..
            }) => {
                if !rate_limited && job.attempts >= job.max_attempts {
                    Outcome::Failed {
                        error: format!(
                            "gave up after {} attempts; last error: {message}",
                            job.attempts
                        ),
                    }
                } else {
                    Outcome::Retry {
                        after: retry_after
                            .unwrap_or_else(|| self.settings.backoff.delay(job.attempts)),
                        error: message,
                        counts: !rate_limited,
                    }
                }
            }
        }
    }

    /// Records an outcome, riding out a database restart: tries for up to the
    /// lease. Past that the lease expires and the job is rescued.
    async fn record(&self, job: &ClaimedJob, outcome: Outcome) {
        let mut wait = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + self.settings.lease;
        loop {
            let recorded = match &outcome {
                Outcome::Sent {
                    provider_message_id,
                } => {
                    self.sent_batches
                        .record(job.channel, job.id, &job.lock, provider_message_id)
                        .await
                }
                other => self.queue.record(job.id, &job.lock, other).await,
            };
            match recorded {
                Ok(true) => {
                    log_state_change(job, &outcome);
                    if let Outcome::Sent {
                        provider_message_id,
                    } = &outcome
                    {
                        self.apply_early_events(job.channel, provider_message_id)
                            .await;
                    }
                    return;
                }
                Ok(false) => {
                    lease_lost(job);
                    return;
                }
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(job_id = job.id, error = %e, "could not record outcome yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(job_id = job.id, error = %e, ?outcome, "could not record outcome; the job's lease will expire and it will be retried");
                    return;
                }
            }
        }
    }
}

/// A message job whose lead is gone, or whose rule names a template we do
/// not have, ends here without a request.
fn precheck(job: &ClaimedJob) -> Option<Outcome> {
    if job.lead.is_none() {
        return Some(Outcome::Cancelled {
            error: "the lead no longer exists".into(),
        });
    }
    if job.template != PROFTEST_TEMPLATE {
        return Some(Outcome::Failed {
            error: format!(
                "no template named {:?} for channel {}: fix notification_rules, then put the job back to due",
                job.template.chars().take(64).collect::<String>(),
                job.channel.as_str()
            ),
        });
    }
    None
}

impl Worker {
    /// A delivery report can arrive before the send is recorded; it waits in
    /// notification_events and is applied now (or by the next sweep).
    async fn apply_early_events(&self, channel: Channel, message_id: &str) {
        let provider = match channel {
            Channel::Email => "resend",
            Channel::Sms => "mobizon",
            Channel::LeadTracking => return,
        };
        if let Err(e) = self.queue.apply_pending_events(provider, message_id).await {
            tracing::warn!(error = %e, "applying early delivery events failed; the next sweep retries");
        }
    }

    /// Asks Mobizon for the state of sent SMS that have none yet, for accounts
    /// whose delivery-report webhook is not set up (or missed a report).
    pub async fn sms_status_loop(&self, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let ids = match self.queue.sms_awaiting_status(100).await {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "SMS status poll: listing messages failed");
                    continue;
                }
            };
            self.mobizon.pacer.wait_turn().await;
            match self.mobizon.statuses(&ids).await {
                Ok(statuses) => {
                    for (id, status, payload) in statuses {
                        let Some(event) = crate::delivery::mobizon_polled(&id, &status, payload)
                        else {
                            continue;
                        };
                        if let Err(e) = crate::delivery::store(self.queue.pool(), &event).await {
                            tracing::warn!(error = %e, "SMS status poll: storing a status failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SMS status poll: Mobizon did not answer"),
            }
        }
    }
}

fn observe_request(
    provider: &'static str,
    started: std::time::Instant,
    result: &Result<Sent, SendError>,
) {
    let outcome = match result {
        Ok(_) => "sent",
        Err(SendError::Temporary { .. }) => "temporary_error",
        Err(SendError::Permanent { .. }) => "permanent_error",
    };
    metrics::histogram!("leadrelay_provider_request_seconds", "provider" => provider)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("leadrelay_provider_requests_total", "provider" => provider, "outcome" => outcome).increment(1);
}

fn lease_lost(job: &ClaimedJob) {
    tracing::warn!(
        lead_id = %job.lead_id, job_id = job.id, channel = job.channel.as_str(),
        "outcome not recorded: the job is no longer this worker's (its lease expired, or a newer lead_tracking sync took it back)"
    );
}

fn log_state_change(job: &ClaimedJob, outcome: &Outcome) {
    let channel = job.channel.as_str();
    let name = match outcome {
        Outcome::Sent { .. } => "sent",
        Outcome::Retry { .. } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Invalid { .. } => "invalid",
        Outcome::Cancelled { .. } => "cancelled",
    };
    metrics::counter!("leadrelay_job_outcomes_total", "channel" => channel, "outcome" => name)
        .increment(1);
    match outcome {
        Outcome::Sent {
            provider_message_id,
        } => tracing::info!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "sent", provider_message_id = %provider_message_id, "state change"
        ),
        Outcome::Retry {
            error,
            after,
            counts,
        } => tracing::info!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "retry", retry_in_s = after.as_secs_f64(), counts, error = %error, "state change"
        ),
        Outcome::Failed { error } => tracing::warn!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "failed", error = %error, "state change"
        ),
        Outcome::Invalid { error } => tracing::warn!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "invalid", error = %error, "state change"
        ),
        Outcome::Cancelled { error } => tracing::info!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "cancelled", error = %error, "state change"
        ),
    }
}
