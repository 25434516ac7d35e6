//! One lane per channel: claims due work ahead of free request slots, hands
//! each job or batch to its sender, and gives back what it cannot start.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::store::queue::{BatchRetry, Channel, ClaimedJob, Outcome, QueueError};

use super::Worker;
use crate::worker::sms_lookup::SmsEnd;

/// What one lane slot sends: one job, or the members of one email batch
/// (one request to the batch endpoint).
#[derive(Debug)]
pub(super) enum Work {
    One(Box<ClaimedJob>),
    Batch(Vec<ClaimedJob>),
}

impl Work {
    pub(super) fn jobs(self) -> Vec<ClaimedJob> {
        match self {
            Work::One(job) => vec![*job],
            Work::Batch(jobs) => jobs,
        }
    }
}

/// Claimed jobs as units of work: the members of each batch together, in
/// job-id order (the order of the batch request), the rest one by one.
pub(super) fn group(jobs: Vec<ClaimedJob>) -> Vec<Work> {
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

/// A job held at least this long before its request is checked again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

impl Worker {
    pub(super) async fn lane_loop(self: Arc<Self>, channel: Channel, cancel: CancellationToken) {
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
    pub(super) async fn claim_work(
        &self,
        channel: Channel,
        ahead: usize,
    ) -> Result<Vec<Work>, QueueError> {
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
    pub(super) async fn put_off_incomplete_batches(&self, work: Vec<Work>) -> Vec<Work> {
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

    pub(super) async fn release_all(&self, jobs: Vec<ClaimedJob>) {
        for job in jobs {
            if let Err(e) = self.queue.release(job.id, &job.lock).await {
                tracing::warn!(job_id = job.id, error = %e, "could not release job; its lease will expire");
            }
        }
    }

    /// The lease for a claim of `n`: the request timeout twice over (at least
    /// JOB_LEASE), plus the wait of the last job for a free slot (n /
    /// concurrency requests) and for its pacing turn.
    pub(super) fn lease_for(&self, channel: Channel, n: usize) -> Duration {
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
    pub(super) async fn still_to_send(&self, job: &ClaimedJob) -> bool {
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
    pub(super) fn lease_covers_a_request(&self, job: &ClaimedJob) -> bool {
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
    pub(super) async fn process(
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
}

/// A message job whose lead is gone ends here without a request.
pub(super) fn precheck(job: &ClaimedJob) -> Option<Outcome> {
    job.lead.is_none().then(|| Outcome::Cancelled {
        error: "the lead no longer exists".into(),
    })
}
