-- Suppressions: the addresses and phones leadrelay never sends to again
-- until an operator lifts them. Filled from the providers' reports (a hard
-- bounce, a complaint, Resend's `email.suppressed`), from a person's
-- unsubscribe and from operators; obeyed by the gate, in the same statement
-- that applies the delivery policies, for every path that puts a message on
-- its way: the job ends `cancelled` (`cancelled_by = 'suppressed'`) before any
-- request, with the reason mirrored onto landing_leads.
--
-- A recipient is kept as leadrelay.recipient_key() makes it, and as a hash
-- of that key, which is what the gate matches: a forgotten person's row
-- keeps only the hash, so a new lead with the same address is still not
-- emailed.
--
-- SMS: Mobizon's statuses do not say "not a mobile number" or "no such
-- number" (UNDELIV is also a phone switched off, REJECTD an operator's
-- filter), so no SMS report suppresses a phone by itself; operators and the
-- person's own unsubscribe do.
--
-- This file does not touch landing_leads. notification_jobs and ops_audit
-- are locked for the moment a CHECK is swapped; notification_events for the
-- moment its triggers are created (`leadrelay migrate` gives way if it must
-- wait).
--
-- Amended 2026-12-03. As released, the jobs' CHECK was added valid, so
-- PostgreSQL read every job to prove it under the ACCESS EXCLUSIVE lock of
-- the swap: at 3 million jobs the landing's INSERT (which writes jobs)
-- waited 976–1,088 ms (`BENCH_ONLY=migrate`, docs/benchmarks.md), over the
-- moment this project allows. It is now added NOT VALID: every job already
-- there met the constraint it replaces, which allows a subset of what this
-- one does (no 'suppressed'), so there is nothing to prove, and new and
-- updated rows are checked as before. 20261217090000 replaces it with the
-- jobs' rules trigger either way, so a database that applied the released
-- text ends the same.

create table if not exists public.notification_suppressions (
  id bigint generated always as identity primary key,
  channel text not null check (channel in ('email', 'sms')),
  -- leadrelay.recipient_key() of the address or digits; null once the
  -- person was forgotten
  recipient text check (length(recipient) <= 320),
  -- sha256 of channel || ':' || key: what the gate matches
  recipient_hash bytea not null,
  reason text not null
    check (reason in ('unsubscribed', 'hard_bounce', 'complained', 'provider_suppressed', 'operator')),
  -- what caused it: the lead whose message or link it was, the delivery
  -- event, the operator's audit row (no foreign keys: leads are deleted,
  -- events pruned, and the suppression stays)
  lead_id uuid,
  event_id bigint,
  audit_id bigint,
  note text check (length(note) <= 500),
  created_at timestamptz not null default now(),
  lifted_at timestamptz,
  lifted_by text check (length(lifted_by) <= 200),
  lift_reason text check (length(lift_reason) <= 500)
);

comment on table public.notification_suppressions is
  'Recipients leadrelay does not send to (unsubscribed, hard bounce, complaint, suppressed by the provider, an operator), until lifted_at.';

-- one suppression in force per recipient and channel; the gate's look-up
create unique index if not exists notification_suppressions_in_force_key
  on public.notification_suppressions (channel, recipient_hash) where lifted_at is null;
create index if not exists notification_suppressions_lead_idx
  on public.notification_suppressions (lead_id);

-- Closed to the browser-facing roles: RLS on, no policy, no grant.
alter table public.notification_suppressions enable row level security;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on public.notification_suppressions from %I', r);
    end if;
  end loop;
end
$$;

-- The hash a suppression is matched by.
create or replace function leadrelay.recipient_hash(p_channel text, p_recipient text)
returns bytea
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.sha256(pg_catalog.convert_to(p_channel || ':' || leadrelay.recipient_key(p_channel, p_recipient), 'UTF8'))
$$;

-- Why a suppressed job was cancelled, in the words `last_error`, the lead's
-- email_error/sms_error and the console show.
create or replace function leadrelay.suppression_reason(p_reason text, p_since timestamptz, p_note text)
returns text
language sql
stable
parallel safe
set search_path = ''
as $$
  select left(format('on the suppression list since %s: %s',
                     to_char(p_since at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'),
                     case p_reason
                       when 'unsubscribed' then 'the person unsubscribed'
                       when 'hard_bounce' then 'the address bounced (a permanent failure)'
                       when 'complained' then 'the person marked a message as spam'
                       when 'provider_suppressed' then 'the provider suppressed the address'
                       else 'an operator suppressed it' || coalesce(' (' || p_note || ')', '')
                     end), 500)
$$;

-- Puts p_recipient (an address or digits as a job holds them) on the list
-- for p_channel; a recipient already on it keeps its first reason. Returns
-- the suppression in force.
create or replace function public.leadrelay_suppress(
  p_channel text, p_recipient text, p_reason text, p_lead_id uuid, p_event_id bigint, p_audit_id bigint, p_note text)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id bigint;
  v_hash bytea := leadrelay.recipient_hash(p_channel, p_recipient);
begin
  if v_hash is null then
    return null;
  end if;
  insert into public.notification_suppressions (channel, recipient, recipient_hash, reason, lead_id, event_id, audit_id, note)
  values (p_channel, leadrelay.recipient_key(p_channel, p_recipient), v_hash, p_reason, p_lead_id, p_event_id,
          p_audit_id, left(p_note, 500))
  on conflict (channel, recipient_hash) where lifted_at is null do nothing
  returning id into v_id;
  if v_id is null then
    select s.id into v_id from public.notification_suppressions s
     where s.channel = p_channel and s.recipient_hash = v_hash and s.lifted_at is null;
  end if;
  return v_id;
end
$$;

revoke all on function public.leadrelay_suppress(text, text, text, uuid, bigint, bigint, text) from public;

-- A delivery report applied to an email job that says the address must not
-- be mailed again: a bounce Resend calls permanent (a bounce without a type
-- is one: Resend reports a temporary failure as email.delivery_delayed, and a
-- bounce typed Transient or Undetermined suppresses nothing), a complaint,
-- email.suppressed. Fires when the report is linked to its job: at once, or
-- when an early report is applied later.
create or replace function public.leadrelay_suppress_from_event()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
begin
  select j.channel, j.recipient, j.lead_id into v_job
    from public.notification_jobs j where j.id = new.job_id;
  if not found or v_job.channel <> 'email' or v_job.recipient is null then
    return null;
  end if;
  if new.delivery_status = 'bounced'
     and lower(coalesce(new.payload #>> '{data,bounce,type}', 'permanent')) in ('transient', 'undetermined') then
    return null;
  end if;
  perform public.leadrelay_suppress('email', v_job.recipient,
    case new.delivery_status when 'bounced' then 'hard_bounce' when 'complained' then 'complained'
                             else 'provider_suppressed' end,
    v_job.lead_id, new.id, null, null);
  return null;
end
$$;

create or replace trigger notification_events_suppress_on_insert
  after insert on public.notification_events
  for each row
  when (new.job_id is not null and new.delivery_status in ('bounced', 'complained', 'suppressed'))
  execute function public.leadrelay_suppress_from_event();

create or replace trigger notification_events_suppress_on_link
  after update of job_id on public.notification_events
  for each row
  when (old.job_id is null and new.job_id is not null
        and new.delivery_status in ('bounced', 'complained', 'suppressed'))
  execute function public.leadrelay_suppress_from_event();

alter table public.notification_jobs drop constraint if exists notification_jobs_cancelled_by_policy;
-- NOT VALID: the rows already there met the narrower constraint dropped
-- above (see this file's head), so no scan of the jobs under the lock
alter table public.notification_jobs add constraint notification_jobs_cancelled_by_policy
  check (cancelled_by is null or (cancelled_by in ('duplicate', 'recipient_cap', 'suppressed') and status = 'cancelled'))
  not valid;

alter table public.ops_audit drop constraint if exists ops_audit_action_check;
alter table public.ops_audit add constraint ops_audit_action_check
  check (action in ('retry', 'send_now', 'cancel', 'bulk_retry', 'cancel_rule', 'send_again',
                    'reconcile', 'backfill', 'suppress', 'unsuppress'));

-- The gate obeys the list from 20261211090000_working_days.sql on, which
-- redefines it once for both (the two files are applied together).
