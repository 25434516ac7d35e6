-- Suppressions: the hash a recipient is matched by, the words of a
-- suppressed job's reason, putting a recipient on the list, the reports
-- that put an address on it themselves, and the unsubscribe links' key. The gate that obeys the list is in
-- 03_send_windows_and_policies.sql.

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


-- The unsubscribe links' key, made when missing (20261210090000).
create or replace function public.leadrelay_unsubscribe_key()
returns text
language sql
volatile
security definer
set search_path = ''
as $$
  update public.leadrelay_settings
     set unsubscribe_key = coalesce(unsubscribe_key,
                                    replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
   where id
  returning unsubscribe_key
$$;
revoke all on function public.leadrelay_unsubscribe_key() from public;
