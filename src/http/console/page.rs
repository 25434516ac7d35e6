//! The console's frame: the HTML shell with its search box and sign-out
//! form, the headers every console response carries, and the small pieces
//! every page uses. Every value from the database goes through `esc`: names
//! are whatever people typed.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::session::Session;
use crate::domain::{DeliveryState, JobStatus};
pub use crate::messages::templates::html_escape as esc;

/// Nothing of the console is cached, framed, or allowed to run scripts; the
/// email preview's frame is sandboxed and reads only inline styles and
/// https images.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
img-src 'self' data: https:; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the console's headers to every response of its routes (the email
/// frame sets a policy of its own, kept).
pub async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A whole page: the header (search, sign out) when signed in, then `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            "<nav><a href=/ops class=brand>leadrelay</a>\
<form method=get action=/ops/search class=search><input name=q type=search placeholder='Email, phone, name or lead id' aria-label=Search required maxlength=200><button type=submit>Search</button></form>\
<form method=post action=/ops/logout><input type=hidden name=csrf value=\"{}\"><button type=submit>Sign out</button></form></nav>",
            esc(s.csrf())
        ),
        None => "<nav><a href=/ops class=brand>leadrelay</a>\
<form method=get action=/ops/search class=search><input name=q type=search placeholder='Email, phone, name or lead id' aria-label=Search required maxlength=200><button type=submit>Search</button></form></nav>"
            .to_string(),
    };
    shell(title, &format!("{nav}{body}"))
}

pub fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
<title>{title}</title><style>{CSS}</style></head><body>{body}</body></html>",
        title = esc(title)
    )
}

const CSS: &str = "body{font-family:system-ui,Arial,sans-serif;margin:24px;color:#1d2430;background:#f7f8fa}\
h1{font-size:22px;margin:12px 0 4px}h2{font-size:17px;margin:28px 0 8px}h3{font-size:15px;margin:16px 0 6px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}\
th{background:#eef1f5}.ok{color:#16794c;font-weight:600}.bad{color:#b42318;font-weight:600}\
.wait{color:#8a6d00}.muted{color:#6b7280}.alert{background:#fde8e7;border:1px solid #f5b5b0;padding:10px;border-radius:6px}\
.note{background:#e8f1fd;border:1px solid #b0cdf5;padding:10px;border-radius:6px}\
.login{max-width:340px;margin:80px auto;background:#fff;padding:24px;border-radius:8px;box-shadow:0 1px 4px #0002}\
input[type=password]{width:100%;padding:8px;margin:8px 0;box-sizing:border-box}button{padding:6px 12px;cursor:pointer}\
.charts{display:flex;gap:24px;flex-wrap:wrap}.chart{background:#fff;padding:12px;border-radius:8px}\
nav{display:flex;gap:16px;align-items:center;border-bottom:1px solid #e3e6ea;padding-bottom:10px}\
nav .brand{font-weight:700;font-size:18px;color:#1d2430;text-decoration:none}.search{flex:1;display:flex;gap:6px}\
.search input{flex:1;max-width:420px;padding:6px}.card{background:#fff;border-radius:8px;padding:12px 16px;margin:12px 0}\
.actions{display:flex;gap:8px;margin:8px 0}.actions a{padding:5px 10px;border:1px solid #c5ccd6;border-radius:5px;text-decoration:none;color:#1d2430;background:#f3f5f8}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dt{color:#6b7280}dd{margin:0}\
textarea{width:100%;max-width:520px;height:70px}pre{white-space:pre-wrap;word-break:break-word}\
code,dd{overflow-wrap:anywhere}iframe{max-width:100%}\
@media (max-width:760px){body{margin:10px}nav{flex-wrap:wrap}.search input{min-width:0}\
table{display:block;overflow-x:auto;max-width:100%}.charts{gap:12px}.chart{padding:8px;max-width:100%;box-sizing:border-box}}";

pub fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=alert>{}</p>", esc(e)))
        .unwrap_or_default();
    shell(
        "leadrelay — sign in",
        &format!(
            "<form class=login method=post action=/ops/login><h1>leadrelay</h1>\
<p class=muted>Enter the admin token (ADMIN_TOKEN).</p>{error}\
<label for=token>Admin token</label><input id=token name=token type=password autocomplete=current-password required maxlength=512>\
<button type=submit>Sign in</button></form>"
        ),
    )
}

/// A page saying something went wrong, with its status.
pub fn problem(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    (
        status,
        Html(page(
            "leadrelay",
            session,
            &format!("<p class=alert>{}</p>", esc(message)),
        )),
    )
        .into_response()
}

/// The database did not answer: logged where it happened, said plainly here.
pub fn unavailable() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "The database is not answering. Try again in a moment.",
    )
}

/// A lead's name as typed, escaped and cut to 60 characters.
/// How many characters of a name a list shows before an ellipsis.
const NAME_IN_LISTS: usize = 60;

/// Text a visitor typed (a name, an address, a source), escaped and
/// bidi-isolated: a right-to-left override or an unclosed embedding in it
/// cannot reorder what the page shows around it.
pub fn visitor_text(text: &str) -> String {
    format!("<bdi>{}</bdi>", esc(text))
}

/// A name in a list: isolated, cut at 60 characters with an ellipsis and the
/// whole name on hover; empty when there is none.
pub fn name_cell(name: Option<String>) -> String {
    let name = name.unwrap_or_default();
    if name.trim().is_empty() {
        return String::new();
    }
    if name.chars().count() <= NAME_IN_LISTS {
        return visitor_text(&name);
    }
    format!(
        "<bdi title=\"{}\">{}…</bdi>",
        esc(&name),
        esc(&name.chars().take(NAME_IN_LISTS).collect::<String>())
    )
}

/// The characters in `text` that change how text is shown without being
/// seen (bidi controls, zero-width and other invisible format characters),
/// named, for an operator to be told of.
pub fn hidden_characters(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for c in text.chars() {
        let name = match c {
            '\u{202A}' => "left-to-right embedding",
            '\u{202B}' => "right-to-left embedding",
            '\u{202C}' => "pop directional formatting",
            '\u{202D}' => "left-to-right override",
            '\u{202E}' => "right-to-left override",
            '\u{2066}' => "left-to-right isolate",
            '\u{2067}' => "right-to-left isolate",
            '\u{2068}' => "first strong isolate",
            '\u{2069}' => "pop directional isolate",
            '\u{200E}' => "left-to-right mark",
            '\u{200F}' => "right-to-left mark",
            '\u{061C}' => "Arabic letter mark",
            '\u{200B}' => "zero-width space",
            '\u{200C}' => "zero-width non-joiner",
            '\u{200D}' => "zero-width joiner",
            '\u{2060}' => "word joiner",
            '\u{FEFF}' => "zero-width no-break space",
            '\u{00AD}' => "soft hyphen",
            _ => continue,
        };
        let entry = format!("U+{:04X} ({name})", c as u32);
        if !found.contains(&entry) {
            found.push(entry);
        }
    }
    found
}

pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M").to_string()
}

/// One channel's state as a table cell: colour by outcome, the hold or
/// error as its title.
pub fn state_cell(
    status: Option<&str>,
    delivery: Option<&str>,
    error: Option<&str>,
    held_until: Option<DateTime<Utc>>,
) -> String {
    let Some(status) = status else {
        return "<td class=muted>—</td>".into();
    };
    let reached = delivery.and_then(DeliveryState::parse);
    let class = match (JobStatus::parse(status), reached) {
        (_, Some(d)) if d.is_failure() => "bad",
        (_, Some(d)) if d.arrived() => "ok",
        (Some(s), _) if s.is_failure() => "bad",
        (Some(JobStatus::Sent), _) => "ok",
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

/// A link needs text: a lead without a name reads "(no name)".
pub fn or_unnamed(name: String) -> String {
    if name.trim().is_empty() {
        "<span class=muted>(no name)</span>".into()
    } else {
        name
    }
}

/// Used by the action pages to say which message they act on.
pub fn describe_job(
    channel: &str,
    template: &str,
    name: Option<String>,
    lead: uuid::Uuid,
) -> String {
    format!(
        "the {} message <b>{}</b> of <a href=\"/ops/leads/{lead}\">{}</a>",
        esc(channel),
        esc(template),
        or_unnamed(name_cell(name)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_isolated_cut_with_an_ellipsis_and_whole_on_hover() {
        assert_eq!(name_cell(None), "");
        assert_eq!(name_cell(Some("  ".into())), "");
        assert_eq!(name_cell(Some("Ая <b>".into())), "<bdi>Ая &lt;b&gt;</bdi>");
        let long = "Н".repeat(70);
        let cell = name_cell(Some(long.clone()));
        assert!(
            cell.starts_with(&format!("<bdi title=\"{long}\">")),
            "{cell}"
        );
        assert!(
            cell.ends_with(&format!("{}…</bdi>", "Н".repeat(60))),
            "{cell}"
        );
        let spoof = "\u{202E}txt.exe Алихан";
        assert!(name_cell(Some(spoof.into())).starts_with("<bdi>"));
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_named_once_each() {
        assert!(hidden_characters("Айгерим Бекова").is_empty());
        assert_eq!(
            hidden_characters("\u{202E}abc\u{202E}\u{200B}"),
            [
                "U+202E (right-to-left override)",
                "U+200B (zero-width space)"
            ]
        );
    }
}
