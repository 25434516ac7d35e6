//! A job's message, rendered from the template version and the values its
//! first claim fixed, so every attempt (and a Resend batch sent again) is
//! byte-identical while an edit applies to messages not yet tried.
//!
//! Template versions never change once written, so each is read and
//! compiled once per process (a compile error too) and kept by key, channel
//! and version: rendering costs no query per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;

use super::Worker;
use crate::domain::{Channel, FailureKind};
use crate::messages::templates::{Compiled, EmailContent, Message, TemplateError, Variables};
use crate::store::queue::{ClaimedJob, Outcome, QueueError};

type Key = (String, Channel, i32);

/// Compiled template versions, by key, channel and version.
#[derive(Debug)]
pub struct TemplateCache {
    pool: Pool,
    compiled: Mutex<HashMap<Key, Result<Arc<Compiled>, TemplateError>>>,
}

/// Why a job's template cannot be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The version the job needs is not stored (deleted by hand).
    Missing,
    Invalid(TemplateError),
    /// The database did not answer: try again later.
    Database(QueueError),
}

impl TemplateCache {
    pub fn new(pool: Pool) -> TemplateCache {
        TemplateCache {
            pool,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        key: &str,
        channel: Channel,
        version: i32,
    ) -> Result<Arc<Compiled>, Unavailable> {
        let cache_key = (key.to_string(), channel, version);
        if let Some(found) = self.lock().get(&cache_key) {
            return found.clone().map_err(Unavailable::Invalid);
        }
        let source = crate::store::templates::load_version(&self.pool, key, channel, version)
            .await
            .map_err(Unavailable::Database)?
            .ok_or(Unavailable::Missing)?;
        let compiled = Compiled::compile(source).map(Arc::new);
        self.lock().insert(cache_key, compiled.clone());
        compiled.map_err(Unavailable::Invalid)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, Result<Arc<Compiled>, TemplateError>>> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Worker {
    /// The compiled template of `job`, or how the job ends without one.
    async fn template_of(&self, job: &ClaimedJob) -> Result<Arc<Compiled>, Outcome> {
        let Some(version) = job.template_version else {
            return Err(failed(
                job,
                format!(
                    "no template {:?} for channel {} in notification_templates: add it, then `leadrelay retry`",
                    job.template.chars().take(64).collect::<String>(),
                    job.channel.as_str()
                ),
            ));
        };
        match self
            .templates
            .get(&job.template, job.channel, version)
            .await
        {
            Ok(compiled) => Ok(compiled),
            Err(Unavailable::Missing) => Err(failed(
                job,
                format!(
                    "template {} ({}) version {version}, which this job was first rendered with, no longer exists in notification_template_versions",
                    job.template,
                    job.channel.as_str()
                ),
            )),
            Err(Unavailable::Invalid(e)) => Err(failed(job, e.to_string())),
            Err(Unavailable::Database(e)) => Err(Outcome::Retry {
                error: format!("could not read the template: {e}"),
                after: self.settings.backoff.delay(job.attempts),
                counts: false,
                unknown_since: job.outcome_unknown_since,
            }),
        }
    }

    /// The values the job's message is made of: those its first claim
    /// fixed; for a job claimed before they were all stored, the lead's.
    fn variables_of(&self, job: &ClaimedJob) -> Variables {
        let mut params = job
            .sent_params
            .clone()
            .filter(|p| p.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        if params.get("email").is_none()
            && let (Some(lead), Some(object)) = (&job.lead, params.as_object_mut())
        {
            object
                .entry("name")
                .or_insert_with(|| serde_json::json!(lead.name));
            object.insert("email".into(), serde_json::json!(lead.email));
            object.insert("phone".into(), serde_json::json!(lead.phone));
            object.insert("created_at".into(), serde_json::json!(lead.created_at));
        }
        Variables::from_sent_params(&params, &self.product_url)
            .with_unsubscribe_url(self.unsubscribe_url(job))
    }

    /// The job's unsubscribe link: none without PUBLIC_URL, for a dashboard
    /// row, or for a rule marked transactional (`params.transactional`: a
    /// receipt the person asked for, which carries no unsubscribe).
    pub(super) fn unsubscribe_url(&self, job: &ClaimedJob) -> Option<String> {
        let transactional = job
            .sent_params
            .as_ref()
            .is_some_and(crate::messages::unsubscribe::is_transactional);
        if transactional || !matches!(job.channel, Channel::Email | Channel::Sms) {
            return None;
        }
        self.unsubscribe.url(&crate::messages::unsubscribe::Target {
            lead: job.lead_id,
            channel: job.channel,
            recipient: job.recipient.clone()?,
        })
    }

    pub(super) async fn email_content(&self, job: &ClaimedJob) -> Result<EmailContent, Outcome> {
        let template = self.template_of(job).await?;
        template
            .render_email(&self.variables_of(job))
            .map_err(|e| failed(job, e.to_string()))
    }

    /// The SMS text, or how the job ends: a text longer than its rule's
    /// `max_sms_segments` is `invalid` before any request.
    pub(super) async fn sms_text(&self, job: &ClaimedJob) -> Result<String, Outcome> {
        let template = self.template_of(job).await?;
        let rendered = template
            .render_message(&self.variables_of(job))
            .map_err(|e| failed(job, e.to_string()))?;
        let Message::Sms { text, length } = rendered else {
            return Err(failed(
                job,
                format!("template {} is not an SMS template", job.template),
            ));
        };
        let max = job
            .sent_params
            .as_ref()
            .and_then(|p| p.get("max_sms_segments"))
            .and_then(|m| m.as_u64())
            .unwrap_or(3) as usize;
        if length.segments > max {
            return Err(Outcome::Invalid {
                because: FailureKind::Content,
                error: format!(
                    "the SMS is {length}, more than the rule's max_sms_segments ({max})"
                ),
            });
        }
        Ok(text)
    }
}

/// The job ends `failed`; an SMS in doubt stays so (`leadrelay retry` then
/// still looks it up first).
fn failed(job: &ClaimedJob, error: String) -> Outcome {
    Outcome::Failed {
        error,
        unknown_since: job.outcome_unknown_since,
        because: FailureKind::Content,
    }
}
