//! `/ops`: the console's front page, for the marketing team and the
//! operator: charts of the last 48 hours, the queue now and the funnel; the
//! last leads with each channel's state; the failures of the last day with
//! their reasons (and a bulk retry); what the delivery policies did; the SMS
//! a look-up found at Mobizon instead of sending them again. Each query
//! reads a range of an index or a partial index, so the page costs the same
//! at a million leads.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::charts::{self, Hour};
use super::page::{esc, name_cell, or_unnamed, page as frame, state_cell, time, visitor_text};
use super::{Gate, Visitor};
use crate::http::AppState;

pub const LAST_LEADS: &str = "
select lead_id, name, source, created_at, email_status, email_delivery_status,
       coalesce(email_hold_reason, email_error), sms_status, sms_delivery_status,
       coalesce(sms_hold_reason, sms_error), email_held_until, sms_held_until
from public.lead_notification_status
order by created_at desc
limit 50";

/// Failed jobs and delivery failures changed in the last day (through
/// `notification_jobs_failures_by_change_idx`, whose predicate this
/// repeats). The bulk
/// retry offers the failed and invalid ones among exactly these rows.
pub const FAILURES: &str = concat!(
    "
select j.lead_id, l.name, j.channel, j.status, j.delivery_status, j.last_error, j.updated_at, j.id
from public.notification_jobs j
join public.landing_leads l on l.id = j.lead_id
where j.updated_at > now() - interval '1 day'
  and (j.status in (",
    crate::domain::failed_statuses_sql!(),
    ")
       or j.delivery_status in (",
    crate::domain::failure_states_sql!(),
    "))
order by j.updated_at desc
limit 100"
);

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
         where status = 'scheduled' and leadrelay.held_until(status, held_until, due_at) is not null),
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

pub async fn page(State(state): State<AppState>, visitor: Visitor) -> Response {
    let gate = match Gate::open(&state, &visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    match dashboard(&state, &gate).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops page query failed");
            super::page::unavailable()
        }
    }
}

/// The failed and invalid jobs among the failures table's rows: what the
/// bulk retry offers.
pub async fn retriable_failures(
    client: &tokio_postgres::Client,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    Ok(client
        .query(FAILURES, &[])
        .await?
        .into_iter()
        .filter(|r| matches!(r.get::<_, &str>(3), "failed" | "invalid"))
        .collect())
}

async fn charts_section(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let hours: Vec<Hour> = client
        .query(charts::HOURLY, &[])
        .await?
        .iter()
        .map(|r| Hour {
            at: r.get(0),
            leads: r.get(1),
            email_sent: r.get(2),
            sms_sent: r.get(3),
            delivered: r.get(4),
        })
        .collect();
    let mut queue: Vec<(String, [i64; 4])> = ["email", "sms", "lead_tracking"]
        .iter()
        .map(|c| (c.to_string(), [0; 4]))
        .collect();
    for r in client.query(crate::http::metrics::LIVE_JOBS, &[]).await? {
        let slot = match r.get::<_, &str>(0) {
            "scheduled" => 0,
            "due" => 1,
            "sending" => 2,
            _ => 3,
        };
        let channel: &str = r.get(1);
        if let Some((_, counts)) = queue.iter_mut().find(|(c, _)| c == channel) {
            counts[slot] += r.get::<_, i64>(2);
        }
    }
    let f = client.query_one(charts::FUNNEL, &[]).await?;
    let steps = |offset: usize| -> Vec<(&str, i64)> {
        charts::FUNNEL_STEPS
            .iter()
            .enumerate()
            .map(|(i, label)| (*label, f.get::<_, i64>(i * 2 + offset)))
            .collect()
    };
    Ok(format!(
        "<p class=muted>Charts drawn at {}</p><div class=charts>{}{}</div><h2>Funnel</h2><div class=charts>{}{}</div>",
        Utc::now().format("%H:%M:%S UTC"),
        charts::hourly(&hours),
        charts::queue(&queue),
        charts::funnel("Last 24 hours", &steps(0)),
        charts::funnel("Last 7 days", &steps(1)),
    ))
}

/// What the template check finds, as the front page says it: each problem
/// (its messages fail until it is fixed), each warning.
async fn template_findings(client: &tokio_postgres::Client, product_url: &str) -> String {
    let findings = match crate::worker::template_check::check(client, product_url).await {
        Ok(findings) => findings,
        Err(e) => {
            tracing::warn!(error = %e, "ops page: checking the templates failed");
            return String::new();
        }
    };
    let mut html = String::new();
    for problem in &findings.problems {
        html.push_str(&format!(
            "<p class=alert>A template cannot be sent: {}. Its messages fail with this reason until it is fixed; the other messages go on (<code>leadrelay templates check</code>).</p>",
            esc(&problem.to_string())
        ));
    }
    for warning in &findings.warnings {
        html.push_str(&format!(
            "<p class=muted>Template note: {}</p>",
            esc(&warning.to_string())
        ));
    }
    html
}

async fn dashboard(state: &AppState, gate: &Gate) -> Result<String, tokio_postgres::Error> {
    let client = &gate.client;
    let overdue: i64 = client.query_one(OVERDUE, &[]).await?.get(0);
    let mut alert = if overdue > 0 {
        format!(
            "<p class=alert>{overdue} message(s) are more than 2 minutes overdue: is the worker (<code>leadrelay serve</code>) running?</p>"
        )
    } else {
        String::new()
    };
    alert.push_str(&template_findings(client, &state.product_url).await);
    let charts = state
        .console
        .charts
        .get_or_draw(|| charts_section(client))
        .await?;

    let leads = last_leads(client).await?;
    let (failures, bulk) = failures_section(client, gate).await?;

    let recovered = recovered_section(client).await?;
    let policies = policies_section(client).await?;

    let outbox = match &state.dev_outbox {
        Some(dir) => outbox_section(dir),
        None => String::new(),
    };

    Ok(frame(
        "leadrelay — ops",
        gate.access.session(),
        &format!(
            "<p class=muted>Page drawn at {now}</p>{alert}{charts}\
<h2>Last leads</h2><table><thead><tr><th>Arrived (UTC)</th><th>Name</th><th>Source</th><th>Email</th><th>SMS</th><th>Lead id</th></tr></thead><tbody>{leads}</tbody></table>\
<h2>Failures in the last day</h2>{bulk}<table><thead><tr><th>When (UTC)</th><th>Name</th><th>Channel</th><th>State</th><th>Reason</th></tr></thead><tbody>{failures}</tbody></table>{policies}{recovered}{outbox}",
            now = Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        ),
    ))
}

/// The last leads, each with its two messages' states.
async fn last_leads(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let mut leads = String::new();
    for r in client.query(LAST_LEADS, &[]).await? {
        let created: DateTime<Utc> = r.get(3);
        let name: Option<String> = r.get(1);
        let lead_id: uuid::Uuid = r.get(0);
        leads.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/ops/leads/{lead_id}\">{}</a></td><td>{}</td>{}{}<td class=muted><a href=\"/ops/leads/{lead_id}\">{lead_id}</a></td></tr>",
            time(created),
            or_unnamed(name_cell(name)),
            visitor_text(&r.get::<_, Option<String>>(2).unwrap_or_default()),
            state_cell(r.get(4), r.get(5), r.get(6), r.get(10)),
            state_cell(r.get(7), r.get(8), r.get(9), r.get(11)),
        ));
    }
    if leads.is_empty() {
        leads = "<tr><td colspan=6 class=muted>No leads yet.</td></tr>".into();
    }
    Ok(leads)
}

/// The failures of the last day, and the bulk retry of those that may go
/// again (for a signed-in operator).
async fn failures_section(
    client: &tokio_postgres::Client,
    gate: &Gate,
) -> Result<(String, String), tokio_postgres::Error> {
    let mut failures = String::new();
    let mut retriable = 0;
    for r in client.query(FAILURES, &[]).await? {
        let at: DateTime<Utc> = r.get(6);
        let name: Option<String> = r.get(1);
        let lead_id: uuid::Uuid = r.get(0);
        let status: &str = r.get(3);
        if crate::domain::JobStatus::parse(status).is_some_and(crate::domain::JobStatus::is_failure)
        {
            retriable += 1;
        }
        failures.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/ops/leads/{lead_id}\">{}</a></td><td>{}</td><td class=bad>{}{}</td><td>{}</td></tr>",
            time(at),
            or_unnamed(name_cell(name)),
            esc(&r.get::<_, String>(2)),
            esc(status),
            r.get::<_, Option<String>>(4)
                .map(|d| format!(" · {}", esc(&d)))
                .unwrap_or_default(),
            esc(&r.get::<_, Option<String>>(5).unwrap_or_default()),
        ));
    }
    if failures.is_empty() {
        failures = "<tr><td colspan=5 class=muted>No failures in the last day.</td></tr>".into();
    }
    let bulk = if retriable > 0 && gate.access.session().is_some() {
        format!(
            "<div class=actions><a href=/ops/failures/retry class=bulk-retry>Retry the {retriable} failed message(s) listed…</a></div>"
        )
    } else {
        String::new()
    };
    Ok((failures, bulk))
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
            time(last),
        ));
    }
    let mut last = String::new();
    for r in client.query(POLICY_LAST, &[]).await? {
        let at: DateTime<Utc> = r.get(0);
        last.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(at),
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
    let reasons: Vec<String> = client
        .query(crate::store::suppressions::BY_REASON, &[])
        .await?
        .iter()
        .map(|r| {
            format!(
                "<span class=\"suppressions-{0}\">{0}: {1}</span>",
                esc(r.get::<_, &str>(0)),
                r.get::<_, i64>(1)
            )
        })
        .collect();
    let suppressed = if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons.join(" · ")
    };
    Ok(format!(
        "<h2>Delivery policies</h2><p><span class=policy-held>{held}</span> message(s) held by a send window · \
<span class=policy-duplicates>{duplicates}</span> cancelled as duplicates · \
<span class=policy-capped>{capped}</span> cancelled over the per-recipient cap (last 24 hours)</p>\
<p class=suppression-counts>Suppressed contacts, by reason: {suppressed}</p>{tables}"
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
            time(at),
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
