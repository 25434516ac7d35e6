//! The console's actions: retry a failed message, send a scheduled one now,
//! cancel one (with a reason), retry the failures the front page lists. Each
//! is a confirmation page (GET) and a form (POST) that carries the session's
//! CSRF token; the POST runs the statement `leadrelay retry` and `cancel`
//! run (`store::operator`), which writes the `ops_audit` row in the same
//! statement.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::page::{describe_job, esc, name_cell, page as frame, problem, time};
use super::session::Session;
use super::{Gate, Visitor};
use crate::domain::{DeliveryState, JobAction, JobStatus};
use crate::http::AppState;
use crate::store::operator::{self, Action, Actor};

/// At most this many jobs in one bulk retry (the failures table shows 100).
const MAX_BULK: usize = 1000;

pub use crate::store::operator::ACTION_JOB as JOB;

/// Why a member of an email batch in doubt cannot be cancelled alone.
fn batch_in_doubt_refusal(members: i64) -> String {
    format!(
        "This email went to Resend in a batch of {members} whose outcome is unknown: it may already have been delivered, and Resend keeps that batch under one key with all {members} emails in it. Cancelling this one alone would change the batch, so Resend would refuse the rest or they would go out again. It goes again only with its whole batch, under the same key, so Resend sends nothing twice. Nothing was changed."
    )
}

/// The action a path names (`/ops/jobs/{id}/{path}`).
fn parse_action(s: &str) -> Option<JobAction> {
    JobAction::ALL.into_iter().find(|a| path(*a) == s)
}

pub(super) fn path(action: JobAction) -> &'static str {
    match action {
        JobAction::Retry => "retry",
        JobAction::SendNow => "send-now",
        JobAction::SendAgain => "send-again",
        JobAction::Cancel => "cancel",
    }
}

/// Whether the job `ACTION_JOB` read can take `action`, by the rule of its
/// status and delivery state (`JobStatus::allows`).
fn allowed(action: JobAction, job: &tokio_postgres::Row) -> bool {
    let delivery = job
        .get::<_, Option<&str>>("delivery_status")
        .and_then(DeliveryState::parse);
    JobStatus::parse(job.get("status")).is_some_and(|s| s.allows(action, delivery))
}

fn operator(action: JobAction) -> Action {
    match action {
        JobAction::Retry => Action::Retry,
        JobAction::SendNow => Action::SendNow,
        JobAction::SendAgain => Action::SendAgain,
        JobAction::Cancel => Action::Cancel,
    }
}

pub(super) fn question(action: JobAction) -> &'static str {
    match action {
        JobAction::Retry => "Retry",
        JobAction::SendNow => "Send now",
        JobAction::SendAgain => "Send again",
        JobAction::Cancel => "Cancel",
    }
}

fn explanation(action: JobAction) -> &'static str {
    match action {
        JobAction::Retry => {
            "It becomes due now with fresh attempts, to the lead's current email or phone (a contact corrected in the lead is the one used). It passes the same gate as a first send: outside its send window it waits for the opening, and a person who got this message meanwhile through another lead does not get it again (the duplicate check and the cap)."
        }
        JobAction::SendNow => {
            "It becomes due now instead of waiting for its delay. It passes the same gate as a first send: outside its send window it waits for the opening, and the duplicate check and the cap apply."
        }
        JobAction::SendAgain => {
            "It goes again as a new message, to the lead's current email or phone, with fresh attempts. It passes the same gate as a first send: the send window, the duplicate check and the cap. The earlier message stays in its history."
        }
        JobAction::Cancel => {
            "It will not be sent. The reason is kept on the message and in the audit."
        }
    }
}

/// A cancel of a member of an email batch in doubt that will go again
/// (the statement refuses it too; this says why).
fn refuses_in_doubt(action: JobAction, status: &str, batch_members: i64) -> Option<String> {
    (action == JobAction::Cancel
        && batch_members > 0
        && JobStatus::parse(status).is_some_and(JobStatus::is_waiting))
    .then(|| batch_in_doubt_refusal(batch_members))
}

/// "Send again" is for a message whose delivery failed after it was sent;
/// a complaint is the person's "stop".
fn refuses_send_again(action: JobAction, job: &tokio_postgres::Row) -> Option<String> {
    (action == JobAction::SendAgain && job.get::<_, &str>("status") == "sent" && !allowed(action, job)).then(|| {
        "Only a message whose delivery failed after it was sent (bounced, suppressed, undelivered, rejected, expired) can be sent again; a complaint never is. Nothing was changed.".to_string()
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    jobs: String,
}

fn parse_target(id: &str, action: &str) -> Option<(i64, JobAction)> {
    Some((id.parse().ok().filter(|n| *n > 0)?, parse_action(action)?))
}

/// The job an action names, or the page to answer with: 404 when there is
/// no such job, 503 when the database cannot say.
async fn load(gate: &Gate, session: &Session, id: i64) -> Result<tokio_postgres::Row, Response> {
    match gate.client.query_opt(JOB, &[&id]).await {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(problem(
            StatusCode::NOT_FOUND,
            Some(session),
            &format!("No job has id {id}."),
        )),
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops action: job query failed");
            Err(super::page::unavailable())
        }
    }
}

/// What the operator should know before confirming: a batch that goes
/// again whole, a contact the provider will likely refuse again.
fn warnings(action: JobAction, job: &tokio_postgres::Row) -> String {
    let status: &str = job.get("status");
    let batch: i64 = job.get("batch_members");
    let same_contact = if action == JobAction::SendAgain && job.get::<_, bool>("same_contact") {
        format!(
            "<p class=alert>The lead's contact is still the one this message {} at: the provider will likely refuse it again. Correct the lead's email or phone first, unless the mailbox or phone was fixed.</p>",
            esc(&job
                .get::<_, Option<String>>("delivery_status")
                .unwrap_or_default())
        )
    } else {
        String::new()
    };
    let whole_batch = if action == JobAction::Retry && batch > 0 && status == "failed" {
        format!(
            "<p class=muted>It was sent to Resend in a batch of {batch} whose outcome is unknown: the whole batch goes again, under its key and with the emails as they were, so Resend sends none of them twice.</p>"
        )
    } else {
        String::new()
    };
    whole_batch + &same_contact
}

pub async fn confirm(
    State(state): State<AppState>,
    visitor: Visitor,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = match gate.session_for_action() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let Some((id, action)) = parse_target(&id, &action) else {
        return problem(StatusCode::NOT_FOUND, Some(session), "No such action.");
    };
    let job = match load(&gate, session, id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let status: &str = job.get("status");
    let lead: Uuid = job.get("lead_id");
    let what = describe_job(
        job.get("channel"),
        job.get("template"),
        job.get("name"),
        lead,
    );
    if let Some(refusal) = refuses_send_again(action, &job) {
        return problem(StatusCode::CONFLICT, Some(session), &refusal);
    }
    if !allowed(action, &job) {
        return problem(
            StatusCode::CONFLICT,
            Some(session),
            &format!(
                "This message is {status}: “{}” does not apply to it any more. Nothing was changed.",
                question(action)
            ),
        );
    }
    let batch: i64 = job.get("batch_members");
    if let Some(refusal) = refuses_in_doubt(action, status, batch) {
        return problem(StatusCode::CONFLICT, Some(session), &refusal);
    }
    let warnings = warnings(action, &job);
    let reason_field = if action == JobAction::Cancel {
        "<p><label for=reason>Reason (kept on the message and in the audit)</label><br><textarea id=reason name=reason required maxlength=500></textarea></p>"
    } else {
        "<p><label for=reason>Note for the audit (optional)</label><br><textarea id=reason name=reason maxlength=500></textarea></p>"
    };
    let last_error = job
        .get::<_, Option<String>>("last_error")
        .map(|e| {
            format!(
                "<p>Its last error: <span class=reason>{}</span></p>",
                esc(&e)
            )
        })
        .unwrap_or_default();
    Html(frame(
        "leadrelay — confirm",
        Some(session),
        &format!(
            "<h1>{q}?</h1><div class=card><p>{q} {what} (job {id}, now <b>{status}</b>, due {due} UTC)?</p>{last_error}<p class=muted>{explain}</p>{warnings}\
<form method=post action=\"/ops/jobs/{id}/{path}\"><input type=hidden name=csrf value=\"{csrf}\">{reason_field}\
<div class=actions><button type=submit class=confirm>{q}</button><a href=\"/ops/leads/{lead}\">Back</a></div></form></div>",
            q = question(action),
            status = esc(status),
            due = time(job.get("due_at")),
            explain = explanation(action),
            path = path(action),
            csrf = esc(session.csrf()),
        ),
    ))
    .into_response()
}

/// The console acting for `session`, for the audit.
pub(super) fn actor(session: &Session, visitor: &Visitor) -> Actor {
    Actor {
        session_id: Some(session.id),
        name: "console".into(),
        client_addr: Some(visitor.addr_text()),
    }
}

pub async fn perform(
    State(state): State<AppState>,
    visitor: Visitor,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let session = &session;
    let Some((id, action)) = parse_target(&id, &action) else {
        return problem(StatusCode::NOT_FOUND, Some(session), "No such action.");
    };
    let reason = form.reason.trim();
    if reason.chars().count() > 500 {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(session),
            "The reason is at most 500 characters. Nothing was changed.",
        );
    }
    if action == JobAction::Cancel && reason.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(session),
            "A cancellation needs a reason. Nothing was changed.",
        );
    }
    let lead: Uuid = match load(&gate, session, id).await {
        Ok(job) => {
            if let Some(refusal) =
                refuses_in_doubt(action, job.get("status"), job.get("batch_members"))
                    .or_else(|| refuses_send_again(action, &job))
            {
                return problem(StatusCode::CONFLICT, Some(session), &refusal);
            }
            job.get("lead_id")
        }
        Err(response) => return response,
    };
    let reason = (!reason.is_empty()).then_some(reason);
    match operator::act(
        &gate.client,
        operator(action),
        &[id],
        reason,
        &actor(session, &visitor),
    )
    .await
    {
        Ok(done) => {
            metrics::counter!("leadrelay_ops_actions_total", "action" => operator(action).as_str())
                .increment(1);
            tracing::info!(
                job = id,
                action = operator(action).as_str(),
                changed = done.changed.len(),
                session = session.id,
                "ops action"
            );
            Redirect::to(&format!("/ops/leads/{lead}#job-{id}")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops action failed");
            super::page::unavailable()
        }
    }
}

pub async fn confirm_bulk(State(state): State<AppState>, visitor: Visitor) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = match gate.session_for_action() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let rows = match super::dashboard::retriable_failures(&gate.client).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops bulk retry query failed");
            return super::page::unavailable();
        }
    };
    if rows.is_empty() {
        return problem(
            StatusCode::CONFLICT,
            Some(session),
            "No failed message in the failures table: nothing to retry.",
        );
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, i64>(7).to_string())
        .collect();
    let list: String = rows
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                time(r.get(6)),
                name_cell(r.get(1)),
                esc(r.get::<_, &str>(2)),
                esc(&r.get::<_, Option<String>>("last_error").unwrap_or_default())
            )
        })
        .collect();
    Html(frame(
        "leadrelay — confirm",
        Some(session),
        &format!(
            "<h1>Retry {n} failed message(s)?</h1><div class=card><p>These are the failed and invalid messages of the failures table (the last day). Each becomes due now with fresh attempts, to its lead's current email or phone; one whose contact is still unusable stays as it is.</p>\
<form method=post action=/ops/failures/retry><input type=hidden name=csrf value=\"{csrf}\"><input type=hidden name=jobs value=\"{jobs}\">\
<p><label for=reason>Note for the audit (optional)</label><br><textarea id=reason name=reason maxlength=500></textarea></p>\
<div class=actions><button type=submit class=confirm>Retry {n}</button><a href=/ops>Back</a></div></form></div>\
<table><thead><tr><th>When (UTC)</th><th>Name</th><th>Channel</th><th>Reason</th></tr></thead><tbody>{list}</tbody></table>",
            n = rows.len(),
            csrf = esc(session.csrf()),
            jobs = ids.join(","),
        ),
    ))
    .into_response()
}

/// The ids a bulk form names: positive whole numbers, comma-separated.
fn parse_ids(text: &str) -> Result<Vec<i64>, String> {
    let ids: Vec<i64> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "The list of messages is malformed.".to_string())
        })
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err("No message was named.".into());
    }
    if ids.len() > MAX_BULK {
        return Err(format!("At most {MAX_BULK} messages at once."));
    }
    Ok(ids)
}

pub async fn perform_bulk(
    State(state): State<AppState>,
    visitor: Visitor,
    Form(form): Form<ActionForm>,
) -> Response {
    let (gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let session = &session;
    let ids = match parse_ids(&form.jobs) {
        Ok(ids) => ids,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                Some(session),
                &format!("{e} Nothing was changed."),
            );
        }
    };
    let reason = form.reason.trim().chars().take(500).collect::<String>();
    let reason = (!reason.is_empty()).then_some(reason.as_str());
    match operator::act(
        &gate.client,
        Action::BulkRetry,
        &ids,
        reason,
        &actor(session, &visitor),
    )
    .await
    {
        Ok(done) => {
            metrics::counter!("leadrelay_ops_actions_total", "action" => "bulk_retry").increment(1);
            tracing::info!(
                asked = ids.len(),
                changed = done.changed.len(),
                session = session.id,
                "ops bulk retry"
            );
            let left = ids.len() - done.changed.len();
            Html(frame(
                "leadrelay — retried",
                Some(session),
                &format!(
                    "<h1>Retried</h1><p class=note><span class=bulk-done>{}</span> message(s) are due again.{}</p><p><a href=/ops>Back to the front page</a></p>",
                    done.changed.len(),
                    if left > 0 {
                        format!(" {left} were left as they were: they had moved on meanwhile, or their lead's email or phone is still unusable.")
                    } else {
                        String::new()
                    }
                ),
            ))
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops bulk retry failed");
            super::page::unavailable()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_actions_on_plain_ids() {
        assert_eq!(parse_target("12", "retry"), Some((12, JobAction::Retry)));
        assert_eq!(
            parse_target("12", "send-now"),
            Some((12, JobAction::SendNow))
        );
        for (id, action) in [
            ("0", "retry"),
            ("-1", "cancel"),
            ("1e3", "retry"),
            ("12", "delete"),
            ("12", "Retry"),
            ("9999999999999999999999", "retry"),
        ] {
            assert_eq!(parse_target(id, action), None, "{id} {action}");
        }
    }

    #[test]
    fn every_action_has_its_own_path() {
        for action in JobAction::ALL {
            assert_eq!(parse_action(path(action)), Some(action));
        }
    }

    #[test]
    fn bulk_lists_are_checked() {
        assert_eq!(parse_ids("3, 1,2,"), Ok(vec![3, 1, 2]));
        assert!(parse_ids("").is_err());
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("1;drop table x").is_err());
        assert!(parse_ids("-4").is_err());
        let many = (1..=1001)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_ids(&many).is_err());
    }
}
