//! Forgetting a person: what has not gone is cancelled, and the person's
//! email, phone, name and metadata are erased from every table of
//! leadrelay's (jobs and their fixed values and errors, delivery events'
//! payloads, the audit's free text, the suppressions' readable recipient),
//! from `landing_leads` when asked, and from the dashboard's `lead_tracking`
//! row. Counts and states stay: a job keeps its channel, template, status,
//! times, attempts and delivery state, so every statistic reads the same.
//! A suppression keeps its hash, so a new lead with the same address is
//! still not emailed until an operator lifts it.
//!
//! One call of `public.leadrelay_forget()` does it all, with the audit row,
//! which names no data; the dashboard's row may be in another database.

use tokio_postgres::Client;
use uuid::Uuid;

use super::operator::Actor;

/// Forgets leads $1 (`public.leadrelay_forget`, which runs as its owner:
/// the service's role may not change what people typed), with their rows
/// when $2, audited as $3 (session $4, address $5).
pub const FORGET: &str = "
select cancelled, jobs, events, suppressions, audit_notes, lead_rows, audit_id
from public.leadrelay_forget($1, $2, $3, $4, $5)";

/// The dashboard row's contacts, kept linked to its lead (so a later sync
/// updates its flags instead of writing the contacts again).
pub const ERASE_TRACKING: &str = "
update public.lead_tracking
   set full_name = null, email = null, phone = null,
       metadata = jsonb_build_object('landing_lead_id', metadata ->> 'landing_lead_id')
 where metadata ->> 'landing_lead_id' = any($1)";

/// What forgetting did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub cancelled: i32,
    pub jobs: i32,
    pub events: i32,
    pub suppressions: i32,
    pub audit_rows: i32,
    pub lead_rows: i32,
    pub audit_id: i64,
}

/// Forgets `leads`, in one statement.
pub async fn forget(
    client: &Client,
    leads: &[Uuid],
    lead_rows: bool,
    actor: &Actor,
) -> Result<Forgotten, tokio_postgres::Error> {
    let row = client
        .query_one(
            FORGET,
            &[
                &leads,
                &lead_rows,
                &actor.name,
                &actor.session_id,
                &actor.client_addr,
            ],
        )
        .await?;
    Ok(Forgotten {
        cancelled: row.get(0),
        jobs: row.get(1),
        events: row.get(2),
        suppressions: row.get(3),
        audit_rows: row.get(4),
        lead_rows: row.get(5),
        audit_id: row.get(6),
    })
}

/// Erases the dashboard rows of `leads` in `client`'s database (the
/// service's own, or LEAD_TRACKING_DATABASE_URL's); how many.
pub async fn erase_tracking(client: &Client, leads: &[Uuid]) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<String> = leads.iter().map(Uuid::to_string).collect();
    client.execute(ERASE_TRACKING, &[&ids]).await
}

pub fn statements() -> [&'static str; 2] {
    [FORGET, ERASE_TRACKING]
}
