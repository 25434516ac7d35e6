//! The worker: a sweeper that promotes due jobs and arms a timer for the next
//! one, and one lane per channel that claims due jobs and sends them.
//!
//! Lanes are independent, so a slow or failing provider never holds up the
//! other channel. A lane claims up to four times `WORKER_CONCURRENCY` jobs
//! ahead, so one claim serves many requests under load; at most
//! `WORKER_CONCURRENCY` requests are in flight. The claim's lease covers the
//! provider's pacing of the whole claim plus the request timeout, so a job is
//! never re-sent while its request is still running, and a job that waited
//! until its lease was nearly over is given back unsent.
//!
//! The worker room: the sweeper and the lanes here, with the listener and
//! wake-ups, the retry schedule, sent-outcome grouping and the
//! `lead_tracking` sync beside them. It uses `ingest`, `providers`, `store`,
//! `messages` and `domain`; `http`, `config` and `serve` use it.

pub mod lead_tracking;
pub mod listener;
pub mod preview;
pub mod rendering;
pub mod retry;
pub mod sent_batches;
pub mod sms_lookup;
pub mod template_check;
pub mod wakeups;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::providers::mobizon::MobizonClient;
use crate::providers::resend::{self, OutgoingEmail, ResendClient, Tag};
use crate::providers::{SendError, Sent};
use crate::store::queue::{BatchRetry, Channel, ClaimedJob, Outcome, Queue, QueueError};

use crate::messages::templates::EmailContent;
use crate::messages::{mask, recipients};
use crate::worker::sms_lookup::{SmsEnd, UnknownOutcome};
use crate::worker::wakeups::Wakeups;

/// What one lane slot sends: one job, or the members of one email batch
/// (one request to the batch endpoint).
#[derive(Debug)]
enum Work {
    One(Box<ClaimedJob>),
    Batch(Vec<ClaimedJob>),
}

impl Work {
    fn jobs(self) -> Vec<ClaimedJob> {
        match self {
            Work::One(job) => vec![*job],
            Work::Batch(jobs) => jobs,
        }
    }
}

/// Claimed jobs as units of work: the members of each batch together, in
/// job-id order (the order of the batch request), the rest one by one.
fn group(jobs: Vec<ClaimedJob>) -> Vec<Work> {
    let mut work: Vec<Work> = Vec::new();
    let mut batches: std::collections::HashMap<String, usize> = Default::default();
    for job in jobs {
        let Some(key) = job.batch_key.clone() else {
            work.push(Work::One(Box::new(job)));
            continue;
        };
        match batches.get(&key) {
            Some(&i) => {
                if let Work::Batch(members) = &mut work[i] {
                    members.push(job);
                }
            }
            None => {
                batches.insert(key, work.len());
                work.push(Work::Batch(vec![job]));
            }
        }
    }
    for item in &mut work {
        if let Work::Batch(members) = item {
            members.sort_by_key(|j| j.id);
        }
    }
    work
}

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
        use std::time::Duration;
        WorkerSettings {
            sweep_interval: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            provider_timeout: Duration::from_secs(15),
            backoff: crate::worker::retry::Backoff {
                base: Duration::from_secs(30),
                max: Duration::from_secs(3600),
            },
            concurrency: 4,
            shutdown_grace: Duration::from_secs(20),
            sms_unknown_outcome: UnknownOutcome::Lookup,
        }
    }
}

/// How often the sweeper looks for jobs that came in since (at most).
const GLANCE_EVERY: Duration = Duration::from_secs(1);
/// A job held at least this long before its request is checked again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Where pg_cron does not prune (every 10 minutes), the sweep does, hourly:
/// one bounded batch a time (`prune_leadrelay_history`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct Worker {
    pub queue: Queue,
    pub tracking_pool: Pool,
    pub resend: ResendClient,
    pub email_from: String,
    /// The most emails per batch request; 1: every email on its own.
    pub email_batch_size: usize,
    pub mobizon: MobizonClient,
    pub product_url: String,
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

    /// Promotes due jobs, then sleeps until the next one is due, a glance
    /// passes, or a reconnect asks for a sweep.
    ///
    /// Landing inserts send no notification (it would serialise their
    /// commits), so a glance every second (GLANCE: two index probes) finds
    /// jobs that came in since: a job due at once is sent within about a
    /// second, and a job due later is sent by the timer armed for it. The
    /// rest of the sweep (early delivery events) runs every sweep interval.
    async fn sweep_loop(&self, cancel: CancellationToken) {
        let glance_every = self.settings.sweep_interval.min(GLANCE_EVERY);
        let mut next_full = tokio::time::Instant::now();
        let mut next_prune = tokio::time::Instant::now();
        let mut templates_seen = None;
        while !cancel.is_cancelled() {
            let mut sleep_for = glance_every;
            match self.queue.promote().await {
                Ok(promoted) => {
                    if promoted > 0 {
                        tracing::debug!(promoted, "promoted due jobs");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            let full = tokio::time::Instant::now() >= next_full;
            if full {
                next_full = tokio::time::Instant::now() + self.settings.sweep_interval;
                // Webhook events that beat the worker's own write of a message id.
                if let Err(e) = self.queue.apply_all_pending_events().await {
                    tracing::warn!(error = %e, "applying pending delivery events failed");
                }
                self.recheck_templates(&mut templates_seen).await;
            }
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                match self.queue.prune_history_without_pg_cron().await {
                    Ok(Some(pruned)) => tracing::debug!(%pruned, "pruned old history"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning old history failed"),
                }
            }
            match self.queue.glance().await {
                Ok(glance) => {
                    // Lanes look for work after every full sweep, and whenever
                    // due jobs wait.
                    if full || glance.any_due {
                        self.wakeups.wake_all();
                    }
                    if let Some(next) = glance.next_due {
                        // Wake just after the job is due, whatever pg_cron's tick is.
                        sleep_for = sleep_for.min(next + Duration::from_millis(2));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for due jobs failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(sleep_for) => {}
                _ = self.wakeups.sweep().notified() => next_full = tokio::time::Instant::now(),
            }
        }
    }

    async fn lane_loop(self: Arc<Self>, channel: Channel, cancel: CancellationToken) {
        // Requests in flight, and jobs in hand (sent, or being sent, and not
        // yet recorded): a slow database holds back new requests.
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let in_hand = Arc::new(Semaphore::new(self.settings.concurrency * 4));
        // Claimed ahead of free slots, so that one claim serves many jobs
        // under load instead of one claim per finished request.
        let ahead = self.settings.concurrency * 4;
        let mut claimed: VecDeque<Work> = VecDeque::new();
        loop {
            if claimed.is_empty() {
                match self.claim_work(channel, ahead).await {
                    Ok(work) if !work.is_empty() => claimed.extend(work),
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
            let (in_hand, request_slot) = tokio::select! {
                _ = cancel.cancelled() => break,
                permits = async {
                    let in_hand = Arc::clone(&in_hand).acquire_owned().await?;
                    let request_slot = Arc::clone(&slots).acquire_owned().await?;
                    Ok::<_, tokio::sync::AcquireError>((in_hand, request_slot))
                } => match permits {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let Some(work) = claimed.pop_front() else {
                continue;
            };
            let worker = Arc::clone(&self);
            let token = cancel.clone();
            self.tasks.spawn(async move {
                match work {
                    Work::One(job) => worker.process(*job, token, request_slot).await,
                    Work::Batch(jobs) => worker.process_batch(jobs, token, request_slot).await,
                }
                drop(in_hand);
            });
        }
        // Stopping: what was claimed but not started goes back unsent.
        for work in claimed {
            self.release_all(work.jobs()).await;
        }
    }

    /// The next claim of a lane: for email with batching, batches that are
    /// due again come first, whole; then due jobs, the fresh ones of which
    /// become one new batch.
    async fn claim_work(&self, channel: Channel, ahead: usize) -> Result<Vec<Work>, QueueError> {
        // A lease for `ahead` requests: a longer claim (a batch plus retried
        // singles) is still safe, since a job whose lease runs short before
        // its request is given back unsent.
        let lease = self.lease_for(channel, ahead);
        // Batches already made are always claimed (their members carry their
        // key and are skipped by the plain claim), whatever
        // RESEND_BATCH_SIZE says now: it decides only whether new ones are
        // made. Otherwise a batch waiting for its retry when an operator sets
        // RESEND_BATCH_SIZE=1 would stay due for good.
        if channel == Channel::Email {
            let again = self
                .queue
                .claim_batches(self.settings.concurrency as i64, lease)
                .await?;
            let work = self.put_off_incomplete_batches(group(again)).await;
            if !work.is_empty() {
                return Ok(work);
            }
        }
        let batching = channel == Channel::Email && self.email_batch_size > 1;
        let limit = if batching {
            self.email_batch_size
        } else {
            ahead
        };
        let jobs = self
            .queue
            .claim(channel, limit as i64, lease, batching)
            .await?;
        Ok(group(jobs))
    }

    /// A batch some of whose members are elsewhere (scheduled, or still held
    /// by a lease) must not go in part: Resend would answer a different body
    /// under the same key with a 409, or send a second copy under a new key.
    /// Its due members wait until the rest is expected back, then all go.
    async fn put_off_incomplete_batches(&self, work: Vec<Work>) -> Vec<Work> {
        let mut ready = Vec::with_capacity(work.len());
        for item in work {
            let until = match &item {
                Work::Batch(jobs) => jobs.first().and_then(|j| j.rest_of_batch_until),
                Work::One(_) => None,
            };
            let Some(until) = until else {
                ready.push(item);
                continue;
            };
            let jobs = item.jobs();
            tracing::info!(
                batch_key = jobs[0].batch_key.as_deref().unwrap_or(""), members_due = jobs.len(), %until,
                "part of an email batch is not due yet: its due members wait for the rest"
            );
            let retry = BatchRetry {
                after: Duration::ZERO,
                at: Some(until),
                counts: false,
                dissolve: false,
                unknown_since: None,
            };
            if let Err(e) = self
                .queue
                .record_batch_retry(&jobs, "waiting for the rest of its email batch", retry)
                .await
            {
                tracing::warn!(error = %e, "could not put off an incomplete batch; its lease will expire");
            }
        }
        ready
    }

    async fn release_all(&self, jobs: Vec<ClaimedJob>) {
        for job in jobs {
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

    /// Just before a job's request: a job held longer than
    /// `RECHECK_AFTER` (waiting for a slot or the provider's pace) is asked
    /// about again, and one whose lead was deleted meanwhile (its job row
    /// deleted with it) or that was taken back is not sent. A failed check
    /// does not stop the send: the database being away cancels nothing.
    async fn still_to_send(&self, job: &ClaimedJob) -> bool {
        if !self.lease_covers_a_request(job) {
            return false;
        }
        if job.claimed_at.elapsed() < RECHECK_AFTER {
            return true;
        }
        match self.queue.still_held(job.id, &job.lock).await {
            Ok(true) | Err(_) => true,
            Ok(false) => {
                tracing::info!(
                    lead_id = %job.lead_id, job_id = job.id, channel = job.channel.as_str(),
                    "the job was deleted with its lead (or taken back) while waiting: not sent"
                );
                false
            }
        }
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

    /// Sends one claimed job and records how it went. `request_slot` is
    /// given back as soon as the provider has answered: the lane's
    /// concurrency bounds requests in flight, and recording is the
    /// database's work.
    async fn process(
        &self,
        job: ClaimedJob,
        cancel: CancellationToken,
        request_slot: OwnedSemaphorePermit,
    ) {
        let outcome = match job.channel {
            Channel::Email => self.send_email(&job, &cancel).await,
            Channel::Sms => match self.send_sms(&job, &cancel).await {
                SmsEnd::Record(outcome) => Some(outcome),
                SmsEnd::Release => None,
                SmsEnd::Recorded => return,
            },
            Channel::LeadTracking => {
                self.sync_lead_tracking(&job).await;
                return;
            }
        };
        drop(request_slot);
        let Some(outcome) = outcome else {
            // Stopping before the request was made: give the job back unsent.
            if let Err(e) = self.queue.release(job.id, &job.lock).await {
                tracing::warn!(job_id = job.id, error = %e, "could not release job; its lease will expire");
            }
            return;
        };
        self.record(&job, outcome).await;
    }

    /// The email of job `job`, or the outcome that ends it without a request.
    async fn email_for(&self, job: &ClaimedJob) -> Result<OutgoingEmail, Outcome> {
        if let Some(outcome) = precheck(job) {
            return Err(outcome);
        }
        let to =
            recipients::email(job.recipient.as_deref()).map_err(|reason| Outcome::Invalid {
                error: reason.to_string(),
            })?;
        let content = self.email_content(job).await?;
        let mut email = OutgoingEmail {
            from: self.email_from.clone(),
            to: vec![to],
            subject: None,
            html: None,
            text: None,
            template: None,
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
        match content {
            EmailContent::Inline {
                subject,
                html,
                text,
            } => {
                email.subject = Some(subject);
                email.html = Some(html);
                email.text = text;
            }
            EmailContent::Hosted {
                id,
                subject,
                variables,
            } => {
                email.subject = subject;
                email.template = Some(resend::HostedTemplate { id, variables });
            }
        }
        Ok(email)
    }

    async fn send_email(&self, job: &ClaimedJob, cancel: &CancellationToken) -> Option<Outcome> {
        let email = match self.email_for(job).await {
            Ok(email) => email,
            Err(outcome) => return Some(outcome),
        };
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = self.resend.pacer.wait_turn() => {}
        }
        if !self.still_to_send(job).await {
            return None;
        }
        tracing::debug!(lead_id = %job.lead_id, job_id = job.id, to = %mask::email(&email.to[0]), "sending email");
        let result = self
            .resend
            .send(
                &email,
                &resend::idempotency_key(job.id, job.idempotency_key.as_deref()),
            )
            .await;
        Some(self.outcome_of(job, result))
    }

    /// Sends the members of one email batch in one request, under the key
    /// stored when they were first claimed, and records how it went for all
    /// of them at once.
    ///
    /// Members that end without a request (lead gone, unusable address) are
    /// recorded first, so that they are no longer part of the batch when it
    /// is sent: a batch sent again after a crash then has the same members,
    /// the same body and the same key, and Resend answers it from its
    /// idempotency store instead of sending twice.
    async fn process_batch(
        &self,
        jobs: Vec<ClaimedJob>,
        cancel: CancellationToken,
        request_slot: OwnedSemaphorePermit,
    ) {
        let Some(key) = jobs.first().and_then(|j| j.batch_key.clone()) else {
            return;
        };
        let mut members = Vec::with_capacity(jobs.len());
        let mut emails = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.email_for(&job).await {
                Ok(email) => {
                    members.push(job);
                    emails.push(email);
                }
                Err(outcome) => self.record(&job, outcome).await,
            }
        }
        let Some(first) = members.first() else {
            return;
        };
        if emails.iter().any(|e| e.template.is_some()) {
            // Resend's batch endpoint is not documented to take hosted
            // templates. The template version is fixed by the first claim,
            // so this is known before the batch is ever sent: dissolving
            // it cannot send anything twice.
            let retry = BatchRetry {
                after: Duration::ZERO,
                at: None,
                counts: false,
                dissolve: true,
                unknown_since: None,
            };
            let error = "emails from a template Resend hosts are sent one by one";
            return self.record_batch_retry(&members, error, retry).await;
        }
        if first.previous_outcome_unknown {
            tracing::info!(
                batch_key = %key, members = members.len(),
                "sending an email batch again after an unknown outcome: same key and body, so Resend sends nothing twice"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return self.release_all(members).await,
            _ = self.resend.pacer.wait_turn() => {}
        }
        if !self.lease_covers_a_request(first) {
            return self.release_all(members).await;
        }
        tracing::debug!(batch_key = %key, members = members.len(), "sending email batch");
        metrics::histogram!("leadrelay_email_batch_size").record(members.len() as f64);
        let result = self.resend.send_batch(&emails, &key).await;
        drop(request_slot);
        match result {
            Ok(sent) => self.record_batch_sent(&members, sent).await,
            Err(SendError::Permanent { message })
                if !resend::key_used_with_other_contents(&message) =>
            {
                // Refused as a whole, nothing sent (strict validation): each
                // member goes on its own, where a bad one fails alone.
                let retry = BatchRetry {
                    after: Duration::ZERO,
                    at: None,
                    counts: true,
                    dissolve: true,
                    unknown_since: None,
                };
                let error = format!("batch refused, sending each email on its own: {message}");
                self.record_batch_retry(&members, &error, retry).await;
            }
            // A 409 invalid_idempotent_request means Resend accepted a batch
            // under this key before, with other contents (a member dropped
            // after an attempt whose outcome was unknown): those emails most
            // likely went out, so each member is recorded as probably sent
            // (`outcome_of`), never as a failure a retry would send again.
            Err(error) => {
                // Every member has the same attempts and the same outcome.
                let outcome = self.outcome_of(first, Err(error));
                match outcome {
                    Outcome::Retry {
                        error,
                        after,
                        counts,
                        unknown_since,
                    } => {
                        let retry = BatchRetry {
                            after,
                            at: None,
                            counts,
                            dissolve: false,
                            unknown_since,
                        };
                        self.record_batch_retry(&members, &error, retry).await;
                    }
                    outcome => {
                        for job in &members {
                            self.record(job, outcome.clone()).await;
                        }
                    }
                }
            }
        }
    }

    async fn record_batch_sent(&self, members: &[ClaimedJob], sent: Vec<Sent>) {
        let ids: Vec<i64> = members.iter().map(|j| j.id).collect();
        let locks: Vec<String> = members.iter().map(|j| j.lock.clone()).collect();
        let message_ids: Vec<String> = sent.into_iter().map(|s| s.provider_message_id).collect();
        let no_campaigns = vec![None; ids.len()];
        let recorded = self
            .persist("batch outcome", || {
                self.queue.record_sent_batch(
                    Channel::Email,
                    &ids,
                    &message_ids,
                    &locks,
                    &no_campaigns,
                )
            })
            .await;
        let Some(recorded) = recorded else { return };
        for (job, message_id) in members.iter().zip(&message_ids) {
            if recorded.contains(&job.id) {
                log_state_change(
                    job,
                    &Outcome::Sent {
                        provider_message_id: message_id.clone(),
                        campaign_id: None,
                    },
                );
            } else {
                lease_lost(job);
            }
        }
    }

    async fn record_batch_retry(&self, members: &[ClaimedJob], error: &str, retry: BatchRetry) {
        let recorded = self
            .persist("batch outcome", || {
                self.queue.record_batch_retry(members, error, retry)
            })
            .await;
        let Some(recorded) = recorded else { return };
        let outcome = Outcome::Retry {
            error: error.to_string(),
            after: retry.after,
            counts: retry.counts,
            unknown_since: None,
        };
        for job in members {
            if recorded.contains(&job.id) {
                log_state_change(job, &outcome);
            } else {
                lease_lost(job);
            }
        }
    }

    /// Runs a recording statement, riding out a database restart: tries for
    /// up to the lease. Past that the lease expires and the job is rescued.
    async fn persist<T, F, Fut>(&self, what: &str, mut statement: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let mut wait = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + self.settings.lease;
        loop {
            match statement().await {
                Ok(value) => return Some(value),
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, "could not record {what} yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record {what}; the lease will expire and the job will be retried");
                    return None;
                }
            }
        }
    }

    async fn send_sms(&self, job: &ClaimedJob, cancel: &CancellationToken) -> SmsEnd {
        if let Some(outcome) = precheck(job) {
            return SmsEnd::Record(outcome);
        }
        let to = match recipients::phone(job.recipient.as_deref()) {
            Ok(to) => to,
            Err(reason) => {
                return SmsEnd::Record(Outcome::Invalid {
                    error: reason.to_string(),
                });
            }
        };
        // The same text on every attempt (the version and values fixed by
        // the first claim): a look-up matches it exactly.
        let text = match self.sms_text(job).await {
            Ok(text) => text,
            Err(outcome) => return SmsEnd::Record(outcome),
        };
        if let Some(since) = job.outcome_unknown_since
            && let Some(end) = self
                .before_sending_again(job, &to, &text, since, cancel)
                .await
        {
            return end;
        }
        tokio::select! {
            _ = cancel.cancelled() => return SmsEnd::Release,
            _ = self.mobizon.pacer.wait_turn() => {}
        }
        if !self.still_to_send(job).await {
            return SmsEnd::Release;
        }
        let began = chrono::Utc::now();
        let started = std::time::Instant::now();
        let result = self.mobizon.send(&to, &text, &job.template).await;
        observe_request("mobizon", started, &result);
        match result {
            Err(SendError::Temporary {
                outcome_unknown: true,
                message,
                ..
            }) => {
                let since = job.outcome_unknown_since.map_or(began, |s| s.min(began));
                self.after_no_answer(job, &to, &text, since, message, cancel)
                    .await
            }
            known => SmsEnd::Record(self.outcome_of(job, known)),
        }
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
    ///
    /// An email keeps the mark of an attempt whose outcome was unknown
    /// (`outcome_unknown_since`) until it is sent: Resend may hold it under
    /// its key, so it counts as in flight to its recipient even once it has
    /// failed. A 409 for a key Resend holds with another body means the
    /// email under that key most likely went out: it is recorded as sent,
    /// never as a failure a retry would send again.
    fn outcome_of(&self, job: &ClaimedJob, result: Result<Sent, SendError>) -> Outcome {
        let email = job.channel == Channel::Email;
        match result {
            Ok(sent) => Outcome::Sent {
                provider_message_id: sent.provider_message_id,
                campaign_id: sent.campaign_id,
            },
            Err(SendError::Permanent { message })
                if email && resend::key_used_with_other_contents(&message) =>
            {
                Outcome::ProbablySent {
                    note: format!(
                        "Resend refused the idempotency key {} because it holds it with another body: the email sent under it most likely went out (no email id to show for it); {message}",
                        resend::idempotency_key(job.id, job.idempotency_key.as_deref())
                    ),
                }
            }
            Err(SendError::Permanent { message }) => Outcome::Failed {
                error: message,
                unknown_since: job.outcome_unknown_since.filter(|_| email),
            },
            Err(SendError::Temporary {
                message,
                retry_after,
                rate_limited,
                outcome_unknown,
            }) => {
                let unknown_since = if !email {
                    None
                } else if outcome_unknown {
                    let now = chrono::Utc::now();
                    Some(job.outcome_unknown_since.map_or(now, |s| s.min(now)))
                } else {
                    job.outcome_unknown_since
                };
                if !rate_limited && job.attempts >= job.max_attempts {
                    Outcome::Failed {
                        error: format!(
                            "gave up after {} attempts; last error: {message}",
                            job.attempts
                        ),
                        unknown_since,
                    }
                } else {
                    Outcome::Retry {
                        after: retry_after
                            .unwrap_or_else(|| self.settings.backoff.delay(job.attempts)),
                        error: message,
                        counts: !rate_limited,
                        unknown_since,
                    }
                }
            }
        }
    }

    /// Records an outcome, riding out a database restart.
    async fn record(&self, job: &ClaimedJob, outcome: Outcome) {
        let recorded = self
            .persist("outcome", || async {
                match &outcome {
                    Outcome::Sent {
                        provider_message_id,
                        campaign_id,
                    } => {
                        self.sent_batches
                            .record(
                                job.channel,
                                job.id,
                                &job.lock,
                                provider_message_id,
                                campaign_id.as_deref(),
                            )
                            .await
                    }
                    other => self.queue.record(job.id, &job.lock, other).await,
                }
            })
            .await;
        match recorded {
            // (recording a send also applies its early delivery events)
            Some(true) => log_state_change(job, &outcome),
            Some(false) => lease_lost(job),
            None => tracing::error!(job_id = job.id, ?outcome, "outcome not recorded"),
        }
    }
}

/// A message job whose lead is gone ends here without a request.
fn precheck(job: &ClaimedJob) -> Option<Outcome> {
    job.lead.is_none().then(|| Outcome::Cancelled {
        error: "the lead no longer exists".into(),
    })
}

impl Worker {
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
                        let Some(event) =
                            crate::ingest::delivery::mobizon_polled(&id, &status, payload)
                        else {
                            continue;
                        };
                        if let Err(e) =
                            crate::ingest::delivery::store(self.queue.pool(), &event).await
                        {
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

pub(crate) fn lease_lost(job: &ClaimedJob) {
    tracing::warn!(
        lead_id = %job.lead_id, job_id = job.id, channel = job.channel.as_str(),
        "outcome not recorded: another claim of the job began after this one's lease expired (or a newer lead_tracking sync took it back); that claim's outcome stands"
    );
}

pub(crate) fn log_state_change(job: &ClaimedJob, outcome: &Outcome) {
    let channel = job.channel.as_str();
    let name = match outcome {
        Outcome::Sent { .. } => "sent",
        Outcome::Retry { .. } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Invalid { .. } => "invalid",
        Outcome::Cancelled { .. } => "cancelled",
        Outcome::ProbablySent { .. } => "probably_sent",
    };
    metrics::counter!("leadrelay_job_outcomes_total", "channel" => channel, "outcome" => name)
        .increment(1);
    match outcome {
        Outcome::Sent {
            provider_message_id,
            ..
        } => tracing::info!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "sent", provider_message_id = %provider_message_id, "state change"
        ),
        Outcome::Retry {
            error,
            after,
            counts,
            ..
        } => tracing::info!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "retry", retry_in_s = after.as_secs_f64(), counts, error = %error, "state change"
        ),
        Outcome::Failed { error, .. } => tracing::warn!(
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
        Outcome::ProbablySent { note } => tracing::warn!(
            lead_id = %job.lead_id, job_id = job.id, channel, attempt = job.attempts,
            outcome = "probably_sent", note = %note, "state change"
        ),
    }
}
