//! Metrics and logs of the worker's steps.

use crate::providers::{SendError, Sent};
use crate::store::queue::{ClaimedJob, Outcome};

pub(super) fn observe_request(
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
        Outcome::Invalid { error, .. } => tracing::warn!(
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
