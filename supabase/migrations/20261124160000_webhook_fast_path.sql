-- Webhook ingestion, the common case in one pass: the event's job is known and
-- has no earlier events waiting, so the event is stored already applied and
-- compared with the job's state directly.
--
-- The general path (store the event unapplied, then apply every waiting event
-- of the message, best first) stays for the rest: an event whose job is not
-- known yet, or a message that still has unapplied events. Same rules either
-- way: stored once, delivery states only move forward.
--
-- Why: the general path wrote each event twice (insert, then mark applied,
-- which also touched the unapplied index) and ranked every stored event of the
-- message through leadrelay_delivery_rank, whose pinned search_path costs a
-- settings save and restore on every call. This path writes the event once
-- and ranks two states.

create or replace function public.record_notification_event(
  p_provider text,
  p_event_id text,
  p_event_type text,
  p_message_id text,
  p_occurred_at timestamptz,
  p_payload jsonb,
  p_delivery_status text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id bigint;
  v_job record;
  v_fast boolean := false;
  v_problem text;
begin
  if p_delivery_status is not null and p_message_id is not null then
    -- the row lock serialises concurrent events for one message
    select j.id, j.lead_id, j.channel, j.delivery_status
      into v_job
      from public.notification_jobs j
     where j.provider_message_id = left(p_message_id, 200)
       and j.channel = case p_provider when 'resend' then 'email' when 'mobizon' then 'sms' end
     for update;
    v_fast := found and not exists (
      select 1 from public.notification_events e
       where e.provider = p_provider and e.provider_message_id = left(p_message_id, 200)
         and e.applied_at is null);
  end if;

  insert into public.notification_events
    (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload,
     delivery_status, job_id, applied_at)
  values (p_provider, p_event_id, left(p_event_type, 100), left(p_message_id, 200), p_occurred_at,
          p_payload, p_delivery_status,
          case when v_fast then v_job.id end,
          case when v_fast or p_delivery_status is null or p_message_id is null then now() end)
  on conflict on constraint notification_events_provider_event_key do nothing
  returning id into v_id;
  if v_id is null then
    return 'duplicate';
  end if;
  if p_delivery_status is null or p_message_id is null then
    return 'stored';
  end if;

  if not v_fast then
    if public.apply_pending_notification_events(p_provider, p_message_id) > 0 then
      return 'applied';
    end if;
    return 'pending';
  end if;

  if public.leadrelay_delivery_rank(p_delivery_status)
     > public.leadrelay_delivery_rank(v_job.delivery_status) then
    if public.leadrelay_delivery_rank(p_delivery_status) >= 60 then
      v_problem := left(coalesce(
        nullif(p_payload #>> '{data,bounce,message}', ''),
        nullif(p_payload #>> '{data,failed,reason}', ''),
        format('%s reported %s', p_provider, p_delivery_status)), 2000);
    end if;
    update public.notification_jobs j
       set delivery_status = p_delivery_status,
           delivery_status_at = coalesce(p_occurred_at, now()),
           last_error = coalesce(v_problem, j.last_error),
           updated_at = now()
     where j.id = v_job.id;
    update public.landing_leads l
       set email_delivery_status = case when v_job.channel = 'email' then p_delivery_status else l.email_delivery_status end,
           email_error = case when v_job.channel = 'email' and v_problem is not null then v_problem else l.email_error end,
           sms_delivery_status = case when v_job.channel = 'sms' then p_delivery_status else l.sms_delivery_status end,
           sms_error = case when v_job.channel = 'sms' and v_problem is not null then v_problem else l.sms_error end
     where l.id = v_job.lead_id;
  end if;
  return 'applied';
end
$$;

comment on function public.record_notification_event(text, text, text, text, timestamptz, jsonb, text) is
  'Stores one webhook event once and applies it to its job: duplicate, applied, pending (job not known yet) or stored (no delivery state).';

-- create or replace keeps the function's owner and grants: it stays closed to
-- anon and authenticated as …_delivery_events.sql left it.
