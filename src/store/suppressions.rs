//! The suppression list (`notification_suppressions`): an operator putting a
//! recipient on it or lifting it, audited in the same statement, and a
//! lead's suppressions in force. Shared by the CLI and the console; the
//! gate that obeys the list and the reports that fill it are SQL
//! (`supabase/schemas/11_suppressions.sql`).

use tokio_postgres::Client;
use uuid::Uuid;

use super::operator::Actor;
use crate::domain::Channel;

/// Puts $2 (an address or a phone, typed any way) on channel $1's list as
/// the operator's, with note $3, audited as $5 (session $4, address $6; lead
/// $7 when acted from a lead's page; the audit names the leads $8 with that
/// contact, so forgetting them erases its note). Returns the trigger's problem with the
/// recipient (nothing written), or the suppression in force and this
/// action's audit row (`IN_FORCE` reads it: a row the statement wrote is not
/// in its own snapshot).
pub const SUPPRESS: &str = "
with input as (
  select case $1 when 'email' then public.leadrelay_email_problem($2)
                 else public.leadrelay_phone_problem($2) end as problem,
         leadrelay.recipient($1, $2, $2) as recipient
), audit as (
  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  select $4, $5, 'suppress', '{}', '{}', $8::uuid[], left($3, 500), $6
    from input i where i.problem is null
  returning id
), suppressed as (
  select public.leadrelay_suppress($1, i.recipient, 'operator', $7::uuid, null, (select id from audit), $3) as id
    from input i where i.problem is null
)
select i.problem, x.id, (select id from audit)
from input i
left join suppressed x on true";

/// Suppression $1: its reason, since when, and the audit row that made it.
pub const IN_FORCE: &str =
    "select reason, created_at, audit_id from public.notification_suppressions where id = $1";

/// Lifts channel $1's suppression of $2 with reason $3, audited as $5
/// (session $4, address $6; the leads $7 with that contact). Returns how
/// many were lifted and the reason they had.
pub const LIFT: &str = "
with lifted as (
  update public.notification_suppressions s
     set lifted_at = now(), lifted_by = $5, lift_reason = left($3, 500)
   where s.channel = $1 and s.lifted_at is null
     and s.recipient_hash = leadrelay.recipient_hash($1, leadrelay.recipient($1, $2, $2))
  returning s.id, s.lead_id, s.reason
), audit as (
  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  select $4, $5, 'unsuppress', '{}', '{}',
         coalesce(array_agg(l.lead_id) filter (where l.lead_id is not null), '{}') || $7::uuid[],
         left($3, 500), $6
    from lifted l
  having count(*) > 0
  returning id
)
select (select count(*) from lifted), (select min(reason) from lifted), (select count(*) from audit)";

/// The suppressions in force for lead $1's email and phone: channel,
/// reason, since, note, whether it was this lead's.
pub const OF_LEAD: &str = "
select s.channel, s.reason, s.created_at, s.note, s.lead_id = l.id
from public.landing_leads l
join public.notification_suppressions s
  on s.lifted_at is null
 and ((s.channel = 'email'
       and s.recipient_hash = leadrelay.recipient_hash('email', leadrelay.recipient('email', l.email, null)))
   or (s.channel = 'sms'
       and s.recipient_hash = leadrelay.recipient_hash('sms', leadrelay.recipient('sms', null, l.phone))))
where l.id = $1
order by s.channel";

/// The suppressions in force, by reason (the console's front page).
pub const BY_REASON: &str = "
select reason, count(*) from public.notification_suppressions
where lifted_at is null group by reason order by reason";

/// The key unsubscribe links are signed with when UNSUBSCRIBE_SECRET is not
/// set: the one kept in `leadrelay_settings`, made once when missing.
pub const UNSUBSCRIBE_KEY: &str = "select public.leadrelay_unsubscribe_key()";

/// Puts the recipient of unsubscribe link $1 (channel) / $2 (recipient) /
/// $3 (lead) on the list as unsubscribed (note $4); with $5, the lead's
/// phone too. Returns the suppressions in force.
pub const UNSUBSCRIBE: &str = "
select public.leadrelay_suppress($1, $2, 'unsubscribed', $3, null, null, $4),
       case when $5 then (select public.leadrelay_suppress('sms', leadrelay.recipient('sms', null, l.phone),
                                                           'unsubscribed', $3, null, null, $4)
                            from public.landing_leads l where l.id = $3) end";

/// For the unsubscribe page: whether $2 is on channel $1's list, and lead
/// $3's phone when it is usable.
pub const UNSUBSCRIBE_PAGE: &str = "
select exists (select 1 from public.notification_suppressions s
                where s.channel = $1 and s.lifted_at is null
                  and s.recipient_hash = leadrelay.recipient_hash($1, $2)),
       (select leadrelay.recipient('sms', null, l.phone) from public.landing_leads l where l.id = $3)";

#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    #[error("{0}: nothing was changed")]
    Unusable(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for SuppressError {
    fn from(e: tokio_postgres::Error) -> Self {
        SuppressError::Db(super::describe(&e))
    }
}

/// A suppression in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Put on the list by this action (false: it was on it already).
    pub new: bool,
}

/// The leads whose email or phone is `recipient` (the console's search),
/// for the audit.
async fn leads_with(client: &Client, recipient: &str) -> Result<Vec<Uuid>, SuppressError> {
    let Ok(query) = super::search::LeadQuery::parse(recipient) else {
        return Ok(Vec::new());
    };
    let (statement, value) = query.statement();
    Ok(client
        .query(statement, &[&value])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn suppress(
    client: &Client,
    channel: Channel,
    recipient: &str,
    note: &str,
    actor: &Actor,
    lead: Option<Uuid>,
) -> Result<InForce, SuppressError> {
    let mut named = leads_with(client, recipient).await?;
    named.extend(lead.filter(|l| !named.contains(l)));
    let row = client
        .query_one(
            SUPPRESS,
            &[
                &channel.as_str(),
                &recipient,
                &note,
                &actor.session_id,
                &actor.name,
                &actor.client_addr,
                &lead,
                &named,
            ],
        )
        .await?;
    if let Some(problem) = row.get::<_, Option<String>>(0) {
        return Err(SuppressError::Unusable(problem));
    }
    let (id, audit): (i64, Option<i64>) = (row.get(1), row.get(2));
    let in_force = client.query_one(IN_FORCE, &[&id]).await?;
    Ok(InForce {
        reason: in_force.get(0),
        since: in_force.get(1),
        new: audit.is_some() && in_force.get::<_, Option<i64>>(2) == audit,
    })
}

/// Lifts the suppression of `recipient`; the reason it had, None when none
/// was in force.
pub async fn lift(
    client: &Client,
    channel: Channel,
    recipient: &str,
    reason: &str,
    actor: &Actor,
) -> Result<Option<String>, SuppressError> {
    let named = leads_with(client, recipient).await?;
    let row = client
        .query_one(
            LIFT,
            &[
                &channel.as_str(),
                &recipient,
                &reason,
                &actor.session_id,
                &actor.name,
                &actor.client_addr,
                &named,
            ],
        )
        .await?;
    Ok((row.get::<_, i64>(0) > 0).then(|| row.get(1)))
}

/// The key the unsubscribe links are signed with: `secret`
/// (UNSUBSCRIBE_SECRET) when set, else the one kept in the database (made
/// when missing). None when the database keeps no settings row.
pub async fn unsubscribe_key(
    client: &Client,
    secret: Option<&crate::domain::Secret>,
) -> Result<Option<String>, tokio_postgres::Error> {
    if let Some(secret) = secret {
        return Ok(Some(secret.expose().to_string()));
    }
    Ok(client
        .query_opt(UNSUBSCRIBE_KEY, &[])
        .await?
        .and_then(|r| r.get(0)))
}

pub fn statements() -> [&'static str; 8] {
    [
        SUPPRESS,
        IN_FORCE,
        LIFT,
        OF_LEAD,
        BY_REASON,
        UNSUBSCRIBE_KEY,
        UNSUBSCRIBE,
        UNSUBSCRIBE_PAGE,
    ]
}
