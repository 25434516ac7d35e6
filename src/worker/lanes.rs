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
    fn len(&self) -> usize {
        match self {
            Work::One(_) => 1,
            Work::Batch(jobs) => jobs.len(),
        }
    }

    /// The latest moment among its jobs claimed ahead of theirs: no request
    /// before then.
    fn not_before(&self) -> Option<tokio::time::Instant> {
        match self {
            Work::One(job) => job.not_before,
            Work::Batch(jobs) => jobs.iter().filter_map(|j| j.not_before).max(),
        }
    }

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

/// Units of work (a job, or an email batch) a lane may hold per request
/// slot between its claim and its recorded outcome. Measured
/// (`BENCH_ONLY=processing`, docs/benchmarks.md): at 4 per slot, SMS waited
/// for the outcome recorder and drained at half the email lane's rate.
const IN_HAND_PER_SLOT: usize = 20;

/// How many jobs a lane claims at once, per request slot: the fewest while
/// work comes a little at a time (a short lease, jobs left to other
/// workers), doubling while each claim comes back full and the last one
/// was handed out quickly (a deep queue and a fast provider: the claim's
/// fixed cost, its gate and its round trip, is shared by more jobs), back
/// to the fewest after a claim that found less. With a slow provider the
/// claims stay at the fewest, so jobs do not wait long in a worker's hands.
#[derive(Debug, Clone, Copy)]
struct ClaimAhead {
    slots: usize,
    per_slot: usize,
    /// The last claim came back full: more is probably due.
    deep: bool,
}

impl ClaimAhead {
    const FEWEST_PER_SLOT: usize = 4;
    const MOST_PER_SLOT: usize = 20;
    /// A claim handed out within this may be followed by a larger one.
    const QUICK: Duration = Duration::from_secs(1);

    fn new(slots: usize) -> ClaimAhead {
        ClaimAhead {
            slots: slots.max(1),
            per_slot: Self::FEWEST_PER_SLOT,
            deep: false,
        }
    }

    fn limit(&self) -> usize {
        self.slots * self.per_slot
    }

    /// Whether to begin the next claim now, with `queued` jobs of the last
    /// one still to hand out: in a deep queue, once half of them are gone.
    fn begin_next(&self, queued: usize) -> bool {
        self.deep && queued <= self.limit() / 2
    }

    /// A claim came back with `claimed` jobs, `since_last` after the one
    /// before it.
    fn after_claim(&mut self, claimed: usize, since_last: Duration) {
        self.deep = claimed >= self.limit();
        if !self.deep {
            self.per_slot = Self::FEWEST_PER_SLOT;
        } else if since_last < Self::QUICK {
            self.per_slot = (self.per_slot * 2).min(Self::MOST_PER_SLOT);
        }
    }
}

impl Worker {
    pub(super) async fn lane_loop(self: Arc<Self>, channel: Channel, cancel: CancellationToken) {
        // Requests in flight, and jobs in hand (sent, or being sent, and not
        // yet recorded): a slow database holds back new requests. Outcomes
        // are recorded in batches, so a lane keeps sending while the last
        // ones are written (IN_HAND_PER_SLOT).
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let in_hand = Arc::new(Semaphore::new(self.settings.concurrency * IN_HAND_PER_SLOT));
        let mut ahead = ClaimAhead::new(self.settings.concurrency);
        let mut last_claim = tokio::time::Instant::now();
        let mut claimed: VecDeque<Work> = VecDeque::new();
        // The next claim, begun while the last one's jobs are still being
        // handed out (a deep queue), so the lane never idles for its round
        // trip.
        let mut next: Option<tokio::task::JoinHandle<Result<Vec<Work>, QueueError>>> = None;
        // asleep after a claim that found nothing (see `claim_woken`)
        let mut woken = false;
        loop {
            if claimed.is_empty() {
                let was_woken = std::mem::take(&mut woken);
                match self
                    .claimed_next(channel, &ahead, next.take(), was_woken)
                    .await
                {
                    Ok(work) if !work.is_empty() => {
                        ahead.after_claim(work.iter().map(Work::len).sum(), last_claim.elapsed());
                        last_claim = tokio::time::Instant::now();
                        claimed.extend(work);
                    }
                    Ok(_) => {
                        ahead.after_claim(0, last_claim.elapsed());
                        if !self.sleep_until_woken(channel, &cancel).await {
                            break;
                        }
                        woken = true;
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
            let queued: usize = claimed.iter().map(Work::len).sum();
            if next.is_none() && ahead.begin_next(queued) {
                let worker = Arc::clone(&self);
                let limit = ahead.limit();
                next = Some(tokio::spawn(async move {
                    worker.claim_work(channel, limit, queued).await
                }));
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
            self.hand_out(work, cancel.clone(), request_slot, in_hand);
        }
        // Stopping: what was claimed but not started goes back unsent.
        if let Some(begun) = next
            && let Ok(Ok(work)) = begun.await
        {
            claimed.extend(work);
        }
        for work in claimed {
            self.release_all(work.jobs()).await;
        }
    }

    /// A lane with nothing to claim sleeps until it is woken, or for the
    /// sweep interval at most. False: the worker is stopping.
    async fn sleep_until_woken(&self, channel: Channel, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = self.wakeups.lane(channel).notified() => true,
            _ = tokio::time::sleep(self.settings.sweep_interval) => true,
        }
    }

    /// Sends `work` in a task of its own, holding its request slot and its
    /// place in hand until it is done.
    fn hand_out(
        self: &Arc<Self>,
        work: Work,
        cancel: CancellationToken,
        request_slot: OwnedSemaphorePermit,
        in_hand: OwnedSemaphorePermit,
    ) {
        let worker = Arc::clone(self);
        self.tasks.spawn(async move {
            if let Some(moment) = work.not_before() {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        worker.release_all(work.jobs()).await;
                        return;
                    }
                    _ = tokio::time::sleep_until(moment) => {}
                }
            }
            match work {
                Work::One(job) => worker.process(*job, cancel, request_slot).await,
                Work::Batch(jobs) => worker.process_batch(jobs, cancel, request_slot).await,
            }
            drop(in_hand);
        });
    }

    /// The claim begun ahead, or a new one.
    async fn claimed_next(
        &self,
        channel: Channel,
        ahead: &ClaimAhead,
        begun: Option<tokio::task::JoinHandle<Result<Vec<Work>, QueueError>>>,
        woken: bool,
    ) -> Result<Vec<Work>, QueueError> {
        match begun {
            Some(begun) => begun
                .await
                .unwrap_or_else(|e| Err(QueueError::Db(format!("the claim stopped: {e}")))),
            None => match self.wakeups.take_moment(channel) {
                Some(moment) => self.claim_at_moment(channel, ahead.limit(), moment).await,
                None if woken => self.claim_woken(channel, ahead.limit()).await,
                None => self.claim_work(channel, ahead.limit(), 0).await,
            },
        }
    }

    /// The claim of a lane woken after a claim that found nothing:
    /// `claim_work`'s two looks in the other order. The lane looked for
    /// email batches due again just before it slept, so a job made due
    /// alone (the wake-up's usual news) is claimed first, a round trip
    /// sooner; the batches are looked for after it when it found nothing,
    /// else by the lane's next claim, a moment later, as always.
    async fn claim_woken(&self, channel: Channel, ahead: usize) -> Result<Vec<Work>, QueueError> {
        if channel != Channel::Email {
            return self.claim_work(channel, ahead, 0).await;
        }
        let lease = self.lease_for(channel, ahead);
        let work = self
            .claim_new_work(channel, ahead, lease, Duration::ZERO)
            .await?;
        if !work.is_empty() {
            return Ok(work);
        }
        self.batches_due_again(lease).await
    }

    /// The sweeper's timer announced a scheduled moment, a few milliseconds
    /// ahead: the jobs due by then are claimed now and their requests held
    /// until it (`ClaimedJob::not_before`), so that the claims' work is done
    /// before the moment rather than after. For email batches, two claims
    /// at once, each one batch (one request): when many emails are due, the
    /// second is made in the time of the first, on another connection and
    /// core; when few are, it finds nothing (an index probe). Other wake-ups
    /// claim once: a job made due alone goes sooner with one claim. Batches
    /// due again are looked for by the lane's next claim, a moment later. A
    /// claim that failed took nothing.
    async fn claim_at_moment(
        &self,
        channel: Channel,
        limit: usize,
        moment: tokio::time::Instant,
    ) -> Result<Vec<Work>, QueueError> {
        let early = moment.saturating_duration_since(tokio::time::Instant::now());
        let lease = self.lease_for(channel, limit) + early;
        if channel != Channel::Email || self.email_batch_size <= 1 {
            return self.claim_new_work(channel, limit, lease, early).await;
        }
        let (first, second) = tokio::join!(
            self.claim_new_work(channel, limit, lease, early),
            self.claim_new_work(channel, limit, lease, early)
        );
        match (first, second) {
            (Ok(mut first), Ok(second)) => {
                first.extend(second);
                Ok(first)
            }
            (Ok(work), Err(e)) | (Err(e), Ok(work)) => {
                tracing::warn!(channel = channel.as_str(), error = %e, "claim failed");
                Ok(work)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// The next claim of a lane: for email with batching, batches that are
    /// due again come first, whole; then due jobs, the fresh ones of which
    /// become one new batch. `queued`: jobs of the lane's last claim still
    /// waiting for a slot, which go first.
    pub(super) async fn claim_work(
        &self,
        channel: Channel,
        ahead: usize,
        queued: usize,
    ) -> Result<Vec<Work>, QueueError> {
        // A lease for `ahead` requests after those queued: a longer claim (a
        // batch plus retried singles) is still safe, since a job whose lease
        // runs short before its request is given back unsent.
        let lease = self.lease_for(channel, ahead + queued);
        // Batches already made are always claimed (their members carry their
        // key and are skipped by the plain claim), whatever
        // RESEND_BATCH_SIZE says now: it decides only whether new ones are
        // made. Otherwise a batch waiting for its retry when an operator sets
        // RESEND_BATCH_SIZE=1 would stay due for good.
        if channel == Channel::Email {
            let work = self.batches_due_again(lease).await?;
            if !work.is_empty() {
                return Ok(work);
            }
        }
        self.claim_new_work(channel, ahead, lease, Duration::ZERO)
            .await
    }

    /// The email batches due again, claimed whole under `lease` (those whose
    /// members are not all back are put off, and not returned).
    async fn batches_due_again(&self, lease: Duration) -> Result<Vec<Work>, QueueError> {
        let again = self
            .queue
            .claim_batches(self.settings.concurrency as i64, lease)
            .await?;
        Ok(self.put_off_incomplete_batches(group(again)).await)
    }

    /// The plain claim of `claim_work` (up to `ahead` jobs, or one email
    /// batch, under `lease`), without looking for batches due again first;
    /// with the scheduled jobs whose moment comes within `early`.
    async fn claim_new_work(
        &self,
        channel: Channel,
        ahead: usize,
        lease: Duration,
        early: Duration,
    ) -> Result<Vec<Work>, QueueError> {
        let batching = channel == Channel::Email && self.email_batch_size > 1;
        let limit = if batching {
            self.email_batch_size
        } else {
            ahead
        };
        let jobs = self
            .queue
            .claim_ahead(channel, limit as i64, lease, batching, early)
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
    /// concurrency requests, counted as slow as the timeout, but never more
    /// rounds than a claim of the fewest: the larger claims of a deep queue
    /// are made only while requests are quick, and a job whose lease runs
    /// short before its request is given back unsent) and for its pacing
    /// turn. So a worker killed in a burst holds its jobs no longer than one
    /// killed with a small claim.
    pub(super) fn lease_for(&self, channel: Channel, n: usize) -> Duration {
        let pacing = match channel {
            Channel::Email => self.resend.pacer.interval(),
            Channel::Sms => self.mobizon.pacer.interval(),
            Channel::LeadTracking => Duration::ZERO,
        };
        let rounds = n
            .div_ceil(self.settings.concurrency.max(1))
            .min(ClaimAhead::FEWEST_PER_SLOT) as u32;
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

#[cfg(test)]
mod tests {
    use super::ClaimAhead;
    use std::time::Duration;

    #[test]
    fn a_lane_claims_more_while_claims_come_back_full_and_fewest_after_a_short_one() {
        let quick = Duration::from_millis(50);
        let mut ahead = ClaimAhead::new(5);
        assert_eq!(ahead.limit(), 20);
        assert!(!ahead.begin_next(0), "no claim ahead before a full one");
        ahead.after_claim(20, quick);
        assert_eq!(ahead.limit(), 40);
        assert!(!ahead.begin_next(21) && ahead.begin_next(20));
        ahead.after_claim(40, quick);
        assert_eq!(ahead.limit(), 80);
        ahead.after_claim(80, quick);
        assert_eq!(ahead.limit(), 100, "never more than 20 per slot");
        ahead.after_claim(100, quick);
        assert_eq!(ahead.limit(), 100);
        ahead.after_claim(99, quick);
        assert_eq!(ahead.limit(), 20);
        assert!(!ahead.begin_next(0), "a short claim: the queue is drained");
        ahead.after_claim(0, quick);
        assert_eq!(ahead.limit(), 20);
        // no slots configured still claims
        assert_eq!(ClaimAhead::new(0).limit(), 4);
    }

    #[test]
    fn a_slow_provider_keeps_the_claims_small() {
        let slow = Duration::from_secs(4);
        let mut ahead = ClaimAhead::new(5);
        ahead.after_claim(20, slow);
        assert_eq!(
            ahead.limit(),
            20,
            "full, but handed out slowly: no larger claim"
        );
        assert!(
            ahead.begin_next(10),
            "still claimed ahead: the queue is deep"
        );
        ahead.after_claim(20, Duration::from_millis(10));
        assert_eq!(ahead.limit(), 40);
        ahead.after_claim(40, slow);
        assert_eq!(ahead.limit(), 40, "kept, not grown");
    }
}
