//! "Ask Resend and Mobizon" on a lead's page: the reconciliation of
//! `leadrelay reconcile` for one lead (`crate::reconcile`), behind a
//! confirmation page and the session's CSRF token, audited as the console's
//! other actions are. It asks with the worker's own clients, so the team's
//! Resend limit has one pacer in the process.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use uuid::Uuid;

use super::page::{esc, page as frame, problem};
use super::{Gate, Visitor};
use crate::http::AppState;
use crate::reconcile::{self, Answer, Audit, Leads};

/// What the confirmation says will happen.
const EXPLANATION: &str = "For each of this lead's channels that has no message yet, leadrelay asks the provider (Resend's list of sent emails, Mobizon's message list) whether the system before leadrelay sent one after the lead arrived. A message found is recorded as sent, with the provider's id and state, and is not sent again. A message not found is sent, through the same gate as a first send (its send window, the duplicate check and the cap). When the answer is ambiguous (several messages) or the provider cannot be asked, nothing is sent for that channel. Everything written is kept in the audit.";

/// Resend's list has no filter by address: for a lead from long ago the
/// walk reads every email sent since, which a page cannot wait for (a
/// request has 30 s).
const ASKING_AT_MOST: std::time::Duration = std::time::Duration::from_secs(20);

fn too_long(lead: Uuid) -> String {
    format!(
        "Asking the providers about lead {lead} takes longer than a page can wait (Resend's list of sent emails is read back to the day the lead arrived, a page at a time). Nothing was changed. From the server, run: leadrelay reconcile --since <the lead's arrival> --until <a second later> — it shows the same report and asks before writing."
    )
}

#[derive(Debug, serde::Deserialize)]
pub struct ReconcileForm {
    csrf: Option<String>,
}

fn lead_of(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id.trim()).ok()
}

pub async fn confirm(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = match gate.session_for_action() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let Some(lead) = lead_of(&id) else {
        return problem(StatusCode::BAD_REQUEST, Some(session), "Not a lead id.");
    };
    Html(frame(
        "leadrelay — ask the providers",
        Some(session),
        &format!(
            "<h1>Ask Resend and Mobizon?</h1><div class=card><p>Ask the providers about lead <code>{lead}</code>?</p>\
<p class=muted>{EXPLANATION}</p>\
<form method=post action=\"/ops/leads/{lead}/reconcile\"><input type=hidden name=csrf value=\"{csrf}\">\
<div class=actions><button type=submit class=confirm>Ask Resend and Mobizon</button><a href=\"/ops/leads/{lead}\">Back</a></div></form></div>",
            csrf = esc(session.csrf()),
        ),
    ))
    .into_response()
}

pub async fn perform(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
    Form(form): Form<ReconcileForm>,
) -> Response {
    let (mut gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let Some(lead) = lead_of(&id) else {
        return problem(StatusCode::BAD_REQUEST, Some(&session), "Not a lead id.");
    };
    let asked = tokio::time::timeout(
        ASKING_AT_MOST,
        reconcile::assess(
            &gate.client,
            Some(&state.providers),
            &Leads::One(lead),
            false,
            false,
        ),
    )
    .await;
    let lines = match asked {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "ops reconcile: assessment failed");
            return super::page::unavailable();
        }
        // nothing was written: the assessment writes nothing
        Err(_) => return problem(StatusCode::GATEWAY_TIMEOUT, Some(&session), &too_long(lead)),
    };
    let actor = super::actions::actor(&session, &visitor);
    let audit = Audit {
        actor: &actor,
        action: "reconcile",
    };
    let applied = match reconcile::apply(&mut gate.client, &lines, false, &audit, false).await {
        Ok(applied) => applied,
        Err(e) => {
            tracing::error!(error = %e, "ops reconcile: writing failed");
            return super::page::unavailable();
        }
    };
    tracing::info!(
        %lead,
        recorded = applied.recorded.len(),
        enqueued = applied.enqueued.ids.len(),
        held_back = applied.held_back,
        session = session.id,
        "ops reconcile"
    );
    metrics::counter!("leadrelay_ops_actions_total", "action" => "reconcile").increment(1);
    Html(frame(
        "leadrelay — asked the providers",
        Some(&session),
        &report(lead, &lines, &applied),
    ))
    .into_response()
}

/// What was asked and written, one line per channel.
fn report(lead: Uuid, lines: &[reconcile::Line], applied: &reconcile::Applied) -> String {
    let items: String = if lines.is_empty() {
        "<li>Every channel of this lead has a message already: nothing was asked.</li>".into()
    } else {
        lines
            .iter()
            .filter(|line| line.is_reported())
            .map(|line| {
                let class = match line.answer {
                    Answer::Found(_) | Answer::NotFound | Answer::Unchecked => "ok",
                    Answer::Unusable(_) | Answer::Dashboard => "muted",
                    Answer::Ambiguous(..) | Answer::Unknown(_) => "alert",
                };
                format!(
                    "<li class={class}>{}</li>",
                    esc(&reconcile::line_text(line))
                )
            })
            .collect()
    };
    format!(
        "<h1>Asked Resend and Mobizon</h1><div class=card><ul class=reconcile-report>{items}</ul>\
<p>{recorded} message(s) recorded as found, {enqueued} job(s) created, {held} left alone.</p>\
<div class=actions><a href=\"/ops/leads/{lead}\">Back to the lead</a></div></div>",
        recorded = applied.recorded.len(),
        enqueued = applied.enqueued.ids.len(),
        held = applied.held_back,
    )
}
