//! `leadrelay forget LEAD [--lead-row] [--yes]`: a person asked the academy
//! to delete their data. The leads LEAD names (an id, an email, a phone)
//! are listed, masked; after the confirmation their messages not sent yet
//! are cancelled and their data erased from every table of leadrelay's
//! (`store::forget`), from `landing_leads` with `--lead-row`, and from the
//! dashboard's `lead_tracking` row (in LEAD_TRACKING_DATABASE_URL's
//! database when that is set). The audit says a person was forgotten, by
//! whom and when, and holds none of their data.

use tokio_postgres::Client;
use uuid::Uuid;

use super::ops::{OpsError, confirm, find_leads};
use crate::messages::mask;
use crate::store::forget;
use crate::store::operator::Actor;

pub struct Request<'a> {
    pub query: &'a str,
    pub lead_row: bool,
    pub yes: bool,
    /// LEAD_TRACKING_DATABASE_URL, when the dashboard lives elsewhere.
    pub tracking_url: Option<&'a str>,
}

pub async fn run(client: &mut Client, request: &Request<'_>) -> Result<String, OpsError> {
    let leads = find_leads(client, request.query).await?;
    let ids: Vec<Uuid> = leads.iter().map(|l| l.get(0)).collect();
    println!("{} lead(s) of this person:", ids.len());
    for lead in &leads {
        let email: Option<String> = lead.get(2);
        let phone: Option<String> = lead.get(3);
        let created: chrono::DateTime<chrono::Utc> = lead.get(5);
        println!(
            "  {}  {}  {}  {}",
            lead.get::<_, Uuid>(0),
            created.format("%Y-%m-%d %H:%M"),
            email.map(|e| mask::email(&e)).unwrap_or_default(),
            phone.map(|p| mask::phone(&p)).unwrap_or_default()
        );
    }
    let whose = if request.lead_row {
        "and from their landing_leads rows"
    } else {
        "(their landing_leads rows keep them: add --lead-row to erase those too)"
    };
    confirm(
        &format!(
            "Cancel what was not sent and erase this person's email, phone, name and metadata from leadrelay's tables {whose}?"
        ),
        request.yes,
    )?;
    let done = forget::forget(client, &ids, request.lead_row, &Actor::cli()).await?;
    let tracking = tracking(client, request.tracking_url, &ids).await;
    Ok(format!(
        "forgotten (audit row {}): {} message(s) not sent yet cancelled; erased from {} job(s), {} delivery event(s), \
         {} suppression(s) (kept as a hash: a new lead with the same contact is still not messaged until an operator lifts it), \
         {} audit note(s){}; {tracking}\n",
        done.audit_id,
        done.cancelled,
        done.jobs,
        done.events,
        done.suppressions,
        done.audit_rows,
        if request.lead_row {
            format!(", {} landing_leads row(s)", done.lead_rows)
        } else {
            ", not from landing_leads (no --lead-row)".to_string()
        }
    ))
}

/// The dashboard rows, or why they could not be erased.
async fn tracking(client: &Client, url: Option<&str>, ids: &[Uuid]) -> String {
    let erased = match url {
        None => forget::erase_tracking(client, ids).await,
        Some(url) => match crate::store::connect(url).await {
            Ok(other) => forget::erase_tracking(&other, ids).await,
            Err(e) => {
                return format!(
                    "the lead_tracking row could not be erased: its database (LEAD_TRACKING_DATABASE_URL) did not answer ({e}); erase its contacts there by hand"
                );
            }
        },
    };
    match erased {
        Ok(n) => format!("{n} lead_tracking row(s) erased"),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            "no lead_tracking table: nothing to erase there".into()
        }
        Err(e) => format!(
            "the lead_tracking row could not be erased ({}); erase its contacts there by hand",
            crate::store::describe(&e)
        ),
    }
}
