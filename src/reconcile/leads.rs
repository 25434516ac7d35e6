//! What `reconcile` reads from the database: the leads and channels it is
//! asked about, the other leads of the same addresses near them, the keys
//! of the addresses a provider lists, and the message ids jobs already hold.
//! Addresses are keyed by `leadrelay.recipient_key()` itself, so a listed
//! address matches a lead's exactly as the delivery policies match two
//! leads (one definition, in the database).

use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use super::judge::{Arrival, MATCH_WITHIN};
use crate::domain::Channel;

/// The leads in [$1, $2) whose source matches $3 (or the one lead $5),
/// with each channel a rule of theirs asks for and they have no job of
/// ($4: no job at all, as `backfill` has always chosen): the recipient as
/// the trigger would fix it, its key, and why it is unusable (the
/// dashboard's `lead_tracking` has none of these).
pub const WANTED: &str = "
with chosen as (
  select l.id, l.created_at, l.email, l.phone, l.source from public.landing_leads l
   where $5::uuid is null and l.created_at >= $1::timestamptz and l.created_at < $2::timestamptz
     and l.source like $3
  union all
  select l.id, l.created_at, l.email, l.phone, l.source from public.landing_leads l where l.id = $5
)
select l.id, l.created_at, c.channel,
       leadrelay.recipient(c.channel, l.email, l.phone) as recipient,
       leadrelay.recipient_key(c.channel, leadrelay.recipient(c.channel, l.email, l.phone)) as key,
       case c.channel when 'email' then public.leadrelay_email_problem(l.email)
                      when 'sms' then public.leadrelay_phone_problem(l.phone) end as problem
from chosen l
cross join lateral (
  select distinct r.channel from public.notification_rules r
   where r.enabled and l.source like r.source_pattern
) c
where not exists (select 1 from public.notification_jobs j
                   where j.lead_id = l.id and ($4 or j.channel = c.channel))
order by l.created_at, l.id, c.channel";

/// Leads that arrived in [$1, $2) whose recipient on channel $3 has one of
/// the keys $4: the neighbours a message may belong to instead.
pub const NEIGHBOURS: &str = "
select l.id, l.created_at, k.key
from public.landing_leads l
cross join lateral (
  select leadrelay.recipient_key($3, leadrelay.recipient($3, l.email, l.phone)) as key
) k
where l.created_at >= $1 and l.created_at < $2 and k.key = any($4)";

/// The key of each address $2 on channel $1 (white space trimmed as the
/// trigger trims it), in order.
pub const KEYS: &str = "
select leadrelay.recipient_key($1, public.leadrelay_trim(a.address))
from unnest($2::text[]) with ordinality as a(address, n)
order by a.n";

/// Which of the provider ids $2 a job of channel $1 holds already.
pub const HELD: &str = "
select distinct j.provider_message_id from public.notification_jobs j
where j.channel = $1 and j.provider_message_id = any($2)";

/// A lead and channel `reconcile` is asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub lead: Uuid,
    pub arrived: DateTime<Utc>,
    pub channel: Channel,
    /// The address or international digits the job would carry.
    pub recipient: Option<String>,
    pub key: Option<String>,
    /// Why the recipient cannot be used (the trigger's words): the job is
    /// made `invalid` and the provider is never asked.
    pub problem: Option<String>,
}

impl Wanted {
    pub fn arrival(&self) -> Arrival {
        Arrival {
            lead: self.lead,
            at: self.arrived,
        }
    }
}

/// Which leads: a window (and a source pattern), or one lead.
#[derive(Debug, Clone)]
pub enum Leads {
    Window {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        source_pattern: String,
    },
    One(Uuid),
}

pub async fn wanted(
    client: &Client,
    leads: &Leads,
    no_job_at_all: bool,
) -> Result<Vec<Wanted>, tokio_postgres::Error> {
    let (since, until, pattern, one) = match leads {
        Leads::Window {
            since,
            until,
            source_pattern,
        } => (Some(*since), Some(*until), source_pattern.clone(), None),
        Leads::One(id) => (None, None, String::new(), Some(*id)),
    };
    let rows = client
        .query(WANTED, &[&since, &until, &pattern, &no_job_at_all, &one])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(Wanted {
                lead: r.get(0),
                arrived: r.get(1),
                channel: Channel::parse(r.get(2))?,
                recipient: r.get(3),
                key: r.get(4),
                problem: r.get(5),
            })
        })
        .collect())
}

/// The leads of `keys` on `channel` near the arrivals in `wanted`, by key.
pub async fn neighbours(
    client: &Client,
    channel: Channel,
    wanted: &[&Wanted],
) -> Result<std::collections::HashMap<String, Vec<Arrival>>, tokio_postgres::Error> {
    let mut by_key: std::collections::HashMap<String, Vec<Arrival>> = Default::default();
    let keys: Vec<String> = wanted.iter().filter_map(|w| w.key.clone()).collect();
    let (Some(first), Some(last)) = (
        wanted.iter().map(|w| w.arrived).min(),
        wanted.iter().map(|w| w.arrived).max(),
    ) else {
        return Ok(by_key);
    };
    // A lead owns at most MATCH_WITHIN after it; an unzoned SMS may be a
    // day off: leads further away cannot own a message these could own.
    let reach = MATCH_WITHIN + TimeDelta::days(1);
    let rows = client
        .query(
            NEIGHBOURS,
            &[&(first - reach), &(last + reach), &channel.as_str(), &keys],
        )
        .await?;
    for row in rows {
        let key: String = row.get(2);
        by_key.entry(key).or_default().push(Arrival {
            lead: row.get(0),
            at: row.get(1),
        });
    }
    // every lead asked about is its own neighbour, whatever the window
    for w in wanted {
        if let Some(key) = &w.key {
            let list = by_key.entry(key.clone()).or_default();
            if !list.iter().any(|a| a.lead == w.lead) {
                list.push(w.arrival());
            }
        }
    }
    Ok(by_key)
}

pub async fn keys(
    client: &Client,
    channel: Channel,
    addresses: &[String],
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let rows = client.query(KEYS, &[&channel.as_str(), &addresses]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn held(
    client: &Client,
    channel: Channel,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let rows = client.query(HELD, &[&channel.as_str(), &ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
