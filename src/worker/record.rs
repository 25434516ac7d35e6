//! What a request came to, and writing it back: the outcome of a provider's
//! answer, and the statement that records it (retried while the database is
//! away, so a sent message is never left unrecorded).

use std::time::Duration;

use crate::domain::FailureKind;
use crate::providers::resend::{self};
use crate::providers::{SendError, Sent};
use crate::store::queue::{Channel, ClaimedJob, Outcome, QueueError};

use super::Worker;
use super::observe::{lease_lost, log_state_change};

impl Worker {
    /// Runs a recording statement, riding out a database restart: tries for
    /// up to the lease. Past that the lease expires and the job is rescued.
    pub(super) async fn persist<T, F, Fut>(&self, what: &str, mut statement: F) -> Option<T>
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

    /// Turns a provider's answer into the job's next state.
    ///
    /// An email keeps the mark of an attempt whose outcome was unknown
    /// (`outcome_unknown_since`) until it is sent: Resend may hold it under
    /// its key, so it counts as in flight to its recipient even once it has
    /// failed. A 409 for a key Resend holds with another body means the
    /// email under that key most likely went out: it is recorded as sent,
    /// never as a failure a retry would send again.
    pub(super) fn outcome_of(&self, job: &ClaimedJob, result: Result<Sent, SendError>) -> Outcome {
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
                because: FailureKind::Provider,
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
                        because: FailureKind::Attempts,
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
    pub(super) async fn record(&self, job: &ClaimedJob, outcome: Outcome) {
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
