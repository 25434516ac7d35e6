//! What an operator does to jobs, from the CLI (`leadrelay retry`, `cancel`)
//! or from the ops console: put failed jobs back, send a scheduled one now,
//! cancel. One statement per action, and each writes its `ops_audit` row in
//! the same statement, so an action is never without its record nor a record
//! without its action.
//!
//! Every action statement takes the same parameters:
//! `$1` the job ids asked for, `$2` a reason (or null), `$3` the console
//! session (or null), `$4` the actor (`console`, `cli:<user>`), `$5` the
//! client's address (or null), `$6` the action's name as the audit records it.
//! It returns the ids it changed and the audit row's id. A job that moved on
//! meanwhile (sent, retried by someone else) is left alone: the audit shows
//! it asked for and not changed.

use tokio_postgres::Client;

/// Wraps a `changed` CTE (an UPDATE returning `id, lead_id`) with the wake-up
/// of the worker (a `notified` select), the audit row and the common result.
macro_rules! audited {
    ($changes:expr, notify: $notify:literal) => {
        concat!(
            "with ",
            $changes,
            ",
notified as (",
            $notify,
            "), audit as (
  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  select $3::bigint, $4::text, $6::text, $1::bigint[],
         coalesce((select array_agg(c.id order by c.id) from changed c), '{}'),
         coalesce((select array_agg(distinct j.lead_id) from public.notification_jobs j where j.id = any($1::bigint[])), '{}'),
         nullif(btrim($2::text), ''), $5::text
  returning id
)
select coalesce((select array_agg(id order by id) from changed), '{}'::bigint[]),
       (select id from audit), (select n from notified)"
        )
    };
}

/// Failed jobs to put back: one by id ($1), or all failed since $2.
pub const RETRY_CANDIDATES: &str = concat!(
    "
select j.id, j.lead_id, j.channel, j.last_error
from public.notification_jobs j
where j.status in (",
    crate::domain::failed_statuses_sql!(),
    ") and j.channel in ('email', 'sms', 'lead_tracking')
  and (($1::bigint is not null and j.id = $1) or ($2::timestamptz is not null and j.finished_at >= $2))
order by j.id"
);

/// Whether job `j` is a member of an email batch whose outcome is unknown:
/// the batch went to Resend (an attempt is on record) and was neither
/// accepted nor refused as a whole (a refused batch is dissolved). Resend
/// holds its key with the batch's body, so it may go again only whole.
macro_rules! in_doubt_batch {
    ($j:literal) => {
        concat!(
            "(",
            $j,
            ".channel = 'email' and ",
            $j,
            ".batch_key is not null and ",
            $j,
            ".errors <> '[]'::jsonb)"
        )
    };
}

/// Whether job `j` is an email or SMS that reached a final failure after it
/// was sent (bounced, suppressed by the provider, undelivered, rejected,
/// expired: delivery ranks 60 to 69). A complaint (70) is the person's own
/// "stop": never sent again.
macro_rules! sent_then_failed {
    ($j:literal) => {
        concat!(
            "(",
            $j,
            ".channel in ('email', 'sms') and ",
            $j,
            ".status = 'sent' and public.leadrelay_delivery_rank(",
            $j,
            ".delivery_status) between 60 and 69)"
        )
    };
}

/// The job an operator acts on, read by column name: with its lead's name;
/// `batch_members`, when it is a member of an email batch in doubt, the
/// batch's size (else 0); and `same_contact`, whether the lead's contact is
/// still the one it went to (the provider will likely refuse it again).
/// Which actions apply is `JobStatus::allows` of its status and delivery
/// state.
pub const ACTION_JOB: &str = concat!(
    "select j.id, j.lead_id, j.channel, j.template, j.status, j.last_error, l.name, j.due_at,
       case when ",
    in_doubt_batch!("j"),
    " then (select count(*) from public.notification_jobs m where m.batch_key = j.batch_key) else 0 end
         as batch_members,
       leadrelay.recipient_key(j.channel, leadrelay.recipient(j.channel, l.email, l.phone))
         is not distinct from leadrelay.recipient_key(j.channel, j.recipient) as same_contact,
       j.delivery_status
from public.notification_jobs j left join public.landing_leads l on l.id = j.lead_id
where j.id = $1"
);

/// A message that reached a final failure after it was sent
/// (`sent_then_failed`) goes again as a new one: to the lead's current
/// address or phone (the operator corrected it, say), an email under a key
/// of its own (Resend would answer the old key with the old email), with
/// fresh attempts, and through the gate like a first send (`cleared_at`
/// cleared). The earlier message stays in the job's error history.
pub const SEND_AGAIN: &str = audited!(
    concat!(
        "fresh as (
  select j.id, leadrelay.recipient(j.channel, l.email, l.phone) as recipient
  from public.notification_jobs j
  join public.landing_leads l on l.id = j.lead_id
  where j.id = any($1::bigint[]) and ",
        sent_then_failed!("j"),
        "
), changed as (
  update public.notification_jobs j
     set status = 'due', due_at = now(), attempts = 0, finished_at = null, sent_at = null,
         provider_message_id = null, provider_campaign_id = null,
         delivery_status = null, delivery_status_at = null, sent_unconfirmed = null,
         recovered_at = null, batch_key = null, cleared_at = null,
         cancelled_by = null, duplicate_of_lead = null, last_error = null,
         recipient = f.recipient,
         idempotency_key = case when j.channel = 'email' then
                             leadrelay.idempotency_key(j.lead_id, j.template,
                               'again-' || left(md5(j.id::text || clock_timestamp()::text), 8)) end,
         outcome_unknown_since = null,
         sent_params = case when j.sent_params is null then null
                            when j.channel = 'email' then jsonb_set(j.sent_params, '{email}', to_jsonb(f.recipient))
                            else jsonb_set(j.sent_params, '{phone}', to_jsonb(f.recipient)) end,
         errors = (case when jsonb_array_length(j.errors) >= 20 then j.errors - 0 else j.errors end)
                  || jsonb_build_array(jsonb_build_object(
                       'attempt', j.attempts, 'at', now(), 'kind', 'sent_again',
                       'error', format('sent again by an operator; the earlier message %s to %s ended %s',
                                       coalesce(j.provider_message_id, '(no id)'), j.recipient, j.delivery_status))),
         updated_at = now()
    from fresh f
   where j.id = f.id and f.recipient is not null
  returning j.id, j.lead_id
)"
    ),
    notify: "select count(pg_notify('notification_jobs', id::text)) as n from changed"
);

/// Puts failed or invalid jobs back to due with fresh attempts; their error
/// history stays. The gate judges them again at their next claim (the send
/// window, the duplicate check, the cap): `cleared_at` is cleared, so a lead
/// whose person got the message meanwhile through another lead is cancelled
/// as a duplicate instead of sent twice.
///
/// The recipient is derived again from the lead, so a contact corrected in
/// `landing_leads` is the one used; a job whose lead's contact is still
/// unusable stays as it is. An email whose recipient changed gets a key of
/// its own: Resend would answer the old key's first email (or a 409) to a
/// different body. A job that failed because its template could not render
/// (no request was made) takes the current template and values at its next
/// claim, so "fix the template, then retry" sends the fixed one.
///
/// A member of an email batch whose outcome is unknown (`in_doubt_batch`)
/// goes again with its whole batch: every failed member, under the batch's
/// key, with the recipients and values it was sent with, so Resend answers
/// from its idempotency store instead of sending twice; the members count
/// as in flight to their recipients meanwhile (they are not judged again,
/// which could split the batch).
pub const RETRY: &str = audited!(
    concat!("asked as (
  select j.id, j.batch_key, ",
    in_doubt_batch!("j"),
    " and j.status = 'failed' as batch_in_doubt
  from public.notification_jobs j
  where j.id = any($1::bigint[]) and j.status in (",
    crate::domain::failed_statuses_sql!(),
    ")
), targets as (
  select a.id, a.batch_in_doubt from asked a
  union
  select m.id, true from public.notification_jobs m
  join asked a on a.batch_in_doubt and m.batch_key = a.batch_key
  where m.status = 'failed' and m.channel = 'email'
), fresh as (
  select j.id, t.batch_in_doubt,
         case when t.batch_in_doubt or j.channel = 'lead_tracking' then j.recipient
              else leadrelay.recipient(j.channel, l.email, l.phone) end as recipient,
         not t.batch_in_doubt and j.provider_message_id is null
           and j.failed_because = 'content' as template_failed
  from targets t
  join public.notification_jobs j on j.id = t.id
  join public.landing_leads l on l.id = j.lead_id
), changed as (
  update public.notification_jobs j
     set status = 'due', due_at = now(), attempts = 0, finished_at = null, updated_at = now(),
         idempotency_key = case
           when j.channel = 'email' and j.recipient is distinct from f.recipient
             then leadrelay.idempotency_key(j.lead_id, j.template, left(md5(f.recipient), 8))
           else j.idempotency_key end,
         recipient = f.recipient,
         template_version = case when f.template_failed then null else j.template_version end,
         sent_params = case when f.template_failed then null else j.sent_params end,
         -- a retried job goes on its own (the rest of its batch is finished),
         -- unless its batch is in doubt: then the batch goes again whole
         batch_key = case when f.batch_in_doubt then j.batch_key end,
         -- judged again by the gate at its next claim
         cleared_at = case when f.batch_in_doubt then j.cleared_at end,
         cancelled_by = null, duplicate_of_lead = null, failed_because = null
    from fresh f
   where j.id = f.id and (f.recipient is not null or j.channel = 'lead_tracking')
  returning j.id, j.lead_id
)"),
    notify: "select count(pg_notify('notification_jobs', id::text)) as n from changed"
);

/// The jobs of $1 that are members of an email batch in doubt and not
/// finished (due or waiting for their next attempt): cancelling one alone
/// would change the body Resend holds under the batch's key.
pub const IN_DOUBT_BATCH_MEMBERS: &str = concat!(
    "select j.id, (select count(*) from public.notification_jobs m where m.batch_key = j.batch_key)
from public.notification_jobs j
where j.id = any($1::bigint[]) and j.status in (",
    crate::domain::waiting_statuses_sql!(),
    ") and ",
    in_doubt_batch!("j"),
    " order by j.id"
);

/// A scheduled job (waiting for its delay) becomes due now. The claim's gate
/// still applies: the send window (outside it the job waits for the
/// opening), the duplicate check and the cap. "Send now" skips the delay,
/// not a promise.
pub const SEND_NOW: &str = audited!(
    "changed as (
  update public.notification_jobs
     set status = 'due', due_at = now(), held_until = null, updated_at = now()
   where id = any($1::bigint[]) and status = 'scheduled'
  returning id, lead_id
)",
    notify: "select count(pg_notify('notification_jobs', id::text)) as n from changed"
);

/// Cancels jobs not in flight and not sent (scheduled, due, failed or
/// invalid) with the operator's reason, in the job and in the lead's mirror.
/// A job being sent finishes: its request may already be at the provider.
/// So does a member of an email batch in doubt that will go again
/// (`IN_DOUBT_BATCH_MEMBERS`): the console and the CLI say why.
pub const CANCEL: &str = audited!(
    concat!("changed as (
  update public.notification_jobs j
     set status = 'cancelled', finished_at = now(), updated_at = now(), held_until = null,
         last_error = left('cancelled by an operator: ' || coalesce(nullif(btrim($2::text), ''), 'no reason given'), 2000)
   where j.id = any($1::bigint[])
     and j.status in (",
    crate::domain::waiting_statuses_sql!(),
    ", ",
    crate::domain::failed_statuses_sql!(),
    ")
     and not (j.status in (",
    crate::domain::waiting_statuses_sql!(),
    ") and ",
    in_doubt_batch!("j"),
    ")
  returning j.id, j.lead_id, j.channel, j.last_error
), mirrored as (
  update public.landing_leads l
     set email_error = coalesce(m.email_reason, l.email_error),
         sms_error = coalesce(m.sms_reason, l.sms_error)
    from (select lead_id,
                 max(last_error) filter (where channel = 'email') as email_reason,
                 max(last_error) filter (where channel = 'sms') as sms_reason
            from changed group by lead_id) m
   where l.id = m.lead_id
)"),
    notify: "select 0::bigint as n"
);

/// The jobs of rule $1 not tried yet (scheduled or due): those of its
/// leads (source LIKE its pattern) on its channel and template. Disabling a
/// rule stops new jobs; these are the ones it already made.
pub const CANCEL_CANDIDATES: &str = concat!(
    "
select j.id, j.lead_id, j.channel, j.status, j.due_at
from public.notification_rules r
join public.notification_jobs j on j.channel = r.channel and j.template = r.template
join public.landing_leads l on l.id = j.lead_id and l.source like r.source_pattern
where r.id = $1 and j.status in (",
    crate::domain::waiting_statuses_sql!(),
    ")
order by j.due_at, j.id"
);

/// An action an operator takes on jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    BulkRetry,
    SendNow,
    SendAgain,
    Cancel,
    CancelRule,
}

impl Action {
    /// The name the audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::BulkRetry => "bulk_retry",
            Action::SendNow => "send_now",
            Action::SendAgain => "send_again",
            Action::Cancel => "cancel",
            Action::CancelRule => "cancel_rule",
        }
    }

    fn statement(self) -> &'static str {
        match self {
            Action::Retry | Action::BulkRetry => RETRY,
            Action::SendNow => SEND_NOW,
            Action::SendAgain => SEND_AGAIN,
            Action::Cancel | Action::CancelRule => CANCEL,
        }
    }
}

/// Who acts, for the audit.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub session_id: Option<i64>,
    /// `console` or `cli:<user>`
    pub name: String,
    pub client_addr: Option<String>,
}

impl Actor {
    /// The CLI, named by the operating-system user running it.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            session_id: None,
            name: format!("cli:{}", user.chars().take(64).collect::<String>()),
            client_addr: None,
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub changed: Vec<i64>,
    pub audit_id: i64,
}

/// Runs `action` on `jobs` and records it, in one statement.
pub async fn act(
    client: &Client,
    action: Action,
    jobs: &[i64],
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Done, tokio_postgres::Error> {
    let reason = reason.map(|r| r.chars().take(500).collect::<String>());
    let row = client
        .query_one(
            action.statement(),
            &[
                &jobs,
                &reason,
                &actor.session_id,
                &actor.name,
                &actor.client_addr,
                &action.as_str(),
            ],
        )
        .await?;
    Ok(Done {
        changed: row.get(0),
        audit_id: row.get(1),
    })
}

/// A lead's audit entries, newest first.
pub const LEAD_AUDIT: &str = "
select at, actor, action, job_ids, changed_job_ids, reason, session_id
from public.ops_audit where lead_ids @> array[$1::uuid]
order by at desc, id desc limit 50";

pub fn statements() -> [&'static str; 9] {
    [
        ACTION_JOB,
        SEND_AGAIN,
        RETRY_CANDIDATES,
        RETRY,
        IN_DOUBT_BATCH_MEMBERS,
        SEND_NOW,
        CANCEL,
        CANCEL_CANDIDATES,
        LEAD_AUDIT,
    ]
}
