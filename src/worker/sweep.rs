//! The sweeper: promotes due jobs, arms a timer for the next one (which
//! wakes the lanes: their claims take a job whose moment has passed),
//! glances for new ones every second, applies early delivery events and
//! prunes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Worker;

/// How often the sweeper looks for jobs that came in since (at most).
const GLANCE_EVERY: Duration = Duration::from_secs(1);
/// Where pg_cron does not prune (every 10 minutes), the sweep does, hourly:
/// one bounded batch a time (`prune_leadrelay_history`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long after a scheduled job's moment its timer fires, when it was
/// not announced ahead.
const MOMENT_MARGIN: Duration = Duration::from_millis(1);
/// How long before a scheduled job's moment the lanes are told of it: their
/// claims (two email batches of 100 take 10–13 ms side by side on two cores)
/// are made before it, and the requests held until it.
const MOMENT_AHEAD: Duration = Duration::from_millis(30);

impl Worker {
    /// Promotes due jobs, then sleeps until the next one is due, a glance
    /// passes, or a reconnect asks for a sweep.
    ///
    /// Landing inserts send no notification (it would serialise their
    /// commits), so a glance every second (GLANCE: three index probes) finds
    /// jobs that came in since: a job due at once is sent within about a
    /// second, and a job due later is sent by the timer armed for it. The
    /// rest of the sweep (early delivery events) runs every sweep interval.
    pub(super) async fn sweep_loop(&self, cancel: CancellationToken) {
        let glance_every = self.settings.sweep_interval.min(GLANCE_EVERY);
        let mut next_full = tokio::time::Instant::now();
        let mut next_prune = tokio::time::Instant::now();
        let mut templates_seen = None;
        // the moment whose timer fired (this pass announces it), and the
        // last moment announced
        let mut moment_came: Option<tokio::time::Instant> = None;
        let mut announced: Option<tokio::time::Instant> = None;
        while !cancel.is_cancelled() {
            let mut sleep_for = glance_every;
            if let Some(at) = moment_came {
                // The lanes first: their claims take the jobs of the moment
                // as they are, before it. The promotion below still runs on
                // every pass (moments may come faster than glances, and it
                // rescues expired leases); it takes only jobs already past
                // their moment, and skips the rows a claim holds.
                self.wakeups.wake_for_moment(at);
                announced = Some(at);
            }
            self.promote_and_wake().await;
            let mut timer_for = None;
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
                self.prune().await;
            }
            match self.queue.glance().await {
                Ok(glance) => {
                    // Lanes look for work after every full sweep, and whenever
                    // due jobs wait.
                    if full || glance.any_due {
                        self.wakeups.wake_all();
                    }
                    if let Some(next) = glance.next_due {
                        // Wake the lanes a little before the job is due,
                        // whatever pg_cron's tick is; a moment announced
                        // already whose jobs are still waiting (the lanes
                        // were busy) is announced again just after it.
                        let at = tokio::time::Instant::now() + next;
                        let early = match announced {
                            Some(last) if at <= last + MOMENT_MARGIN => Duration::ZERO,
                            _ => MOMENT_AHEAD,
                        };
                        let fire = (next + MOMENT_MARGIN).saturating_sub(early);
                        if fire < sleep_for {
                            sleep_for = fire;
                            timer_for = Some(at);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for due jobs failed"),
            }
            moment_came = None;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(sleep_for) => moment_came = timer_for,
                _ = self.wakeups.sweep().notified() => next_full = tokio::time::Instant::now(),
            }
        }
    }

    /// Promotes due jobs (and rescues expired leases), waking the lanes when
    /// any became due.
    async fn promote_and_wake(&self) {
        match self.queue.promote().await {
            Ok(promoted) => {
                if promoted > 0 {
                    tracing::debug!(promoted, "promoted due jobs");
                    // at once, not after the housekeeping and the glance:
                    // claimed a round trip sooner
                    self.wakeups.wake_all();
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }

    /// One bounded batch of old history, where pg_cron does not prune.
    async fn prune(&self) {
        match self.queue.prune_history_without_pg_cron().await {
            Ok(Some(pruned)) => tracing::debug!(%pruned, "pruned old history"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old history failed"),
        }
    }
}
