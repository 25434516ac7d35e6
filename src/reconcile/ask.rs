//! Asking the providers, read-only:
//! - Resend: one walk of its list of sent emails, newest first, back to the
//!   window's start (the list has no filter by address or time, so the walk
//!   reads every email sent since then, 100 a page);
//! - Mobizon: `message/list` for each lead's number, from a day before the
//!   lead arrived (its times name no zone), every page.
//!
//! Both wait their turn at their client's pacer, which follows the
//! providers' rate-limit headers; a provider that cannot answer (a key
//! without list permission, an outage that outlasts three tries) leaves
//! every lead that needed it unknown: never a reason to send.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::providers::mobizon::{LOOKUP_PAGE_SIZE, ListedSms, LookupError, MobizonClient};
use crate::providers::resend::ResendClient;
use crate::providers::resend_list::{LIST_PAGE_SIZE, ListError, ListedEmail};

/// Clocks differ: the walk reads a little past the window's start.
const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Tries of a page that failed for want of an answer (5xx, no connection).
const TRIES: u32 = 3;

/// More SMS to one number than this is not something to judge by hand
/// anyway: the lead is left unknown.
const MOST_SMS_PAGES: u32 = 10;

/// Every email Resend sent since `since` (less the skew), newest first;
/// `pages` is told of each page read.
pub async fn sent_emails(
    resend: &ResendClient,
    since: DateTime<Utc>,
    pages: &(dyn Fn(usize) + Sync),
) -> Result<Vec<ListedEmail>, ListError> {
    let stop = since - CLOCK_SKEW;
    let mut emails = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = with_tries(
            || resend.list_emails(LIST_PAGE_SIZE, after.as_deref()),
            |e| matches!(e, ListError::Unavailable(_)),
        )
        .await?;
        pages(page.emails.len());
        let last = page.emails.last().map(|e| e.id.clone());
        for email in page.emails {
            if email.created_at < stop {
                return Ok(emails);
            }
            emails.push(email);
        }
        match last {
            Some(id) if page.has_more => after = Some(id),
            _ => return Ok(emails),
        }
    }
}

/// Every SMS Mobizon lists to exactly `digits` from a day before `arrived`.
pub async fn sent_sms(
    mobizon: &MobizonClient,
    digits: &str,
    arrived: DateTime<Utc>,
) -> Result<Vec<ListedSms>, LookupError> {
    let mut found = Vec::new();
    for page in 0..MOST_SMS_PAGES {
        let answer = with_tries(
            || mobizon.list_sms_to(digits, arrived, page),
            |e| matches!(e, LookupError::Unavailable(_)),
        )
        .await?;
        let last_page = answer.items.len() < LOOKUP_PAGE_SIZE as usize
            || u64::from(page + 1) * u64::from(LOOKUP_PAGE_SIZE) >= answer.total;
        found.extend(answer.items.into_iter().filter(|m| m.is_to(digits)));
        if last_page {
            return Ok(found);
        }
    }
    Err(LookupError::Unavailable(format!(
        "more than {} SMS to this number: look at them in Mobizon's dashboard",
        MOST_SMS_PAGES * LOOKUP_PAGE_SIZE
    )))
}

/// `ask` up to [`TRIES`] times while `transient` says its error may pass
/// (1 s, then 2 s between tries).
async fn with_tries<T, E, F, Fut>(mut ask: F, transient: impl Fn(&E) -> bool) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        tries += 1;
        match ask().await {
            Err(e) if tries < TRIES && transient(&e) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}
