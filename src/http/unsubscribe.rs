//! `/unsubscribe/{token}`: the link every email carries (RFC 8058).
//! - `GET` shows a small page in the landing's language with one button
//!   (and, for an email whose lead has a phone, the choice to stop the SMS
//!   too); nothing changes until the button is pressed.
//! - `POST` is the mail client's one-click (`List-Unsubscribe=One-Click`, no
//!   cookie, no CSRF token, by the RFC's design: the token is the authority)
//!   or the page's button: the recipient goes on the suppression list as
//!   `unsubscribed`, and the answer is 200. A replay changes nothing more.
//! - A token that does not verify gets 400 and changes nothing.
//!
//! The claim obeys the list before any request: an email to the address
//! already scheduled is cancelled, and so is the next lead's.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use crate::domain::Channel;
use crate::messages::mask;
use crate::messages::unsubscribe::Target;
use crate::store::suppressions::{UNSUBSCRIBE, UNSUBSCRIBE_PAGE};

/// A one-click body is 26 bytes; the page's form a few more.
const MAX_BODY: usize = 1024;

/// A page of its own: no script, no frames, nothing from elsewhere.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=ru><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
<title>{title}</title><style>body{{font-family:Arial,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head><body>{body}</body></html>"
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn bad_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Ссылка недействительна",
        "<h1>Ссылка недействительна</h1><p>Эта ссылка для отписки повреждена или устарела. Ничего не изменено. Откройте ссылку из последнего письма ещё раз.</p>",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Попробуйте позже",
        "<h1>Попробуйте позже</h1><p>Сейчас не получилось сохранить ваш выбор. Ничего не изменено; попробуйте ещё раз через минуту.</p>",
    )
}

fn verified(state: &AppState, token: &str) -> Option<Target> {
    state.unsubscribe.verify(token).ok()
}

fn what(target: &Target) -> String {
    match target.channel {
        Channel::Email => format!("писем на {}", mask::email(&target.recipient)),
        _ => format!("SMS на {}", mask::phone(&target.recipient)),
    }
}

pub async fn show(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let Some(target) = verified(&state, &token) else {
        return bad_link();
    };
    let Ok(client) = state.pool.get().await else {
        return unavailable();
    };
    let row = match client
        .query_one(
            UNSUBSCRIBE_PAGE,
            &[&target.channel.as_str(), &target.recipient, &target.lead],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            tracing::error!(error = %crate::store::describe(&e), "unsubscribe page query failed");
            return unavailable();
        }
    };
    let (already, phone): (bool, Option<String>) = (row.get(0), row.get(1));
    if already {
        return page(
            StatusCode::OK,
            "Вы уже отписаны",
            &format!(
                "<h1>Вы уже отписаны</h1><p>Мы больше не отправляем {}.</p>",
                what(&target)
            ),
        );
    }
    let sms_choice = match (target.channel, phone) {
        (Channel::Email, Some(phone)) => format!(
            "<p><label><input type=checkbox name=sms value=on> И не присылать SMS на {}</label></p>",
            mask::phone(&phone)
        ),
        _ => String::new(),
    };
    page(
        StatusCode::OK,
        "Отписаться",
        &format!(
            "<h1>Отписаться</h1><p>Больше не присылать {}?</p><form method=post>{sms_choice}\
<button type=submit name=confirm value=1>Отписаться</button></form>",
            what(&target)
        ),
    )
}

pub async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let Some(target) = verified(&state, &token) else {
        return bad_link();
    };
    if body.len() > MAX_BODY {
        return page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Слишком длинный запрос",
            "<h1>Слишком длинный запрос</h1><p>Ничего не изменено.</p>",
        );
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let one_click = form
        .iter()
        .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    let also_sms =
        target.channel == Channel::Email && form.iter().any(|(k, v)| k == "sms" && v == "on");
    let note = if one_click {
        "one-click (List-Unsubscribe-Post)"
    } else {
        "the unsubscribe page"
    };
    let Ok(client) = state.pool.get().await else {
        return unavailable();
    };
    if let Err(e) = client
        .query_one(
            UNSUBSCRIBE,
            &[
                &target.channel.as_str(),
                &target.recipient,
                &target.lead,
                &note,
                &also_sms,
            ],
        )
        .await
    {
        tracing::error!(error = %crate::store::describe(&e), "unsubscribe failed");
        return unavailable();
    }
    metrics::counter!("leadrelay_unsubscribes_total", "channel" => target.channel.as_str())
        .increment(1);
    tracing::info!(lead = %target.lead, channel = target.channel.as_str(), also_sms, one_click, "unsubscribed");
    let sms = if also_sms { " и SMS" } else { "" };
    page(
        StatusCode::OK,
        "Вы отписаны",
        &format!(
            "<h1>Вы отписаны</h1><p>Мы больше не отправляем {}{sms}. Если это ошибка, напишите нам, и мы вернём рассылку.</p>",
            what(&target)
        ),
    )
}
