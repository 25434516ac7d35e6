//! The ops console under `/ops`: find a lead, see everything that happened
//! to it, act on it. Signed in with `ADMIN_TOKEN` through a form (a
//! server-side session, see `session`), or read-only with
//! `Authorization: Bearer ADMIN_TOKEN` for scripts. Every response carries
//! `Cache-Control: no-store` and a CSP that forbids framing and scripts.

mod actions;
mod charts;
mod consent;
pub mod dashboard;
mod lead;
mod page;
mod reconcile;
mod search;
pub mod session;
mod state;
mod timeline;
mod token_guard;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use session::Visitor;
use session::{Access, Session};
pub use state::{Console, ConsoleSettings};
pub use token_guard::Try;

use super::AppState;

/// A pool connection is waited for at most this long before the page says
/// the database is busy; the worker's own claims are not queued behind it.
const DB_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops", get(dashboard::page))
        .route("/ops/login", post(login))
        .route("/ops/logout", post(logout))
        .route("/ops/search", get(search::page))
        .route("/ops/leads/{id}", get(lead::page))
        .route("/ops/leads/{id}/email/{n}", get(lead::email_frame))
        .route(
            "/ops/leads/{id}/reconcile",
            get(reconcile::confirm).post(reconcile::perform),
        )
        .route(
            "/ops/leads/{id}/forget",
            get(consent::confirm_forget).post(consent::perform_forget),
        )
        .route(
            "/ops/leads/{id}/suppress/{channel}",
            get(|s, v, p| consent::confirm(s, v, p, "suppress"))
                .post(|s, v, p, f| consent::perform(s, v, p, "suppress", f)),
        )
        .route(
            "/ops/leads/{id}/unsuppress/{channel}",
            get(|s, v, p| consent::confirm(s, v, p, "unsuppress"))
                .post(|s, v, p, f| consent::perform(s, v, p, "unsuppress", f)),
        )
        .route("/ops/preview", get(lead::preview_redirect))
        .route(
            "/ops/jobs/{id}/{action}",
            get(actions::confirm).post(actions::perform),
        )
        .route(
            "/ops/failures/retry",
            get(actions::confirm_bulk).post(actions::perform_bulk),
        )
        .layer(axum::middleware::map_response(page::headers))
}

/// A request let in: its connection, who it is, and how it came in.
pub struct Gate {
    pub client: deadpool_postgres::Object,
    pub access: Access,
}

impl Gate {
    /// The signed-in session or the bearer token; otherwise the sign-in
    /// form (or a busy page when the database does not answer).
    pub async fn open(state: &AppState, visitor: &Visitor) -> Result<Gate, Response> {
        let client = connection(state).await?;
        match super::require_admin(visitor.headers(), state, visitor.addr) {
            Ok(()) => {
                return Ok(Gate {
                    client,
                    access: Access::Bearer,
                });
            }
            // too many wrong tries from this address: refused unchecked
            Err(super::ApiError::TooManyTries(wait)) => return Err(too_many_tries(wait)),
            // no bearer, or a wrong one: a session may still let it in
            Err(_) => {}
        }
        match session::find(&client, visitor).await {
            Ok(Some(session)) => Ok(Gate {
                client,
                access: Access::Session(session),
            }),
            Ok(None) => Err(Html(page::login_page(None)).into_response()),
            Err(e) => {
                tracing::error!(error = %crate::store::describe(&e), "ops session query failed");
                Err(page::unavailable())
            }
        }
    }

    /// Forms need a session and its own CSRF token: a bearer caller, a
    /// missing token or another session's token changes nothing.
    /// A form's POST: opened, with a session whose own CSRF token the form
    /// carries.
    pub async fn for_form(
        state: &AppState,
        visitor: &Visitor,
        csrf: Option<&str>,
    ) -> Result<(Gate, Session), Response> {
        let gate = Gate::open(state, visitor).await?;
        let session = gate.session_for_form(csrf)?.clone();
        Ok((gate, session))
    }

    /// A confirmation page needs a session: the bearer token reads, it
    /// does not act.
    #[allow(clippy::result_large_err)]
    pub fn session_for_action(&self) -> Result<&Session, Response> {
        self.access.session().ok_or_else(|| {
            page::problem(
                StatusCode::FORBIDDEN,
                None,
                "Actions need a signed-in session: sign in with the form.",
            )
        })
    }

    // The refusal is the page the handler returns at once; boxing it would
    // only move the allocation.
    #[allow(clippy::result_large_err)]
    pub fn session_for_form(&self, csrf: Option<&str>) -> Result<&Session, Response> {
        match self.access.session() {
            Some(s) if s.csrf_matches(csrf) => Ok(s),
            Some(s) => Err(page::problem(
                StatusCode::FORBIDDEN,
                Some(s),
                "This form was not sent from this session of the console (its security token is missing or another session's). Nothing was changed; open the page again and retry.",
            )),
            None => Err(page::problem(
                StatusCode::FORBIDDEN,
                None,
                "Actions need a signed-in session: sign in with the form. Nothing was changed.",
            )),
        }
    }
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, Response> {
    match tokio::time::timeout(DB_WAIT, state.pool.get()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "ops console: no database connection");
            Err(page::unavailable())
        }
        Err(_) => {
            tracing::warn!("ops console: no database connection free within 3 s");
            Err(page::unavailable())
        }
    }
}

/// 429 with the sign-in form and when to try again.
fn too_many_tries(wait: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Html(page::login_page(Some(&format!(
            "Too many sign-in attempts from your address. Wait {wait} s and try again."
        )))),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    visitor: Visitor,
    Form(form): Form<Login>,
) -> Response {
    let device = visitor.device(&state.console.tokens);
    let tried =
        state
            .console
            .tokens
            .try_token(visitor.addr, device, form.token.trim(), &state.admin_token);
    if let token_guard::Try::Wait(wait) = tried {
        tracing::warn!(client = %visitor.addr, remembered = device.is_some(), "ops sign-in attempts over the limit");
        return too_many_tries(wait);
    }
    if tried != token_guard::Try::Accepted {
        tracing::info!(client = %visitor.addr, "ops sign-in refused: wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(page::login_page(Some("Wrong token."))),
        )
            .into_response();
    }
    let client = match connection(&state).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    match session::create(&client, &visitor).await {
        Ok(token) => {
            tracing::info!(client = %visitor.addr, "ops sign-in");
            // this browser is the operator's from now on (see `token_guard`)
            let device = state.console.tokens.new_device();
            let mut response = Redirect::to("/ops").into_response();
            for cookie in [
                visitor.session_cookie(&token),
                visitor.device_cookie(&device),
            ] {
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            response
        }
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "ops session not stored");
            page::unavailable()
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

/// Revokes the session in the database: its cookie opens nothing any more,
/// wherever it was copied.
async fn logout(
    State(state): State<AppState>,
    visitor: Visitor,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let (gate, session) = match Gate::for_form(&state, &visitor, form.csrf.as_deref()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if let Err(e) = session::revoke(&gate.client, &session).await {
        tracing::error!(error = %crate::store::describe(&e), "ops session not revoked");
        return page::unavailable();
    }
    (
        [(header::SET_COOKIE, visitor.cleared_cookie())],
        Redirect::to("/ops"),
    )
        .into_response()
}

/// The console's statements, for the prepare test.
pub fn statements() -> Vec<&'static str> {
    let mut all = vec![
        charts::HOURLY,
        charts::FUNNEL,
        dashboard::LAST_LEADS,
        dashboard::FAILURES,
        dashboard::OVERDUE,
        dashboard::RECOVERED,
        dashboard::IN_DOUBT,
        dashboard::POLICY_COUNTS,
        dashboard::POLICY_TOP_RECIPIENTS,
        dashboard::POLICY_LAST,
    ];
    all.extend(lead::statements());
    all.extend(session::statements());
    all
}
