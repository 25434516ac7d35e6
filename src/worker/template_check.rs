//! Every enabled rule's template, checked before it reaches anyone: it
//! exists, compiles, and renders against a sample lead with the rule's
//! params and the metadata keys the template reads (and an SMS fits the
//! rule's `max_sms_segments`). A problem never stops the process: `serve`
//! logs each one at ERROR when it first sees it (and again when templates or
//! rules change), the console's front page and `leadrelay doctor` show it,
//! and only the jobs that really cannot render fail; `leadrelay templates
//! check` prints the same findings.

use crate::domain::Channel;
use crate::messages::templates::{Compiled, Message, Variables};
use crate::store::queue::QueueError;
use crate::store::templates::{self, RuleTemplate};

/// What is wrong with one rule's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub rule_id: i64,
    pub source_pattern: String,
    pub channel: Channel,
    pub template: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule {} ({} → {} {}): {}",
            self.rule_id,
            self.source_pattern,
            self.channel.as_str(),
            self.template,
            self.message
        )
    }
}

/// The findings for every enabled rule: one line each for the rules that
/// are fine, the problems (its jobs would fail), and warnings (the sample
/// SMS is longer than the rule allows: leads with names as long would get
/// `invalid`; the template reads metadata keys: a lead without one fails).
#[derive(Debug, Default)]
pub struct Findings {
    pub fine: Vec<String>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

pub async fn check(
    client: &tokio_postgres::Client,
    product_url: &str,
) -> Result<Findings, QueueError> {
    let mut findings = Findings::default();
    for rule in templates::enabled_rules(client).await? {
        let problem = |message| Problem {
            rule_id: rule.rule_id,
            source_pattern: rule.source_pattern.clone(),
            channel: rule.channel,
            template: rule.template.clone(),
            message,
        };
        match check_rule(&rule, product_url) {
            Ok((fine, warnings)) => {
                findings.fine.push(fine);
                findings.warnings.extend(warnings.into_iter().map(&problem));
            }
            Err(message) => findings.problems.push(problem(message)),
        }
    }
    Ok(findings)
}

/// A line for the rule and its warnings, or the problem.
fn check_rule(rule: &RuleTemplate, product_url: &str) -> Result<(String, Vec<String>), String> {
    let Some(source) = rule.current.clone() else {
        return Err(format!(
            "no template {} for channel {} in notification_templates",
            rule.template,
            rule.channel.as_str()
        ));
    };
    let version = source.version;
    let compiled = Compiled::compile(source).map_err(|e| e.to_string())?;
    let metadata_keys = compiled.metadata_keys(&rule.params);
    let sample = Variables::sample(&rule.params, product_url, &metadata_keys);
    let mut warnings = Vec::new();
    if !metadata_keys.is_empty() {
        warnings.push(format!(
            "needs metadata key(s) {}: a lead whose metadata lacks one fails with the reason (checked here with a placeholder; a misspelt variable reads the same: a lead's own are name, email, phone, source, created_at, product_url)",
            metadata_keys.join(", ")
        ));
    }
    let summary = match compiled
        .render_message(&sample)
        .map_err(|e| e.to_string())?
    {
        Message::Sms { length, .. } => {
            if length.segments > rule.max_sms_segments.max(0) as usize {
                warnings.push(format!(
                    "the sample SMS is {length}, more than the rule's max_sms_segments ({}): such SMS end `invalid`",
                    rule.max_sms_segments
                ));
            }
            format!("sample SMS: {length}")
        }
        Message::Email(_) => "sample email renders".to_string(),
    };
    let line = format!(
        "rule {} ({} → {} {} v{version}): {summary}",
        rule.rule_id,
        rule.source_pattern,
        rule.channel.as_str(),
        rule.template
    );
    Ok((line, warnings))
}

impl super::Worker {
    /// Checks the templates again when they or the rules changed since
    /// `seen` (the fingerprint of the last check), logging each problem: a
    /// marketer's edit that cannot render is in the log within a sweep,
    /// before a lead meets it.
    pub(super) async fn recheck_templates(&self, seen: &mut Option<String>) {
        let pool = self.queue.pool();
        let fingerprint = match templates::fingerprint(pool).await {
            Ok(f) => f,
            Err(e) => return tracing::warn!(error = %e, "checking the templates failed"),
        };
        if seen.as_deref() == Some(fingerprint.as_str()) {
            return;
        }
        let findings = match pool.get().await {
            Ok(client) => check(&client, &self.product_url).await,
            Err(e) => Err(e.into()),
        };
        match findings {
            Ok(findings) => {
                for warning in &findings.warnings {
                    tracing::warn!(
                        rule_id = warning.rule_id, template = %warning.template,
                        channel = warning.channel.as_str(), warning = %warning.message,
                        "a template may not render for every lead"
                    );
                }
                for problem in &findings.problems {
                    tracing::error!(
                        rule_id = problem.rule_id, template = %problem.template,
                        channel = problem.channel.as_str(), problem = %problem.message,
                        "a template cannot be sent: its jobs fail with this reason until it is fixed"
                    );
                }
                if seen.is_some() && findings.problems.is_empty() {
                    tracing::info!(
                        rules = findings.fine.len(),
                        "templates changed; every enabled rule's template renders"
                    );
                }
                *seen = Some(fingerprint);
            }
            Err(e) => tracing::warn!(error = %e, "checking the templates failed"),
        }
    }
}
