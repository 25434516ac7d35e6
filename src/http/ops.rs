//! `/ops`: a server-rendered page for the marketing team and the operator,
//! behind `ADMIN_TOKEN` (a login form sets a cookie derived from the token;
//! `Authorization: Bearer` works too). It shows the last leads with each
//! channel's state, the failures of the last day with their reasons, the SMS
//! a look-up found at Mobizon instead of sending them again, and a funnel of
//! the last 24 hours and 7 days. Every value from the database is
//! HTML-escaped: names are whatever people typed.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, secret_matches};
use crate::domain::Secret;
use crate::messages::templates::html_escape as esc;

const COOKIE: &str = "leadrelay_ops";

pub const FUNNEL: &str = "
select count(distinct l.id),
       count(distinct l.id) filter (where j.channel = 'email' and j.status = 'sent'),
       count(distinct l.id) filter (where j.channel = 'email' and j.delivery_status in ('delivered', 'opened', 'clicked')),
       count(distinct l.id) filter (where j.channel = 'sms' and j.status = 'sent'),
       count(distinct l.id) filter (where j.channel = 'sms' and j.delivery_status = 'delivered')
from public.landing_leads l
left join public.notification_jobs j on j.lead_id = l.id
where l.created_at > now() - $1::text::interval";

pub const LAST_LEADS: &str = "
select lead_id, name, source, created_at, email_status, email_delivery_status,
       coalesce(email_hold_reason, email_error), sms_status, sms_delivery_status,
       coalesce(sms_hold_reason, sms_error), email_held_until, sms_held_until
from public.lead_notification_status
order by created_at desc
limit 50";

pub const FAILURES: &str = "
select j.lead_id, l.name, j.channel, j.status, j.delivery_status, j.last_error, j.updated_at
from public.notification_jobs j
join public.landing_leads l on l.id = j.lead_id
where j.updated_at > now() - interval '1 day'
  and (j.status in ('failed', 'invalid')
       or public.leadrelay_delivery_rank(j.delivery_status) >= 60)
order by j.updated_at desc
limit 100";

/// SMS whose attempt got no answer and that a look-up found at Mobizon
/// (recorded sent, not sent again), the last 7 days; and how many SMS are
/// still in doubt, waiting for a look-up.
pub const RECOVERED: &str = "
select j.recovered_at, l.name, j.recipient, j.provider_message_id, j.attempts
from public.notification_jobs j
join public.landing_leads l on l.id = j.lead_id
where j.recovered_at > now() - interval '7 days'
order by j.recovered_at desc
limit 50";
pub const IN_DOUBT: &str = "
select count(*) from public.notification_jobs
where channel = 'sms' and outcome_unknown_since is not null and status <> 'sent'";

/// What the delivery policies did: messages a send window holds now, and
/// those cancelled in the last 24 hours as duplicates or over the cap.
pub const POLICY_COUNTS: &str = "
select (select count(*) from public.notification_jobs
         where status = 'scheduled' and held_until = due_at),
       (select count(*) from public.notification_jobs
         where cancelled_by = 'duplicate' and finished_at > now() - interval '24 hours'),
       (select count(*) from public.notification_jobs
         where cancelled_by = 'recipient_cap' and finished_at > now() - interval '24 hours')";

/// The recipients most messages were refused to in the last 24 hours: one
/// phone or address far ahead of the rest is someone using the form on it.
pub const POLICY_TOP_RECIPIENTS: &str = "
select j.channel, lower(j.recipient), count(*), max(j.finished_at),
       count(*) filter (where j.cancelled_by = 'recipient_cap')
from public.notification_jobs j
where j.cancelled_by is not null and j.finished_at > now() - interval '24 hours'
group by j.channel, lower(j.recipient)
order by count(*) desc, max(j.finished_at) desc
limit 10";

/// The last cancellations, newest first.
pub const POLICY_LAST: &str = "
select j.finished_at, l.name, j.channel, j.cancelled_by, j.last_error
from public.notification_jobs j
left join public.landing_leads l on l.id = j.lead_id
where j.cancelled_by is not null and j.finished_at > now() - interval '24 hours'
order by j.finished_at desc
limit 20";

/// Jobs that should have been sent more than two minutes ago: the worker is
/// down or stuck.
pub const OVERDUE: &str = "
select count(*) from public.notification_jobs
where (status = 'due' or status = 'scheduled') and due_at < now() - interval '2 minutes'";

/// The cookie holds a digest of the token, not the token.
fn session_value(token: &Secret) -> String {
    let digest = Sha256::digest(format!("leadrelay-ops-session:{}", token.expose()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn authorised(headers: &HeaderMap, state: &AppState) -> bool {
    if super::require_admin(headers, state).is_ok() {
        return true;
    }
    let expected = session_value(&state.admin_token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(&format!("{COOKIE}=")))
        .any(|value| value.as_bytes().ct_eq(expected.as_bytes()).into())
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

pub async fn login(State(state): State<AppState>, Form(form): Form<Login>) -> Response {
    if !secret_matches(form.token.trim(), &state.admin_token) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_page(Some("Wrong token."))),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
        session_value(&state.admin_token)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ops")).into_response()
}

pub async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/ops"),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct PreviewQuery {
    lead: String,
}

/// A lead's email and SMS exactly as they go (or would): the same rendering
/// as the worker's and `leadrelay preview`'s. The email's HTML is shown in a
/// sandboxed frame (no scripts, no navigation of this page).
pub async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<PreviewQuery>,
) -> Response {
    if !authorised(&headers, &state) {
        return Html(login_page(None)).into_response();
    }
    let Ok(lead) = uuid::Uuid::parse_str(query.lead.trim()) else {
        return (
            StatusCode::BAD_REQUEST,
            Html(shell("leadrelay", "<p class=alert>Not a lead id.</p>")),
        )
            .into_response();
    };
    let previews = match state.pool.get().await {
        Ok(client) => crate::worker::preview::lead(&client, lead, &state.product_url, None)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match previews {
        Ok(previews) => {
            Html(shell("leadrelay — preview", &preview_body(lead, &previews))).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "ops preview query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(shell(
                    "leadrelay",
                    "<p class=alert>The database is not answering. Try again in a moment.</p>",
                )),
            )
                .into_response()
        }
    }
}

fn preview_body(lead: uuid::Uuid, previews: &[crate::worker::preview::Preview]) -> String {
    use crate::messages::templates::EmailContent;
    use crate::worker::preview::Rendered;
    let mut body = format!("<p><a href=\"/ops\">← ops</a></p><h1>Lead {lead}</h1>");
    if previews.is_empty() {
        body.push_str("<p class=muted>No messages for this lead.</p>");
    }
    for p in previews {
        body.push_str(&format!(
            "<h2>{} · {} v{} <span class=muted>({})</span></h2>",
            esc(p.channel.as_str()),
            esc(&p.template),
            p.version.map_or("?".into(), |v| v.to_string()),
            esc(p.status.as_deref().unwrap_or("no job yet")),
        ));
        match &p.rendered {
            Err(problem) => body.push_str(&format!("<p class=alert>Cannot render: {}</p>", esc(problem))),
            Ok(Rendered::Sms { text, length }) => body.push_str(&format!(
                "<pre>{}</pre><p class=muted>{}</p>",
                esc(text),
                esc(&length.to_string())
            )),
            Ok(Rendered::Email(EmailContent::Inline { subject, html, text })) => body.push_str(&format!(
                "<p><b>Subject:</b> {}</p><iframe sandbox title=\"email\" style=\"width:100%;height:360px;border:1px solid #ccc;background:#fff\" srcdoc=\"{}\"></iframe><pre>{}</pre>",
                esc(subject),
                esc(html),
                esc(text.as_deref().unwrap_or("(no text part)")),
            )),
            Ok(Rendered::Email(EmailContent::Hosted { id, variables, .. })) => body.push_str(&format!(
                "<p>Rendered by Resend from its template <code>{}</code> with {}</p>",
                esc(id),
                esc(&variables.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ")),
            )),
        }
    }
    body
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorised(&headers, &state) {
        return Html(login_page(None)).into_response();
    }
    match dashboard(&state).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "ops page query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(shell(
                    "leadrelay",
                    "<p class=alert>The database is not answering. Try again in a moment.</p>",
                )),
            )
                .into_response()
        }
    }
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
<title>{title}</title><style>{CSS}</style></head><body>{body}</body></html>",
        title = esc(title)
    )
}

const CSS: &str = "body{font-family:system-ui,Arial,sans-serif;margin:24px;color:#1d2430;background:#f7f8fa}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}\
th{background:#eef1f5}.ok{color:#16794c;font-weight:600}.bad{color:#b42318;font-weight:600}\
.wait{color:#8a6d00}.muted{color:#6b7280}.alert{background:#fde8e7;border:1px solid #f5b5b0;padding:10px;border-radius:6px}\
.login{max-width:340px;margin:80px auto;background:#fff;padding:24px;border-radius:8px;box-shadow:0 1px 4px #0002}\
input[type=password]{width:100%;padding:8px;margin:8px 0;box-sizing:border-box}button{padding:8px 14px}\
.charts{display:flex;gap:24px;flex-wrap:wrap}.chart{background:#fff;padding:12px;border-radius:8px}\
header{display:flex;justify-content:space-between;align-items:center}";

fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=alert>{}</p>", esc(e)))
        .unwrap_or_default();
    shell(
        "leadrelay — sign in",
        &format!(
            "<form class=login method=post action=/ops/login><h1>leadrelay</h1>\
<p class=muted>Enter the admin token (ADMIN_TOKEN).</p>{error}\
<label for=token>Admin token</label><input id=token name=token type=password autocomplete=current-password required>\
<button type=submit>Sign in</button></form>"
        ),
    )
}

fn state_cell(
    status: Option<&str>,
    delivery: Option<&str>,
    error: Option<&str>,
    held_until: Option<DateTime<Utc>>,
) -> String {
    let Some(status) = status else {
        return "<td class=muted>—</td>".into();
    };
    let class = match (status, delivery) {
        (_, Some("delivered" | "opened" | "clicked")) => "ok",
        (
            _,
            Some(
                "bounced" | "complained" | "failed" | "undelivered" | "rejected" | "expired"
                | "deleted",
            ),
        ) => "bad",
        ("failed" | "invalid", _) => "bad",
        ("sent", _) => "ok",
        _ => "wait",
    };
    let mut text = esc(status);
    if let Some(until) = held_until {
        text = format!("held until {} UTC", until.format("%m-%d %H:%M"));
    }
    if let Some(d) = delivery {
        text.push_str(&format!(" · {}", esc(d)));
    }
    let title = error
        .map(|e| format!(" title=\"{}\"", esc(e)))
        .unwrap_or_default();
    format!("<td class={class}{title}>{text}</td>")
}

/// Horizontal bars, one per funnel step, as inline SVG.
fn funnel_chart(title: &str, steps: &[(&str, i64)]) -> String {
    let max = steps.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let mut bars = String::new();
    for (i, (label, n)) in steps.iter().enumerate() {
        let y = 28 + i * 30;
        let width = (*n as f64 / max * 260.0).round();
        bars.push_str(&format!(
            "<text x=0 y={ty} font-size=12>{label}</text><rect x=130 y={y} width={width} height=20 fill=#2f6fed rx=3></rect>\
<text x={tx} y={ty} font-size=12>{n}</text>",
            ty = y + 14,
            tx = 136.0 + width,
            label = esc(label),
        ));
    }
    let height = 28 + steps.len() * 30;
    format!(
        "<div class=chart><svg role=img aria-label=\"{t}\" width=440 height={height}><text x=0 y=16 font-size=14 font-weight=600>{t}</text>{bars}</svg></div>",
        t = esc(title)
    )
}

async fn dashboard(state: &AppState) -> Result<String, String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let db = |e: tokio_postgres::Error| crate::store::describe(&e);
    let mut charts = String::new();
    for (title, window) in [("Last 24 hours", "24 hours"), ("Last 7 days", "7 days")] {
        let row = client.query_one(FUNNEL, &[&window]).await.map_err(db)?;
        charts.push_str(&funnel_chart(
            title,
            &[
                ("Leads", row.get(0)),
                ("Email sent", row.get(1)),
                ("Email delivered", row.get(2)),
                ("SMS sent", row.get(3)),
                ("SMS delivered", row.get(4)),
            ],
        ));
    }
    let overdue: i64 = client.query_one(OVERDUE, &[]).await.map_err(db)?.get(0);
    let alert = if overdue > 0 {
        format!(
            "<p class=alert>{overdue} message(s) are more than 2 minutes overdue: is the worker (<code>leadrelay serve</code>) running?</p>"
        )
    } else {
        String::new()
    };

    let mut leads = String::new();
    for r in client.query(LAST_LEADS, &[]).await.map_err(db)? {
        let created: DateTime<Utc> = r.get(3);
        let name: Option<String> = r.get(1);
        let lead_id: uuid::Uuid = r.get(0);
        leads.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}{}<td class=muted><a href=\"/ops/preview?lead={lead_id}\">{lead_id}</a></td></tr>",
            created.format("%Y-%m-%d %H:%M"),
            name_cell(name),
            esc(&r.get::<_, Option<String>>(2).unwrap_or_default()),
            state_cell(r.get(4), r.get(5), r.get(6), r.get(10)),
            state_cell(r.get(7), r.get(8), r.get(9), r.get(11)),
        ));
    }
    if leads.is_empty() {
        leads = "<tr><td colspan=6 class=muted>No leads yet.</td></tr>".into();
    }

    let mut failures = String::new();
    for r in client.query(FAILURES, &[]).await.map_err(db)? {
        let at: DateTime<Utc> = r.get(6);
        let name: Option<String> = r.get(1);
        failures.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=bad>{}{}</td><td>{}</td></tr>",
            at.format("%Y-%m-%d %H:%M"),
            name_cell(name),
            esc(&r.get::<_, String>(2)),
            esc(&r.get::<_, String>(3)),
            r.get::<_, Option<String>>(4)
                .map(|d| format!(" · {}", esc(&d)))
                .unwrap_or_default(),
            esc(&r.get::<_, Option<String>>(5).unwrap_or_default()),
        ));
    }
    if failures.is_empty() {
        failures = "<tr><td colspan=5 class=muted>No failures in the last day.</td></tr>".into();
    }

    let recovered = recovered_section(&client).await.map_err(db)?;
    let policies = policies_section(&client).await.map_err(db)?;

    let outbox = match &state.dev_outbox {
        Some(dir) => outbox_section(dir),
        None => String::new(),
    };

    Ok(shell(
        "leadrelay — ops",
        &format!(
            "<header><div><h1>leadrelay</h1><span class=muted>{now}</span></div>\
<form method=post action=/ops/logout><button type=submit>Sign out</button></form></header>{alert}\
<h2>Funnel</h2><div class=charts>{charts}</div>\
<h2>Last leads</h2><table><thead><tr><th>Arrived (UTC)</th><th>Name</th><th>Source</th><th>Email</th><th>SMS</th><th>Lead id</th></tr></thead><tbody>{leads}</tbody></table>\
<h2>Failures in the last day</h2><table><thead><tr><th>When (UTC)</th><th>Name</th><th>Channel</th><th>State</th><th>Reason</th></tr></thead><tbody>{failures}</tbody></table>{policies}{recovered}{outbox}",
            now = Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        ),
    ))
}

/// A lead's name as typed, escaped and cut to 60 characters.
fn name_cell(name: Option<String>) -> String {
    esc(&name
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect::<String>())
}

/// The delivery policies at work: held messages, duplicates and capped
/// messages, and the recipients they were refused to (masked).
async fn policies_section(
    client: &tokio_postgres::Client,
) -> Result<String, tokio_postgres::Error> {
    let counts = client.query_one(POLICY_COUNTS, &[]).await?;
    let (held, duplicates, capped): (i64, i64, i64) = (counts.get(0), counts.get(1), counts.get(2));
    let mask = |channel: &str, recipient: Option<String>| {
        let r = recipient.unwrap_or_default();
        esc(&match channel {
            "email" => crate::messages::mask::email(&r),
            _ => crate::messages::mask::phone(&r),
        })
    };
    let mut top = String::new();
    for r in client.query(POLICY_TOP_RECIPIENTS, &[]).await? {
        let channel: String = r.get(0);
        let last: DateTime<Utc> = r.get(3);
        let n: i64 = r.get(2);
        top.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class={}>{n}</td><td>{}</td><td>{}</td></tr>",
            esc(&channel),
            mask(&channel, r.get(1)),
            if n >= 5 { "bad" } else { "wait" },
            r.get::<_, i64>(4),
            last.format("%Y-%m-%d %H:%M"),
        ));
    }
    let mut last = String::new();
    for r in client.query(POLICY_LAST, &[]).await? {
        let at: DateTime<Utc> = r.get(0);
        last.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            at.format("%Y-%m-%d %H:%M"),
            name_cell(r.get(1)),
            esc(&r.get::<_, String>(2)),
            esc(&r.get::<_, Option<String>>(3).unwrap_or_default()),
            esc(&r.get::<_, Option<String>>(4).unwrap_or_default()),
        ));
    }
    let tables = if top.is_empty() {
        "<p class=muted>No message was refused in the last 24 hours.</p>".to_string()
    } else {
        format!(
            "<table><thead><tr><th>Channel</th><th>Recipient</th><th>Refused</th><th>Over the cap</th><th>Last (UTC)</th></tr></thead><tbody>{top}</tbody></table>\
<table><thead><tr><th>When (UTC)</th><th>Name</th><th>Channel</th><th>Policy</th><th>Reason</th></tr></thead><tbody>{last}</tbody></table>"
        )
    };
    Ok(format!(
        "<h2>Delivery policies</h2><p><span class=policy-held>{held}</span> message(s) held by a send window · \
<span class=policy-duplicates>{duplicates}</span> cancelled as duplicates · \
<span class=policy-capped>{capped}</span> cancelled over the per-recipient cap (last 24 hours)</p>{tables}"
    ))
}

/// SMS a look-up found instead of sending them again (phones masked).
async fn recovered_section(
    client: &tokio_postgres::Client,
) -> Result<String, tokio_postgres::Error> {
    let in_doubt: i64 = client.query_one(IN_DOUBT, &[]).await?.get(0);
    let mut rows = String::new();
    for r in client.query(RECOVERED, &[]).await? {
        let at: DateTime<Utc> = r.get(0);
        let name: Option<String> = r.get(1);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            at.format("%Y-%m-%d %H:%M"),
            name_cell(name),
            esc(&crate::messages::mask::phone(
                &r.get::<_, Option<String>>(2).unwrap_or_default()
            )),
            esc(&r.get::<_, Option<String>>(3).unwrap_or_default()),
            r.get::<_, i32>(4),
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=5 class=muted>None in the last 7 days.</td></tr>".into();
    }
    let doubt = if in_doubt > 0 {
        format!(
            "<p>{in_doubt} SMS wait for a look-up at Mobizon before anything is sent again.</p>"
        )
    } else {
        String::new()
    };
    Ok(format!(
        "<h2>SMS found by a look-up</h2><p class=muted>An attempt got no answer; Mobizon had taken the message, so it was recorded sent and not sent again.</p>{doubt}\
<table><thead><tr><th>When (UTC)</th><th>Name</th><th>Phone</th><th>Mobizon message id</th><th>Attempts</th></tr></thead><tbody>{rows}</tbody></table>"
    ))
}

/// Dev mode: what the stand-in providers received, newest first.
fn outbox_section(dir: &std::path::Path) -> String {
    let mut entries: Vec<(String, serde_json::Value)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((name, value))
        })
        .collect();
    entries.sort_by(|a, b| b.0.cmp(&a.0));
    let mut rows = String::new();
    for (name, v) in entries.iter().take(30) {
        let (kind, to, what) = if name.contains("-email-") {
            (
                "email",
                v["to"].to_string(),
                v["subject"].as_str().unwrap_or_default().to_string(),
            )
        } else {
            (
                "SMS",
                v["recipient"].as_str().unwrap_or_default().to_string(),
                v["text"].as_str().unwrap_or_default().to_string(),
            )
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(to.trim_matches(|c| c == '[' || c == ']' || c == '"')),
            esc(&what)
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=4 class=muted>Nothing sent yet.</td></tr>".into();
    }
    format!(
        "<h2>Outbox (dev stand-in providers, {})</h2><table><thead><tr><th>File</th><th>Kind</th><th>To</th><th>Subject / text</th></tr></thead><tbody>{rows}</tbody></table>",
        esc(&dir.display().to_string())
    )
}
