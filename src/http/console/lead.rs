//! `/ops/leads/{id}`: one lead and everything that happened to it: its
//! fields and metadata (contacts in full), each message's timeline in order
//! (created, scheduled, held, each attempt with its error, sent with the
//! provider's id, each delivery event, opened and clicked, the end, and
//! every operator action), the actions its state allows, and the message as
//! it was or will be sent (the worker's own rendering).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::page::{esc, hidden_characters, or_unnamed, page as frame, problem, visitor_text};
use super::timeline::{self, EVENTS, JOBS, Job};
use super::{Gate, Visitor};
use crate::domain::{DeliveryState, JobAction, JobStatus};
use crate::http::AppState;

pub const LEAD: &str = "
select id, name, email, phone, source, created_at,
       case when metadata is null or metadata = '{}'::jsonb then null else jsonb_pretty(metadata) end
from public.landing_leads where id = $1";

pub fn statements() -> [&'static str; 4] {
    [LEAD, JOBS, EVENTS, crate::store::operator::LEAD_AUDIT]
}

/// The old preview address leads to the lead's page.
#[derive(Debug, serde::Deserialize)]
pub struct PreviewQuery {
    #[serde(default)]
    lead: String,
}

pub async fn preview_redirect(Query(q): Query<PreviewQuery>) -> Response {
    match Uuid::parse_str(q.lead.trim()) {
        Ok(id) => Redirect::to(&format!("/ops/leads/{id}#preview")).into_response(),
        Err(_) => problem(StatusCode::BAD_REQUEST, None, "Not a lead id."),
    }
}

pub async fn page(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = gate.access.session();
    let Ok(lead) = Uuid::parse_str(id.trim()) else {
        return problem(StatusCode::BAD_REQUEST, session, "Not a lead id.");
    };
    match render(&state, &gate, lead).await {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            session,
            &format!("No lead has id {lead}."),
        ),
        Err(e) => {
            tracing::error!(error = %e, "ops lead page failed");
            super::page::unavailable()
        }
    }
}

async fn render(state: &AppState, gate: &Gate, lead: Uuid) -> Result<Option<String>, String> {
    let db = |e: tokio_postgres::Error| crate::store::describe(&e);
    let client = &gate.client;
    let Some(l) = client.query_opt(LEAD, &[&lead]).await.map_err(db)? else {
        return Ok(None);
    };
    let jobs = client.query(JOBS, &[&lead]).await.map_err(db)?;
    let jobs: Vec<Job> = jobs.iter().map(Job::from_row).collect();
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let events = client.query(EVENTS, &[&ids]).await.map_err(db)?;
    let audit = client
        .query(crate::store::operator::LEAD_AUDIT, &[&lead])
        .await
        .map_err(db)?;
    let previews = crate::worker::preview::lead(
        client,
        lead,
        &state.product_url,
        None,
        Some(&state.unsubscribe),
    )
    .await
    .map_err(|e| e.to_string())?;

    let created: DateTime<Utc> = l.get(5);
    let name: Option<String> = l.get(1);
    let text = |i: usize| visitor_text(&l.get::<_, Option<String>>(i).unwrap_or_default());
    // the whole name here, isolated; flagged when it holds invisible controls
    let shown_name = match name.as_deref().filter(|n| !n.trim().is_empty()) {
        Some(n) => visitor_text(n),
        None => or_unnamed(String::new()),
    };
    let hidden = hidden_characters(name.as_deref().unwrap_or_default());
    let flag = if hidden.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=alert>This name holds characters that change how text is shown without being seen: {}. It is shown isolated here; the lead keeps it as typed.</p>",
            esc(&hidden.join(", "))
        )
    };
    let metadata = match l.get::<_, Option<String>>(6) {
        Some(pretty) => format!("<pre><bdi>{}</bdi></pre>", esc(&pretty)),
        None => "none".to_string(),
    };
    let mut body = format!(
        "<h1 class=lead-name>{shown_name}</h1>{flag}<div class=card><dl>\
<dt>Lead id</dt><dd><code>{lead}</code></dd><dt>Arrived</dt><dd>{} UTC</dd>\
<dt>Email</dt><dd class=lead-email>{}</dd><dt>Phone</dt><dd class=lead-phone>{}</dd><dt>Source</dt><dd>{}</dd>\
<dt>Metadata</dt><dd>{metadata}</dd></dl></div>",
        created.format("%Y-%m-%d %H:%M:%S"),
        text(2),
        text(3),
        text(4),
    );
    body.push_str(
        &consent_and_reconcile(client, lead, gate)
            .await
            .map_err(db)?,
    );
    if jobs.is_empty() {
        body.push_str("<p class=muted>No messages for this lead: no enabled rule matched its source when it arrived.</p>");
    }
    for job in &jobs {
        body.push_str(&job_card(job, &events, &audit, gate));
    }
    body.push_str("<h2 id=preview>What was or will be sent</h2>");
    body.push_str(&preview_body(lead, &previews));
    let title = match name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        // a <title> cannot hold markup: the controls are left out of it
        Some(n) => format!(
            "leadrelay — {}",
            n.chars()
                .filter(|c| hidden_characters(&c.to_string()).is_empty())
                .collect::<String>()
        ),
        None => "leadrelay — lead".to_string(),
    };
    Ok(Some(frame(&title, gate.access.session(), &body)))
}

/// The lead's consent card, and (for a signed-in session) its
/// reconciliation with the providers.
async fn consent_and_reconcile(
    client: &tokio_postgres::Client,
    lead: Uuid,
    gate: &Gate,
) -> Result<String, tokio_postgres::Error> {
    let acting = gate.access.session().is_some();
    let mut html = super::consent::section(client, lead, acting).await?;
    if acting {
        html.push_str(&format!(
            "<div class=actions><a href=\"/ops/leads/{lead}/reconcile\" class=action-reconcile>Ask Resend and Mobizon…</a> \
<span class=muted>whether the system before leadrelay sent the messages this lead has no job for</span></div>"
        ));
    }
    Ok(html)
}

/// A message's card: its state, the actions that state allows, and its
/// timeline.
fn job_card(
    job: &Job,
    events: &[tokio_postgres::Row],
    audit: &[tokio_postgres::Row],
    gate: &Gate,
) -> String {
    let id = job.id;
    let mut actions = String::new();
    let reached = job.delivery.as_deref().and_then(DeliveryState::parse);
    if gate.access.session().is_some()
        && let Some(status) = JobStatus::parse(&job.status)
    {
        for action in JobAction::ALL
            .into_iter()
            .filter(|a| status.allows(*a, reached))
        {
            let (path, label) = (
                super::actions::path(action),
                super::actions::question(action),
            );
            actions.push_str(&format!(
                "<a href=\"/ops/jobs/{id}/{path}\" class=action-{path}>{label}…</a>"
            ));
        }
    }
    let actions = if actions.is_empty() {
        String::new()
    } else {
        format!("<div class=actions>{actions}</div>")
    };
    let state = match &job.delivery {
        Some(d) => format!("{} · {}", esc(&job.status), esc(d)),
        None => esc(&job.status),
    };
    format!(
        "<div class=card id=job-{id} data-channel=\"{ch}\" data-status=\"{st}\"><h2>{ch} · {tpl} <span class=muted>job {id}</span></h2>\
<p>State: <b class=job-state>{state}</b> · attempts {attempts} of {max_attempts}</p>{actions}\
<table class=timeline><thead><tr><th>When (UTC)</th><th>What happened</th></tr></thead><tbody>{timeline}</tbody></table></div>",
        ch = esc(&job.channel),
        tpl = esc(&job.template),
        st = esc(&job.status),
        attempts = job.attempts,
        max_attempts = job.max_attempts,
        timeline = timeline::rows(job, events, audit),
    )
}

fn preview_body(lead: Uuid, previews: &[crate::worker::preview::Preview]) -> String {
    use crate::messages::templates::EmailContent;
    use crate::worker::preview::Rendered;
    let mut body = String::new();
    if previews.is_empty() {
        body.push_str("<p class=muted>No messages for this lead.</p>");
    }
    for (n, p) in previews.iter().enumerate() {
        body.push_str(&format!(
            "<h3>{} · {} v{} <span class=muted>({})</span></h3>",
            esc(p.channel.as_str()),
            esc(&p.template),
            p.version.map_or("?".into(), |v| v.to_string()),
            esc(p.status.as_deref().unwrap_or("no job yet")),
        ));
        match &p.rendered {
            Err(problem) => body.push_str(&format!("<p class=alert>Cannot render: {}</p>", esc(problem))),
            Ok(Rendered::Sms { text, length }) => body.push_str(&format!(
                "<pre class=sms-text>{}</pre><p class=muted>{}</p>",
                visitor_text(text),
                esc(&length.to_string())
            )),
            // The email's own page, in a sandboxed frame: a srcdoc frame
            // would inherit this page's `frame-ancestors 'none'` and stay blank.
            Ok(Rendered::Email(EmailContent::Inline { subject, html: _, text })) => body.push_str(&format!(
                "<p><b>Subject:</b> {}</p><iframe sandbox title=\"email\" class=email-preview style=\"width:100%;height:360px;border:1px solid #ccc;background:#fff\" src=\"/ops/leads/{lead}/email/{n}\"></iframe><pre>{}</pre>",
                visitor_text(subject),
                visitor_text(text.as_deref().unwrap_or("(no text part)")),
            )),
            Ok(Rendered::Email(EmailContent::Hosted { id, variables, .. })) => body.push_str(&format!(
                "<p>Rendered by Resend from its template <code>{}</code> with {}</p>",
                esc(id),
                visitor_text(&variables.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ")),
            )),
        }
    }
    body
}

/// The CSP of an email shown in the console's frame: its own inline styles
/// and https images, no script, framed only by the console.
const EMAIL_FRAME_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; sandbox; frame-ancestors 'self'";

/// `/ops/leads/{id}/email/{n}`: the HTML of the lead's `n`th message as the
/// worker renders it, for the frame on the lead's page.
pub async fn email_frame(
    State(state): State<AppState>,
    visitor: Visitor,
    Path((id, n)): Path<(String, usize)>,
) -> Response {
    use crate::messages::templates::EmailContent;
    use crate::worker::preview::Rendered;
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let Ok(lead) = Uuid::parse_str(id.trim()) else {
        return problem(StatusCode::BAD_REQUEST, None, "Not a lead id.");
    };
    let previews = match crate::worker::preview::lead(
        &gate.client,
        lead,
        &state.product_url,
        None,
        Some(&state.unsubscribe),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "ops email preview failed");
            return super::page::unavailable();
        }
    };
    match previews.get(n).map(|p| &p.rendered) {
        Some(Ok(Rendered::Email(EmailContent::Inline { html, .. }))) => {
            let mut response = Html(html.clone()).into_response();
            let h = response.headers_mut();
            h.insert(
                axum::http::header::CONTENT_SECURITY_POLICY,
                axum::http::HeaderValue::from_static(EMAIL_FRAME_POLICY),
            );
            h.insert(
                axum::http::header::X_FRAME_OPTIONS,
                axum::http::HeaderValue::from_static("SAMEORIGIN"),
            );
            response
        }
        _ => problem(StatusCode::NOT_FOUND, None, "No such email."),
    }
}
