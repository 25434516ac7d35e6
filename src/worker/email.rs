//! Emails: one on its own, or the members of a batch in one request.

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::domain::FailureKind;
use crate::providers::resend::{self, OutgoingEmail, Tag};
use crate::providers::{SendError, Sent};
use crate::store::queue::{BatchRetry, Channel, ClaimedJob, Outcome};

use super::Worker;
use super::lanes::precheck;
use super::observe::{lease_lost, log_state_change};
use crate::messages::templates::EmailContent;
use crate::messages::{mask, recipients};

impl Worker {
    /// The email of job `job`, or the outcome that ends it without a request.
    pub(super) async fn email_for(&self, job: &ClaimedJob) -> Result<OutgoingEmail, Outcome> {
        if let Some(outcome) = precheck(job) {
            return Err(outcome);
        }
        let to =
            recipients::email(job.recipient.as_deref()).map_err(|reason| Outcome::Invalid {
                error: reason.to_string(),
                because: FailureKind::Contact,
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
            headers: Default::default(),
        };
        // RFC 8058 one-click unsubscribe, unless the rule is transactional
        if let Some(url) = self.unsubscribe_url(job) {
            email
                .headers
                .insert("List-Unsubscribe".into(), format!("<{url}>"));
            email.headers.insert(
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into(),
            );
        }
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

    pub(super) async fn send_email(
        &self,
        job: &ClaimedJob,
        cancel: &CancellationToken,
    ) -> Option<Outcome> {
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
    pub(super) async fn process_batch(
        &self,
        jobs: Vec<ClaimedJob>,
        cancel: CancellationToken,
        request_slot: OwnedSemaphorePermit,
    ) {
        let Some(key) = jobs.first().and_then(|j| j.batch_key.clone()) else {
            return;
        };
        let (members, emails) = self.batch_members(jobs).await;
        let Some(first) = members.first() else {
            return;
        };
        if emails.iter().any(|e| e.template.is_some()) {
            // Resend's batch endpoint is not documented to take hosted
            // templates. The template version is fixed by the first claim,
            // so this is known before the batch is ever sent: dissolving
            // it cannot send anything twice.
            let retry = BatchRetry::dissolved(false);
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
        self.record_batch_answer(&members, result).await;
    }

    /// The members of a batch with their emails; a member whose email cannot
    /// be made (a contact or template problem) is recorded and left out.
    async fn batch_members(&self, jobs: Vec<ClaimedJob>) -> (Vec<ClaimedJob>, Vec<OutgoingEmail>) {
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
        (members, emails)
    }

    /// What Resend's answer to a batch means for its members.
    async fn record_batch_answer(
        &self,
        members: &[ClaimedJob],
        result: Result<Vec<Sent>, SendError>,
    ) {
        let Some(first) = members.first() else {
            return;
        };
        match result {
            Ok(sent) => self.record_batch_sent(members, sent).await,
            Err(SendError::Permanent { message })
                if !resend::key_used_with_other_contents(&message) =>
            {
                // Refused as a whole, nothing sent (strict validation): each
                // member goes on its own, where a bad one fails alone.
                let error = format!("batch refused, sending each email on its own: {message}");
                self.record_batch_retry(members, &error, BatchRetry::dissolved(true))
                    .await;
            }
            // A 409 invalid_idempotent_request means Resend accepted a batch
            // under this key before, with other contents (a member dropped
            // after an attempt whose outcome was unknown): those emails most
            // likely went out, so each member is recorded as probably sent
            // (`outcome_of`), never as a failure a retry would send again.
            Err(error) => {
                // Every member has the same attempts and the same outcome.
                match self.outcome_of(first, Err(error)) {
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
                        self.record_batch_retry(members, &error, retry).await;
                    }
                    outcome => {
                        for job in members {
                            self.record(job, outcome.clone()).await;
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn record_batch_sent(&self, members: &[ClaimedJob], sent: Vec<Sent>) {
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

    pub(super) async fn record_batch_retry(
        &self,
        members: &[ClaimedJob],
        error: &str,
        retry: BatchRetry,
    ) {
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
}
