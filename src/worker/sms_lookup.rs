//! An SMS is never sent twice. Mobizon has no idempotency key, so after an
//! attempt with no answer (a timeout or a connection lost after the request
//! was written, a body cut short, a gateway's 502/503/504, a worker killed
//! mid-request) the worker asks Mobizon's `message/list` whether the message
//! was taken before it sends anything again: found, the job is `sent` with
//! Mobizon's ids; not found once the request's timeout has passed, it may go
//! again; a look-up that fails leaves the job waiting to be looked up later,
//! never sent blind. `SMS_UNKNOWN_OUTCOME` chooses another way for accounts
//! where the look-up is not allowed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::domain::FailureKind;
use crate::messages::mask;
use crate::providers::mobizon::{LOOKUP_PAGE_SIZE, ListedSms, LookupError};
use crate::store::queue::{ClaimedJob, FoundRecord, Outcome};

/// What happens to an SMS whose earlier attempt got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownOutcome {
    /// Look it up at Mobizon first; send only when it was not taken.
    #[default]
    Lookup,
    /// Send again (it may arrive twice), with a warning.
    Resend,
    /// Fail the job: a person decides (`leadrelay retry` sends it again).
    Fail,
}

impl UnknownOutcome {
    pub const NAMES: &'static str = "lookup, resend or fail";

    pub fn parse(value: &str) -> Option<UnknownOutcome> {
        match value.trim().to_ascii_lowercase().as_str() {
            "lookup" => Some(UnknownOutcome::Lookup),
            "resend" => Some(UnknownOutcome::Resend),
            "fail" => Some(UnknownOutcome::Fail),
            _ => None,
        }
    }
}

/// How an SMS attempt ends.
#[derive(Debug)]
pub(super) enum SmsEnd {
    /// Record this outcome.
    Record(Outcome),
    /// Already recorded (a look-up found the message).
    Recorded,
    /// Give the job back unsent (stopping before any request).
    Release,
}

/// The question a look-up asks: was the SMS `text` to `to` taken since
/// `since` (for job `job`)?
#[derive(Clone, Copy)]
struct Question<'a> {
    job: &'a ClaimedJob,
    to: &'a str,
    text: &'a str,
    since: DateTime<Utc>,
}

/// What a look-up came to.
#[derive(Debug)]
enum Lookup {
    /// Taken: the job is recorded `sent` as this message.
    Found(ListedSms),
    NotFound,
    Failed(String),
    /// The job is no longer this claim's: nothing to record.
    NotOurs,
    /// Another job is sending to this phone now: look again in a moment
    /// (not an attempt: nothing went wrong).
    Busy,
    Cancelled,
}

/// How long a look-up waits for another job's send to the same phone to be
/// recorded before it looks again.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// A look-up reads at most this many pages. Recipient and exact text within
/// about a day and a half leave a handful of messages, one page's worth; more
/// than this is a question for a person, not a guess.
const MAX_PAGES: u32 = 5;

/// Mobizon may still be writing a message it took when our request gave
/// up; a look-up waits this long (at most) after the request's timeout.
const LOOKUP_GRACE: Duration = Duration::from_secs(5);

impl Worker {
    /// Before an attempt of an SMS whose earlier attempt (begun at `since`)
    /// got no answer: `None` to send, or how the attempt ends without one.
    pub(super) async fn before_sending_again(
        &self,
        job: &ClaimedJob,
        to: &str,
        text: &str,
        since: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Option<SmsEnd> {
        let masked = mask::phone(to);
        match self.settings.sms_unknown_outcome {
            UnknownOutcome::Resend => {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "resend",
                    "an earlier attempt's outcome is unknown: sending again (SMS_UNKNOWN_OUTCOME=resend), it may arrive twice"
                );
                None
            }
            UnknownOutcome::Fail => {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "fail",
                    "an earlier attempt's outcome is unknown: failing the job for a person to decide (SMS_UNKNOWN_OUTCOME=fail)"
                );
                Some(SmsEnd::Record(fail_for_a_person(
                    "an earlier attempt got no answer",
                )))
            }
            UnknownOutcome::Lookup => {
                let question = Question {
                    job,
                    to,
                    text,
                    since,
                };
                match self.look_up(question, None, cancel).await {
                    Lookup::NotFound => {
                        tracing::info!(
                            lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                            to = %masked, decision = "send",
                            "an earlier attempt's SMS is not at Mobizon: sending it"
                        );
                        None
                    }
                    other => Some(self.end_of_lookup(job, &masked, since, other, None)),
                }
            }
        }
    }

    /// After an attempt (begun at `since`, or earlier for a job already in
    /// doubt) that got no answer.
    pub(super) async fn after_no_answer(
        &self,
        job: &ClaimedJob,
        to: &str,
        text: &str,
        since: DateTime<Utc>,
        error: String,
        cancel: &CancellationToken,
    ) -> SmsEnd {
        let masked = mask::phone(to);
        match self.settings.sms_unknown_outcome {
            UnknownOutcome::Resend => {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "resend", error = %error,
                    "no answer from Mobizon: the retry may deliver this SMS twice (SMS_UNKNOWN_OUTCOME=resend)"
                );
                SmsEnd::Record(self.retry_in_doubt(job, error, Some(since)))
            }
            UnknownOutcome::Fail => {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "fail", error = %error,
                    "no answer from Mobizon: failing the job for a person to decide (SMS_UNKNOWN_OUTCOME=fail)"
                );
                SmsEnd::Record(fail_for_a_person(&error))
            }
            UnknownOutcome::Lookup => {
                let found = self
                    .look_up(
                        Question {
                            job,
                            to,
                            text,
                            since,
                        },
                        Some(&error),
                        cancel,
                    )
                    .await;
                if let Lookup::NotFound = found {
                    tracing::info!(
                        lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                        to = %masked, decision = "retry",
                        "no answer from Mobizon, and the SMS is not there: it goes again later"
                    );
                    return SmsEnd::Record(self.retry_in_doubt(job, error, None));
                }
                self.end_of_lookup(job, &masked, since, found, Some(error))
            }
        }
    }

    /// Every look-up ending but "not found".
    fn end_of_lookup(
        &self,
        job: &ClaimedJob,
        masked: &str,
        since: DateTime<Utc>,
        lookup: Lookup,
        send_error: Option<String>,
    ) -> SmsEnd {
        match lookup {
            Lookup::Found(item) => {
                tracing::info!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "recorded sent", provider_message_id = %item.id,
                    campaign_id = item.campaign_id.as_deref().unwrap_or(""),
                    "the SMS of an attempt with no answer was found at Mobizon: not sent again"
                );
                super::log_state_change(
                    job,
                    &Outcome::Sent {
                        provider_message_id: item.id.clone(),
                        campaign_id: item.campaign_id.clone(),
                    },
                );
                SmsEnd::Recorded
            }
            Lookup::NotOurs => {
                super::lease_lost(job);
                SmsEnd::Recorded
            }
            Lookup::Failed(reason) => {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "look up again later", error = %reason,
                    "could not find out whether Mobizon took the SMS: not sending it blind"
                );
                let error = match send_error {
                    Some(send_error) => format!(
                        "{send_error}; looking it up failed ({reason}): looked up again before any resend"
                    ),
                    None => format!(
                        "an earlier attempt got no answer and looking it up failed ({reason}): looked up again before any resend"
                    ),
                };
                SmsEnd::Record(self.retry_in_doubt(job, error, Some(since)))
            }
            Lookup::Busy => {
                tracing::info!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", attempt = job.attempts,
                    to = %masked, decision = "look up again in a moment",
                    "another job is sending to this phone: its SMS may be among those listed"
                );
                SmsEnd::Record(Outcome::Retry {
                    error: send_error.unwrap_or_else(|| {
                        "looked up while another job was sending to this phone: looked up again once it has recorded its SMS".into()
                    }),
                    after: BUSY_WAIT,
                    counts: false,
                    unknown_since: Some(since),
                })
            }
            // Stopping: the job waits, still in doubt, for the next worker.
            Lookup::Cancelled => SmsEnd::Record(Outcome::Retry {
                error: send_error.unwrap_or_else(|| "stopped while looking the SMS up".into()),
                after: Duration::ZERO,
                counts: true,
                unknown_since: Some(since),
            }),
            // (the callers send, or retry, on this one themselves)
            Lookup::NotFound => SmsEnd::Record(self.retry_in_doubt(
                job,
                send_error.unwrap_or_else(|| "not found at Mobizon".into()),
                None,
            )),
        }
    }

    /// A retry, or the end once attempts run out, keeping `unknown_since`:
    /// `leadrelay retry` of such a failed job still looks it up first.
    fn retry_in_doubt(
        &self,
        job: &ClaimedJob,
        error: String,
        unknown_since: Option<DateTime<Utc>>,
    ) -> Outcome {
        if job.attempts >= job.max_attempts {
            return Outcome::Failed {
                error: format!(
                    "gave up after {} attempts; last error: {error}",
                    job.attempts
                ),
                unknown_since,
                because: FailureKind::Attempts,
            };
        }
        Outcome::Retry {
            after: self.settings.backoff.delay(job.attempts),
            error,
            counts: true,
            unknown_since,
        }
    }

    /// Asks Mobizon for the SMS `text` to `to` taken since `since` and, when
    /// one no other job holds is there, records the job `sent` as it.
    async fn look_up(
        &self,
        question: Question<'_>,
        attempt_error: Option<&str>,
        cancel: &CancellationToken,
    ) -> Lookup {
        // Not before the unanswered request's own timeout (and a grace for
        // Mobizon's write) has passed: until then "not there" proves nothing.
        let settles = question.since
            + chrono::Duration::from_std(
                self.settings.provider_timeout + self.settings.provider_timeout.min(LOOKUP_GRACE),
            )
            .unwrap_or_default();
        if let Ok(wait) = (settles - Utc::now()).to_std() {
            tokio::select! {
                _ = cancel.cancelled() => return Lookup::Cancelled,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let lookup = self.look_up_pages(question, attempt_error, cancel).await;
        let outcome = match &lookup {
            Lookup::Found(_) => "found",
            Lookup::NotFound => "not_found",
            Lookup::Failed(_) => "failed",
            Lookup::NotOurs | Lookup::Busy | Lookup::Cancelled => return lookup,
        };
        metrics::counter!("leadrelay_sms_lookups_total", "outcome" => outcome).increment(1);
        if let Lookup::Found(item) = &lookup {
            self.store_found_status(item).await;
        }
        lookup
    }

    async fn look_up_pages(
        &self,
        question: Question<'_>,
        attempt_error: Option<&str>,
        cancel: &CancellationToken,
    ) -> Lookup {
        let Question {
            job,
            to,
            text,
            since,
        } = question;
        let mut seen = 0u64;
        for page in 0..MAX_PAGES {
            tokio::select! {
                _ = cancel.cancelled() => return Lookup::Cancelled,
                _ = self.mobizon.pacer.wait_turn() => {}
            }
            let answer = match self.mobizon.find_sms(to, text, since, page).await {
                Ok(answer) => answer,
                Err(e) => return Lookup::Failed(describe(&e)),
            };
            seen += answer.items.len() as u64;
            // this job's message was made after its first unanswered
            // attempt began: one certainly older is another's (a deleted
            // lead's, an earlier job's), whatever zone Mobizon writes in
            let matches: Vec<ListedSms> = answer
                .items
                .into_iter()
                .filter(|item| item.is_message(to, text) && item.may_be_from_after(since))
                .collect();
            if matches.len() > 1 {
                tracing::warn!(
                    lead_id = %job.lead_id, job_id = job.id, channel = "sms", matches = matches.len(),
                    "more than one SMS with this text to this phone: taking the oldest no other job holds"
                );
            }
            if !matches.is_empty() {
                let candidates: Vec<(String, Option<String>)> = matches
                    .iter()
                    .map(|m| (m.id.clone(), m.campaign_id.clone()))
                    .collect();
                let recorded = self
                    .persist("look-up", || {
                        self.queue
                            .record_found(job.id, &job.lock, &candidates, attempt_error)
                    })
                    .await;
                match recorded {
                    Some(FoundRecord::Recorded(id)) => {
                        let item = matches.into_iter().find(|m| m.id == id);
                        return item.map_or(Lookup::NotOurs, Lookup::Found);
                    }
                    Some(FoundRecord::NotOurs) => return Lookup::NotOurs,
                    Some(FoundRecord::Busy) => return Lookup::Busy,
                    Some(FoundRecord::HeldByOtherJobs) => {}
                    None => return Lookup::Failed("the database did not record the find".into()),
                }
            }
            let last_page =
                answer.total <= seen || seen < u64::from(LOOKUP_PAGE_SIZE) * (u64::from(page) + 1);
            if last_page {
                return Lookup::NotFound;
            }
        }
        Lookup::Failed(format!(
            "more than {} SMS with this text to this phone: a person decides",
            MAX_PAGES * LOOKUP_PAGE_SIZE
        ))
    }

    /// The found item's status, as if a status poll had read it.
    async fn store_found_status(&self, item: &ListedSms) {
        let Some(status) = item.status.as_deref() else {
            return;
        };
        crate::ingest::mobizon::store_state(
            self.queue.pool(),
            &item.id,
            status,
            item.raw.clone(),
            "SMS look-up",
        )
        .await;
    }
}

/// The job fails, for a person to decide; clearing the doubt makes
/// `leadrelay retry` send it again.
fn fail_for_a_person(why: &str) -> Outcome {
    Outcome::Failed {
        error: format!(
            "{why}: the SMS may have been taken by Mobizon; SMS_UNKNOWN_OUTCOME=fail leaves it to a person (leadrelay retry sends it again)"
        ),
        unknown_since: None,
        because: FailureKind::InDoubt,
    }
}

fn describe(error: &LookupError) -> String {
    match error {
        LookupError::Refused { code: 9, .. } => format!(
            "{error} (the API key may not be allowed message/list: allow it, or set SMS_UNKNOWN_OUTCOME)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes_three_words_in_any_case() {
        assert_eq!(
            UnknownOutcome::parse("lookup"),
            Some(UnknownOutcome::Lookup)
        );
        assert_eq!(
            UnknownOutcome::parse(" RESEND "),
            Some(UnknownOutcome::Resend)
        );
        assert_eq!(UnknownOutcome::parse("Fail"), Some(UnknownOutcome::Fail));
        for bad in ["", "look-up", "retry", "lookup\0", "☃"] {
            assert_eq!(UnknownOutcome::parse(bad), None, "{bad:?}");
        }
        assert_eq!(UnknownOutcome::default(), UnknownOutcome::Lookup);
    }
}
