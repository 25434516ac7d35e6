-- leadrelay: no-transaction
-- One definition per fact: a lead's usable recipient, "held by a send
-- window", the email's idempotency key, and why a job failed, each written
-- once here and called wherever they are needed (the operator's statements,
-- the backfill, the console, the status view).
--
-- This file does not touch landing_leads. Its index on notification_jobs is
-- built concurrently; notification_jobs is locked for
-- the moment a column and its CHECK are added (`leadrelay migrate` gives way
-- if it must wait). Each statement is its own transaction, so the CHECK is
-- validated afterwards without blocking the landing's writes (VALIDATE takes
-- a lock that lets them through).

-- ---------------------------------------------------------------------------
-- The policies' look-ups, by recipient_key (the index on lower(recipient)
-- stays while workers of an earlier release may run). Built concurrently:
-- the landing's INSERT writes notification_jobs through its trigger and
-- never waits for the build (a build interrupted midway is dropped and
-- built again by the next `leadrelay migrate`).
-- ---------------------------------------------------------------------------
create index concurrently if not exists notification_jobs_recipient_key_idx
  on public.notification_jobs (leadrelay.recipient_key(channel, recipient), channel, template)
  where cleared_at is not null;

-- ---------------------------------------------------------------------------
-- The recipient of a lead for a channel: the address trimmed as
-- leadrelay_trim() trims, or the phone's 11 digits; null when the checks
-- refuse it. The trigger writes the same checks out for speed (its comment
-- says why); pgTAP compares the two for odd white space.
-- ---------------------------------------------------------------------------
create schema if not exists leadrelay;
create or replace function leadrelay.recipient(p_channel text, p_email text, p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case p_channel
    when 'email' then case when public.leadrelay_email_problem(p_email) is null
                           then public.leadrelay_trim(p_email) end
    when 'sms' then case when public.leadrelay_phone_problem(p_phone) is null
                         then public.leadrelay_phone_digits(p_phone) end
  end
$$;

comment on function leadrelay.recipient(text, text, text) is
  'The recipient a job of this channel is sent to for a lead with this email and phone, or null when the address or phone cannot be used.';

-- ---------------------------------------------------------------------------
-- When a send window holds a job: it waits (`scheduled`) exactly until the
-- opening the promotion chose for it. Null when it is not held.
-- ---------------------------------------------------------------------------
create or replace function leadrelay.held_until(p_status text, p_held_until timestamptz, p_due_at timestamptz)
returns timestamptz
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when p_status = 'scheduled' and p_held_until = p_due_at then p_held_until end
$$;

comment on function leadrelay.held_until(text, timestamptz, timestamptz) is
  'The opening a send window holds a job until (status, held_until, due_at of notification_jobs), or null when it is not held.';

-- ---------------------------------------------------------------------------
-- The idempotency key an email is sent to Resend under: the lead's uuid and
-- the template (unique across databases), and, for a message that goes
-- again to a new address or as a new message, what makes it new.
-- ---------------------------------------------------------------------------
create or replace function leadrelay.idempotency_key(p_lead_id uuid, p_template text, p_variant text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select 'leadrelay-' || p_lead_id::text || '-' || p_template || coalesce('-' || p_variant, '')
$$;

comment on function leadrelay.idempotency_key(uuid, text, text) is
  'The Resend idempotency key of an email: leadrelay-<lead uuid>-<template>[-<variant>].';

-- In schema leadrelay, which the API does not expose. leadrelay.recipient()
-- calls helpers that are not everyone's to call (revoked from PUBLIC with
-- them; sql/06_worker_role.sql grants it to the worker). The other two are
-- pure functions of their arguments, read by the status view (which runs
-- with its reader's privileges): executable by everyone, as
-- leadrelay.recipient_key() is.
revoke all on function leadrelay.recipient(text, text, text) from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function leadrelay.recipient(text, text, text) from %I', r);
    end if;
  end loop;
  -- a deployment that already made the worker's role (sql/06_worker_role.sql)
  if exists (select 1 from pg_roles where rolname = 'leadrelay_worker') then
    grant execute on function leadrelay.recipient(text, text, text) to leadrelay_worker;
  end if;
end
$$;
grant execute on function leadrelay.held_until(text, timestamptz, timestamptz) to public;
grant execute on function leadrelay.idempotency_key(uuid, text, text) to public;

-- ---------------------------------------------------------------------------
-- Why a job failed, so a retry decides by the cause and not by the words of
-- the error: contact (the address or phone cannot be used), content (the
-- template is missing or broken, or the SMS too long), provider (refused for
-- good), attempts (every attempt met a temporary failure), in_doubt (an SMS
-- whose outcome is unknown, left to a person). Null for a job that has not
-- failed, and for failures recorded before this column (a retry then reads
-- their error as before).
-- ---------------------------------------------------------------------------
alter table public.notification_jobs add column if not exists failed_because text;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'notification_jobs_failed_because_check') then
    alter table public.notification_jobs
      add constraint notification_jobs_failed_because_check
      check (failed_because in ('contact', 'content', 'provider', 'attempts', 'in_doubt')) not valid;
  end if;
end
$$;
alter table public.notification_jobs validate constraint notification_jobs_failed_because_check;

-- What earlier failures were, as far as their text tells (once; new ones
-- are written by the worker).
update public.notification_jobs
   set failed_because = case
         when status = 'invalid' and last_error like 'the SMS is %' then 'content'
         when status = 'invalid' then 'contact'
         when last_error like 'template % version %' or last_error like 'template % has no %'
              or last_error like 'no template %' or last_error like 'template % is not %' then 'content'
         when last_error like 'gave up after %' then 'attempts'
       end
 where status in ('failed', 'invalid') and failed_because is null;

-- ---------------------------------------------------------------------------
-- The promotion: jobs whose worker stopped mid-attempt (the lease expired)
-- go back to due, or end `failed` (`attempts`) on their last attempt; due
-- scheduled jobs become due, or, outside their rule's send window, stay
-- scheduled until its next opening with the reason. Each woken job is
-- notified to the workers. Unchanged but for `failed_because`.
-- ---------------------------------------------------------------------------
create or replace function public.promote_due_notification_jobs(p_limit integer default 10000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_promoted integer := 0;
  v_id bigint;
begin
  for v_id in
  with expired as (
    select j.id from public.notification_jobs j
    where j.status = 'sending' and j.locked_until < now()
    order by j.locked_until
    limit p_limit
    for update skip locked
  ), rescued as (
    update public.notification_jobs j
       set status = case when j.attempts >= j.max_attempts then 'failed' else 'due' end,
           failed_because = case when j.attempts >= j.max_attempts then 'attempts' end,
           last_error = format('attempt %s: the worker stopped before recording an outcome (lease expired)', j.attempts),
           errors = j.errors || jsonb_build_array(jsonb_build_object(
             'attempt', j.attempts, 'at', now(),
             'error', 'lease expired: outcome unknown',
             'lock', j.locked_by)),
           outcome_unknown_since = case when j.channel = 'sms'
                                        then least(j.outcome_unknown_since, j.updated_at)
                                        else j.outcome_unknown_since end,
           finished_at = case when j.attempts >= j.max_attempts then now() end,
           locked_by = null,
           locked_until = null,
           updated_at = now()
      from expired
     where j.id = expired.id
    returning j.id, j.status
  ), ready as (
    select s.id, s.due_at, r.send_window_start, r.send_window_end, r.time_zone,
           case when s.ignore_policies or r.send_window_start is null then now()
                else public.leadrelay_send_time(now(), r.send_window_start, r.send_window_end, r.time_zone)
           end as opens_at
    from public.notification_jobs s
    left join public.notification_rules r on r.id = s.rule_id
    where s.status = 'scheduled' and s.due_at <= now()
    order by s.due_at, s.id
    limit p_limit
    for update of s skip locked
  ), promoted as (
    update public.notification_jobs j
       set status = case when k.opens_at <= now() then 'due' else 'scheduled' end,
           due_at = case when k.opens_at <= now() then j.due_at else k.opens_at end,
           held_until = case when k.opens_at <= now() then j.held_until else k.opens_at end,
           hold_reason = case when k.opens_at <= now() then j.hold_reason
             else format('due at %s, outside the send window %s–%s %s: held until %s',
                         to_char(now() at time zone k.time_zone, 'YYYY-MM-DD HH24:MI'),
                         left(k.send_window_start::text, 5), left(k.send_window_end::text, 5), k.time_zone,
                         to_char(k.opens_at at time zone k.time_zone, 'YYYY-MM-DD HH24:MI')) end,
           updated_at = now()
      from ready k
     where j.id = k.id
    returning j.id, j.status
  ), woken as (
    select id from promoted where status = 'due'
    union all
    select id from rescued where status = 'due'
  )
  select w.id from woken w
  loop
    perform pg_notify('notification_jobs', v_id::text);
    v_promoted := v_promoted + 1;
  end loop;

  return v_promoted;
end
$$;

-- ---------------------------------------------------------------------------
-- lead_notification_status with its columns named (a `select *` in a view
-- is fixed to the columns of the day it was created) and the hold read
-- through leadrelay.held_until(). The same columns, in the same order.
-- ---------------------------------------------------------------------------
create or replace view public.lead_notification_status
with (security_invoker = true)
as
select l.id as lead_id,
       l.name,
       l.source,
       l.created_at,
       e.status as email_status,
       e.due_at as email_due_at,
       e.sent_at as email_sent_at,
       e.delivery_status as email_delivery_status,
       e.attempts as email_attempts,
       e.last_error as email_error,
       s.status as sms_status,
       s.due_at as sms_due_at,
       s.sent_at as sms_sent_at,
       s.delivery_status as sms_delivery_status,
       s.attempts as sms_attempts,
       s.last_error as sms_error,
       leadrelay.held_until(e.status, e.held_until, e.due_at) as email_held_until,
       e.hold_reason as email_hold_reason,
       e.cancelled_by as email_cancelled_by,
       e.duplicate_of_lead as email_duplicate_of_lead,
       leadrelay.held_until(s.status, s.held_until, s.due_at) as sms_held_until,
       s.hold_reason as sms_hold_reason,
       s.cancelled_by as sms_cancelled_by,
       s.duplicate_of_lead as sms_duplicate_of_lead
from public.landing_leads l
left join lateral (
  select j.status, j.due_at, j.sent_at, j.delivery_status, j.attempts, j.last_error,
         j.held_until, j.hold_reason, j.cancelled_by, j.duplicate_of_lead
  from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'email'
  order by j.id limit 1) e on true
left join lateral (
  select j.status, j.due_at, j.sent_at, j.delivery_status, j.attempts, j.last_error,
         j.held_until, j.hold_reason, j.cancelled_by, j.duplicate_of_lead
  from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'sms'
  order by j.id limit 1) s on true;
