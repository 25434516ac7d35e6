//! The provider checks: each key is shown to the provider through a call
//! that sends nothing and costs nothing (Resend's domain list, Mobizon's
//! balance), then asked for what `reconcile` and `backfill` read (Resend's
//! list of sent emails, Mobizon's `message/list`, which the look-up of an SMS
//! in doubt reads too). `leadrelay dev`'s stand-ins say so in a header, and
//! are skipped.

use std::time::Duration;

use super::Check;
use crate::config::ServeArgs;
use crate::providers::clip;

/// The header `leadrelay dev`'s stand-in providers put on every answer.
pub const STAND_IN_HEADER: &str = "x-leadrelay-stand-in";

pub async fn checks(args: &ServeArgs) -> Vec<Check> {
    let http = crate::providers::http_client(Duration::from_secs(10));
    vec![
        resend(&http, args).await,
        resend_list(&http, args).await,
        mobizon(&http, args).await,
        mobizon_list(&http, args).await,
    ]
}

/// Resend's error name, or the status when it gave none.
fn error_name(status: reqwest::StatusCode, name: &str) -> String {
    clip(
        if name.is_empty() {
            status.as_str()
        } else {
            name
        },
        60,
    )
}

fn key(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|k| !k.is_empty())
}

/// Whether the key may read Resend's list of sent emails (`GET /emails`).
async fn resend_list(http: &reqwest::Client, args: &ServeArgs) -> Check {
    const NAME: &str = "resend list";
    let Some(key) = key(args.resend_api_key.as_deref()) else {
        return Check::warn(
            NAME,
            "skipped: RESEND_API_KEY is not set",
            "set it (see the resend check)",
        );
    };
    let url = base(args.resend_api_url.as_deref(), "https://api.resend.com");
    let request = http
        .get(format!("{url}/emails"))
        .query(&[("limit", "1")])
        .bearer_auth(key);
    let (status, body) = match ask(NAME, "RESEND_API_URL", &url, request).await {
        Ok(answer) => answer,
        Err(check) => return check,
    };
    let name = body
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    match status.as_u16() {
        200..=299 => Check::ok(
            NAME,
            "the key may list sent emails: reconcile and backfill can ask Resend what was sent",
        ),
        401 | 403 => Check::warn(
            NAME,
            format!(
                "the key may not list sent emails ({}): reconcile and backfill cannot ask Resend, and send nothing for the leads they cannot check",
                error_name(status, name)
            ),
            "run reconcile and backfill with a full-access key in RESEND_API_KEY (serve needs only sending access)",
        ),
        _ => Check::warn(
            NAME,
            format!("Resend answered {status} to its list of sent emails"),
            "try again later",
        ),
    }
}

/// Whether the key may call Mobizon's `message/list`: a look-up since a
/// day ago, one page of 25.
async fn mobizon_list(http: &reqwest::Client, args: &ServeArgs) -> Check {
    const NAME: &str = "mobizon list";
    let Some(key) = key(args.mobizon_api_key.as_deref()) else {
        return Check::warn(
            NAME,
            "skipped: MOBIZON_API_KEY is not set",
            "set it (see the mobizon check)",
        );
    };
    let url = base(args.mobizon_api_url.as_deref(), "https://api.mobizon.kz");
    let since = crate::providers::mobizon::lookup_window_start(chrono::Utc::now());
    let request = http
        .post(format!("{url}/service/message/list"))
        .query(&[("output", "json"), ("api", "v1"), ("apiKey", key)])
        .form(&[
            ("criteria[campaignCreateTsFrom]", since.as_str()),
            ("pagination[pageSize]", "25"),
            ("pagination[currentPage]", "0"),
        ]);
    let (status, body) = match ask(NAME, "MOBIZON_API_URL", &url, request).await {
        Ok(answer) => answer,
        Err(check) => return check,
    };
    match (status.as_u16(), body.get("code").and_then(|v| v.as_i64())) {
        (200..=299, Some(0)) => Check::ok(
            NAME,
            "the key may call message/list: an SMS in doubt can be looked up, and reconcile and backfill can ask Mobizon",
        ),
        (_, code) => Check::warn(
            NAME,
            format!(
                "Mobizon refused message/list (code {}: {}): an SMS in doubt waits, and reconcile and backfill send nothing they cannot check",
                code.map_or_else(|| status.as_u16().to_string(), |c| c.to_string()),
                clip(
                    body.get("message")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default(),
                    120
                )
            ),
            "allow the API key the message module in Mobizon's settings",
        ),
    }
}

fn base(value: Option<&str>, default: &str) -> String {
    match value.map(str::trim) {
        None | Some("") => default.to_string(),
        Some(v) => v.trim_end_matches('/').to_string(),
    }
}

async fn resend(http: &reqwest::Client, args: &ServeArgs) -> Check {
    const NAME: &str = "resend";
    let Some(key) = args
        .resend_api_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
    else {
        return Check::fail(
            NAME,
            "RESEND_API_KEY is not set",
            "create an API key in Resend (API Keys) and set it",
        );
    };
    let url = base(args.resend_api_url.as_deref(), "https://api.resend.com");
    let request = http.get(format!("{url}/domains")).bearer_auth(key.trim());
    let (status, body) = match ask(NAME, "RESEND_API_URL", &url, request).await {
        Ok(answer) => answer,
        Err(check) => return check,
    };
    let name = body
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    match status.as_u16() {
        200..=299 => Check::ok(NAME, "API key accepted (a full-access key)"),
        // A sending-only key may not list domains: it is accepted all the same.
        401 | 403 if name == "restricted_api_key" => {
            Check::ok(NAME, "API key accepted (a sending-only key)")
        }
        401 | 403 => Check::fail(
            NAME,
            format!("Resend refused the API key ({})", error_name(status, name)),
            "create a new key in Resend (API Keys) and set RESEND_API_KEY",
        ),
        _ => Check::warn(
            NAME,
            format!("Resend answered {status} ({})", clip(name, 60)),
            "try again later; see Resend's status page",
        ),
    }
}

async fn mobizon(http: &reqwest::Client, args: &ServeArgs) -> Check {
    const NAME: &str = "mobizon";
    let Some(key) = args
        .mobizon_api_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
    else {
        return Check::fail(
            NAME,
            "MOBIZON_API_KEY is not set",
            "copy the API key from Mobizon's settings and set it",
        );
    };
    let url = base(args.mobizon_api_url.as_deref(), "https://api.mobizon.kz");
    let request = http
        .get(format!("{url}/service/user/getownbalance"))
        .query(&[("output", "json"), ("api", "v1"), ("apiKey", key.trim())]);
    let (status, body) = match ask(NAME, "MOBIZON_API_URL", &url, request).await {
        Ok(answer) => answer,
        Err(check) => return check,
    };
    let code = body.get("code").and_then(|v| v.as_i64());
    match (status.as_u16(), code) {
        (200..=299, Some(0)) => {
            let data = body.get("data").cloned().unwrap_or_default();
            let text = |v: Option<&serde_json::Value>| match v {
                Some(serde_json::Value::String(s)) => clip(s, 20),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => "?".into(),
            };
            Check::ok(
                NAME,
                format!(
                    "API key accepted, balance {} {}",
                    text(data.get("balance")),
                    text(data.get("currency"))
                ),
            )
        }
        (401 | 403, _) | (200..=299, Some(_)) => Check::fail(
            NAME,
            format!(
                "Mobizon refused the API key (code {}: {})",
                code.map_or_else(|| status.as_u16().to_string(), |c| c.to_string()),
                clip(
                    body.get("message")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default(),
                    120
                )
            ),
            "copy the API key again from Mobizon's settings and set MOBIZON_API_KEY",
        ),
        _ => Check::warn(
            NAME,
            format!("Mobizon answered {status}"),
            "try again later",
        ),
    }
}

/// Sends a check's request: the answer's status and JSON body, or the check
/// already decided (unreachable; a dev stand-in, skipped).
async fn ask(
    name: &'static str,
    variable: &str,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, serde_json::Value), Check> {
    let response = request.send().await.map_err(|e| {
        Check::warn(
            name,
            format!("could not reach {url}: {}", without_url(&e)),
            format!("check {variable} and the machine's outbound HTTPS"),
        )
    })?;
    if response.headers().contains_key(STAND_IN_HEADER) {
        return Err(Check::warn(
            name,
            format!("skipped: {url} is leadrelay dev's stand-in"),
            format!("set {variable} to the provider for production"),
        ));
    }
    let status = response.status();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// reqwest's message carries the URL, and Mobizon's URL carries the key:
/// only the kind of failure is shown.
fn without_url(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}
