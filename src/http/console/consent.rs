//! Consent on a lead's page: its email's and phone's suppressions (put on
//! the list or lifted by an operator, a reason required), and forgetting
//! the person. Each is a confirmation page (GET) and a form (POST) with the
//! session's CSRF token, run with the CLI's statements
//! (`store::suppressions`, `store::forget`) and audited as `console`.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::page::{esc, page as frame, problem, time};
use super::{Gate, Visitor};
use crate::domain::Channel;
use crate::http::AppState;
use crate::store::{forget, suppressions};

/// A lead's suppressions in force and the forms that change them, for its
/// page.
pub async fn section(
    client: &tokio_postgres::Client,
    lead: Uuid,
    acting: bool,
) -> Result<String, tokio_postgres::Error> {
    let rows = client.query(suppressions::OF_LEAD, &[&lead]).await?;
    let mut items = String::new();
    for channel in [Channel::Email, Channel::Sms] {
        let name = channel.as_str();
        let row = rows.iter().find(|r| r.get::<_, &str>(0) == name);
        let action = |what: &str, label: &str| {
            if acting {
                format!(
                    " <a href=\"/ops/leads/{lead}/{what}/{name}\" class=action-{what}>{label}…</a>"
                )
            } else {
                String::new()
            }
        };
        items.push_str(&match row {
            Some(r) => format!(
                "<li class=suppressed data-channel={name}><b>{name}</b>: suppressed ({}) since {}{}{}</li>",
                esc(r.get::<_, &str>(1)),
                time(r.get(2)),
                r.get::<_, Option<String>>(3)
                    .map(|n| format!(" — <span class=reason>{}</span>", esc(&n)))
                    .unwrap_or_default(),
                action("unsuppress", "Lift")
            ),
            None => format!(
                "<li data-channel={name}><b>{name}</b>: not suppressed{}</li>",
                action("suppress", "Suppress")
            ),
        });
    }
    let forget = if acting {
        format!(" <a href=\"/ops/leads/{lead}/forget\" class=action-forget>Forget this person…</a>")
    } else {
        String::new()
    };
    Ok(format!(
        "<div class=card id=consent><h2>Consent</h2><ul class=suppressions>{items}</ul>\
<p class=muted>A suppressed contact gets nothing, from any lead, until it is lifted; lifting sends nothing that was cancelled (retry does).{forget}</p></div>"
    ))
}

fn channel_of(name: &str) -> Option<Channel> {
    Channel::parse(name).filter(|c| matches!(c, Channel::Email | Channel::Sms))
}

#[derive(Debug, serde::Deserialize)]
pub struct ConsentForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    lead_row: Option<String>,
}

/// `/ops/leads/{id}/{suppress|unsuppress}/{channel}`: the confirmation.
pub async fn confirm(
    State(state): State<AppState>,
    visitor: Visitor,
    Path((id, channel)): Path<(String, String)>,
    action: &'static str,
) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = match gate.session_for_action() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let (Ok(lead), Some(channel)) = (Uuid::parse_str(id.trim()), channel_of(&channel)) else {
        return problem(StatusCode::NOT_FOUND, Some(session), "No such action.");
    };
    let button = if action == "suppress" {
        "Suppress"
    } else {
        "Lift it"
    };
    let (question, explain) = match action {
        "suppress" => (
            format!("Suppress this lead's {}?", channel.as_str()),
            "Nothing goes to this contact again, from this lead or any other, until an operator lifts it; what is scheduled is cancelled when it comes due.",
        ),
        "unsuppress" => (
            format!("Lift the suppression of this lead's {}?", channel.as_str()),
            "New messages to this contact go again. What was cancelled while it was suppressed stays cancelled: retry it to send it.",
        ),
        _ => return problem(StatusCode::NOT_FOUND, Some(session), "No such action."),
    };
    Html(frame(
        "leadrelay — confirm",
        Some(session),
        &format!(
            "<h1>{q}</h1><div class=card><p class=muted>{explain}</p>\
<form method=post action=\"/ops/leads/{lead}/{action}/{ch}\"><input type=hidden name=csrf value=\"{csrf}\">\
<p><label for=reason>Reason (kept in the audit)</label><br><textarea id=reason name=reason required maxlength=500></textarea></p>\
<div class=actions><button type=submit class=confirm>{button}</button><a href=\"/ops/leads/{lead}\">Back</a></div></form></div>",
            q = esc(&question),
            ch = channel.as_str(),
            csrf = esc(session.csrf()),
        ),
    ))
    .into_response()
}

/// The lead's contact on `channel`.
const CONTACT: &str =
    "select case $2 when 'email' then email else phone end from public.landing_leads where id = $1";

pub async fn perform(
    State(state): State<AppState>,
    visitor: Visitor,
    Path((id, channel)): Path<(String, String)>,
    action: &'static str,
    Form(form): Form<ConsentForm>,
) -> Response {
    let (gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let (Ok(lead), Some(channel)) = (Uuid::parse_str(id.trim()), channel_of(&channel)) else {
        return problem(StatusCode::NOT_FOUND, Some(&session), "No such action.");
    };
    let reason = form.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "A reason is required (at most 500 characters). Nothing was changed.",
        );
    }
    let contact: Option<String> = match gate
        .client
        .query_opt(CONTACT, &[&lead, &channel.as_str()])
        .await
    {
        Ok(Some(row)) => row.get(0),
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                Some(&session),
                &format!("No lead has id {lead}."),
            );
        }
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops consent: lead query failed");
            return super::page::unavailable();
        }
    };
    let Some(contact) = contact else {
        return problem(
            StatusCode::CONFLICT,
            Some(&session),
            &format!(
                "This lead has no {}. Nothing was changed.",
                channel.as_str()
            ),
        );
    };
    let actor = super::actions::actor(&session, &visitor);
    let done = match action {
        "suppress" => {
            suppressions::suppress(&gate.client, channel, &contact, reason, &actor, Some(lead))
                .await
                .map(|_| ())
        }
        "unsuppress" => suppressions::lift(&gate.client, channel, &contact, reason, &actor)
            .await
            .map(|_| ()),
        _ => return problem(StatusCode::NOT_FOUND, Some(&session), "No such action."),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/ops/leads/{lead}#consent")).into_response(),
        Err(suppressions::SuppressError::Unusable(problem_text)) => problem(
            StatusCode::CONFLICT,
            Some(&session),
            &format!("{problem_text}: nothing was changed."),
        ),
        Err(e) => {
            tracing::error!(error = %e, "ops consent action failed");
            super::page::unavailable()
        }
    }
}

/// `/ops/leads/{id}/forget`: the confirmation.
pub async fn confirm_forget(
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
    let Ok(lead) = Uuid::parse_str(id.trim()) else {
        return problem(StatusCode::BAD_REQUEST, Some(session), "Not a lead id.");
    };
    Html(frame(
        "leadrelay — forget a person",
        Some(session),
        &format!(
            "<h1>Forget this person?</h1><div class=card><p>Lead <code>{lead}</code>: its messages not sent yet are cancelled, and its email, phone, name and metadata are erased from leadrelay's tables (messages, their fixed values and errors, delivery reports, the audit's notes, the dashboard's row). Counts and states stay. Its suppressions stay as a hash: a new lead with the same contact is not messaged until an operator lifts them. This cannot be undone.</p>\
<form method=post action=\"/ops/leads/{lead}/forget\"><input type=hidden name=csrf value=\"{csrf}\">\
<p><label><input type=checkbox name=lead_row value=on> Erase them from the lead's row in landing_leads too</label></p>\
<p><label for=reason>Note for the audit (kept without the person's data)</label><br><textarea id=reason name=reason maxlength=500></textarea></p>\
<div class=actions><button type=submit class=confirm>Forget this person</button><a href=\"/ops/leads/{lead}\">Back</a></div></form></div>",
            csrf = esc(session.csrf()),
        ),
    ))
    .into_response()
}

pub async fn perform_forget(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
    Form(form): Form<ConsentForm>,
) -> Response {
    let (gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let Ok(lead) = Uuid::parse_str(id.trim()) else {
        return problem(StatusCode::BAD_REQUEST, Some(&session), "Not a lead id.");
    };
    let actor = super::actions::actor(&session, &visitor);
    let lead_row = form.lead_row.as_deref() == Some("on");
    let done = match forget::forget(&gate.client, &[lead], lead_row, &actor).await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops forget failed");
            return super::page::unavailable();
        }
    };
    let tracking = match state.tracking_pool.get().await {
        Ok(client) => match forget::erase_tracking(&client, &[lead]).await {
            Ok(n) => format!("{n} dashboard row(s) erased."),
            Err(e) => format!(
                "The dashboard row could not be erased ({}): erase its contacts by hand, or run leadrelay forget.",
                crate::store::describe(&e)
            ),
        },
        Err(e) => format!("The dashboard's database did not answer ({e}): erase its row by hand."),
    };
    tracing::info!(%lead, audit = done.audit_id, session = session.id, "ops forget");
    Html(frame(
        "leadrelay — forgotten",
        Some(&session),
        &format!(
            "<h1>Forgotten</h1><div class=card><p>{} message(s) not sent yet cancelled; erased from {} message(s), {} delivery report(s), {} suppression(s) (kept as a hash), {} audit note(s){}. {}</p>\
<div class=actions><a href=\"/ops\">Back to the front page</a></div></div>",
            done.cancelled,
            done.jobs,
            done.events,
            done.suppressions,
            done.audit_rows,
            if lead_row { ", and from the lead's row" } else { "; the lead's row keeps them" },
            esc(&tracking)
        ),
    ))
    .into_response()
}
