//! `/ops/search?q=`: leads by email, phone (typed any way), name fragment or
//! id, newest first, with both channels' states. Contacts are masked in the
//! list; a lead's page shows them in full.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::page::{
    esc, name_cell, or_unnamed, page as frame, problem, state_cell, time, visitor_text,
};
use super::{Gate, Visitor};
use crate::http::AppState;
use crate::messages::mask;
use crate::store::search::LeadQuery;

#[derive(Debug, serde::Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn page_handler(state: &AppState, visitor: &Visitor, q: &str) -> Response {
    let gate = match Gate::open(state, visitor).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let session = gate.access.session();
    let query = match LeadQuery::parse(q) {
        Ok(query) => query,
        Err(e) => {
            // a name too short to search by is found by the lead's contacts
            let hint = match e {
                crate::store::search::SearchError::ShortName => format!(
                    " “{}” has fewer than 3 letters or digits to search names by: search by the lead's email or phone (typed any way), or its id.",
                    q.trim().chars().take(60).collect::<String>()
                ),
                _ => String::new(),
            };
            return problem(StatusCode::BAD_REQUEST, session, &format!("{e}.{hint}"));
        }
    };
    let (statement, value) = query.statement();
    let rows = match gate.client.query(statement, &[&value]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops search failed");
            return super::page::unavailable();
        }
    };
    let mut body = String::new();
    for r in &rows {
        let id: uuid::Uuid = r.get(0);
        let created: DateTime<Utc> = r.get(5);
        body.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/ops/leads/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>{}{}</tr>",
            time(created),
            or_unnamed(name_cell(r.get(1))),
            visitor_text(&mask::email(&r.get::<_, Option<String>>(2).unwrap_or_default())),
            visitor_text(&mask::phone(&r.get::<_, Option<String>>(3).unwrap_or_default())),
            visitor_text(&r.get::<_, Option<String>>(4).unwrap_or_default()),
            state_cell(r.get(6), r.get(7), r.get(8), r.get(9)),
            state_cell(r.get(10), r.get(11), r.get(12), r.get(13)),
        ));
    }
    let what = match &query {
        LeadQuery::Id(_) => "lead id",
        LeadQuery::Email(_) => "email",
        LeadQuery::Phone(_) => "phone (normalised to its international digits)",
        LeadQuery::Name(_) => "name containing",
    };
    let summary = if rows.is_empty() {
        format!(
            "<p class=muted>No lead found by {what} “{}”.</p>",
            esc(q.trim())
        )
    } else {
        format!(
            "<p class=muted>{}{} lead(s) found by {what} “{}”, newest first.</p>\
<table class=results><thead><tr><th>Arrived (UTC)</th><th>Name</th><th>Email</th><th>Phone</th><th>Source</th><th>Email message</th><th>SMS</th></tr></thead><tbody>{body}</tbody></table>",
            if rows.len() == 50 { "The newest " } else { "" },
            rows.len(),
            esc(q.trim())
        )
    };
    Html(frame(
        "leadrelay — search",
        session,
        &format!("<h1>Search</h1>{summary}"),
    ))
    .into_response()
}

pub async fn page(
    State(state): State<AppState>,
    visitor: Visitor,
    Query(query): Query<SearchQuery>,
) -> Response {
    page_handler(&state, &visitor, &query.q).await
}
