//! SMS: sending one (after a look-up when an earlier attempt got no
//! answer), and polling Mobizon for the states of those sent.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::FailureKind;
use crate::providers::SendError;
use crate::store::queue::{ClaimedJob, Outcome};

use super::Worker;
use super::lanes::precheck;
use super::observe::observe_request;
use crate::messages::recipients;
use crate::worker::sms_lookup::SmsEnd;

impl Worker {
    pub(super) async fn send_sms(&self, job: &ClaimedJob, cancel: &CancellationToken) -> SmsEnd {
        if let Some(outcome) = precheck(job) {
            return SmsEnd::Record(outcome);
        }
        let to = match recipients::phone(job.recipient.as_deref()) {
            Ok(to) => to,
            Err(reason) => {
                return SmsEnd::Record(Outcome::Invalid {
                    error: reason.to_string(),
                    because: FailureKind::Contact,
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
            crate::ingest::mobizon::poll(self.queue.pool(), &self.mobizon, &ids).await;
        }
    }
}
