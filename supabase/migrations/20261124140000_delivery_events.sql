-- Delivery reports from the providers' webhooks (and Mobizon's status API).
--
-- Rules kept here:
--  * an event is stored once per provider event id (a redelivery changes nothing);
--  * a job's delivery_status only moves forward: a late "sent" never replaces
--    "delivered", and no final state replaces another;
--  * an event for a message id no job has yet (the webhook beat the worker's
--    own write) is kept, and applied when the id is recorded.

-- The delivery state the event reports, in our words (null: no state, such as
-- email.scheduled or a contact event).
alter table public.notification_events
  add column if not exists delivery_status text;

-- How far along a delivery state is. Final states share the top ranks so that
-- none replaces another; what is not known ranks 0.
create or replace function public.leadrelay_delivery_rank(p_status text)
returns integer
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case p_status
    when 'accepted' then 10          -- Mobizon NEW, ENQUEUD, ACCEPTD
    when 'sent' then 10              -- Resend email.sent
    when 'delivery_delayed' then 20
    when 'partly_delivered' then 25  -- Mobizon PDLIVRD
    when 'delivered' then 30
    when 'opened' then 40
    when 'clicked' then 50
    when 'undelivered' then 60
    when 'rejected' then 60
    when 'expired' then 60
    when 'deleted' then 60
    when 'failed' then 60
    when 'bounced' then 60
    when 'complained' then 70
    else 0
  end
$$;

-- Applies the not yet applied events of one provider message to its job, if
-- the job is known: the most advanced state wins when it is ahead of the
-- job's. Returns how many events it applied.
create or replace function public.apply_pending_notification_events(p_provider text, p_message_id text)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
  v_best record;
  v_applied integer;
  v_problem text;
begin
  if p_message_id is null then
    return 0;
  end if;
  -- the row lock serialises concurrent events for one message
  select j.id, j.lead_id, j.channel, j.delivery_status
    into v_job
    from public.notification_jobs j
   where j.provider_message_id = p_message_id
     and j.channel = case p_provider when 'resend' then 'email' when 'mobizon' then 'sms' end
   for update;
  if not found then
    return 0;
  end if;

  select e.delivery_status, e.occurred_at, e.event_type, e.payload
    into v_best
    from public.notification_events e
   where e.provider = p_provider and e.provider_message_id = p_message_id
     and e.applied_at is null and e.delivery_status is not null
   order by public.leadrelay_delivery_rank(e.delivery_status) desc, e.occurred_at desc nulls last, e.id desc
   limit 1;

  if found and public.leadrelay_delivery_rank(v_best.delivery_status)
               > public.leadrelay_delivery_rank(v_job.delivery_status) then
    if public.leadrelay_delivery_rank(v_best.delivery_status) >= 60 then
      v_problem := left(coalesce(
        nullif(v_best.payload #>> '{data,bounce,message}', ''),
        nullif(v_best.payload #>> '{data,failed,reason}', ''),
        format('%s reported %s', p_provider, v_best.delivery_status)), 2000);
    end if;
    update public.notification_jobs j
       set delivery_status = v_best.delivery_status,
           delivery_status_at = coalesce(v_best.occurred_at, now()),
           last_error = coalesce(v_problem, j.last_error),
           updated_at = now()
     where j.id = v_job.id;
    update public.landing_leads l
       set email_delivery_status = case when v_job.channel = 'email' then v_best.delivery_status else l.email_delivery_status end,
           email_error = case when v_job.channel = 'email' and v_problem is not null then v_problem else l.email_error end,
           sms_delivery_status = case when v_job.channel = 'sms' then v_best.delivery_status else l.sms_delivery_status end,
           sms_error = case when v_job.channel = 'sms' and v_problem is not null then v_problem else l.sms_error end
     where l.id = v_job.lead_id;
  end if;

  update public.notification_events e
     set job_id = v_job.id, applied_at = now()
   where e.provider = p_provider and e.provider_message_id = p_message_id and e.applied_at is null;
  get diagnostics v_applied = row_count;
  return v_applied;
end
$$;

-- Stores one webhook event and applies it. Returns 'duplicate' (seen before,
-- nothing changed), 'applied' (its job's state was considered), 'pending' (no
-- job has its message id yet: kept for later) or 'stored' (an event with no
-- delivery state).
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
begin
  insert into public.notification_events
    (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload, delivery_status)
  values (p_provider, p_event_id, left(p_event_type, 100), left(p_message_id, 200), p_occurred_at, p_payload, p_delivery_status)
  on conflict on constraint notification_events_provider_event_key do nothing
  returning id into v_id;
  if v_id is null then
    return 'duplicate';
  end if;
  if p_delivery_status is null or p_message_id is null then
    update public.notification_events set applied_at = now() where id = v_id;
    return 'stored';
  end if;
  if public.apply_pending_notification_events(p_provider, p_message_id) > 0 then
    return 'applied';
  end if;
  return 'pending';
end
$$;

-- Applies events that arrived before their job's message id was recorded.
-- The worker calls it after each sweep; it only looks at pending events.
create or replace function public.apply_all_pending_notification_events(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_message record;
  v_total integer := 0;
begin
  for v_message in
    select distinct e.provider, e.provider_message_id
      from public.notification_events e
     where e.applied_at is null and e.provider_message_id is not null
     limit p_limit
  loop
    v_total := v_total + public.apply_pending_notification_events(v_message.provider, v_message.provider_message_id);
  end loop;
  return v_total;
end
$$;

revoke all on function public.leadrelay_delivery_rank(text) from public;
revoke all on function public.apply_pending_notification_events(text, text) from public;
revoke all on function public.record_notification_event(text, text, text, text, timestamptz, jsonb, text) from public;
revoke all on function public.apply_all_pending_notification_events(integer) from public;

do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function public.leadrelay_delivery_rank(text), '
                     'public.apply_pending_notification_events(text, text), '
                     'public.record_notification_event(text, text, text, text, timestamptz, jsonb, text), '
                     'public.apply_all_pending_notification_events(integer) from %I', r);
    end if;
  end loop;
end
$$;

-- Sent SMS still waiting for a final state, for the status poll (Mobizon
-- accounts without a delivery-report webhook). Only those are in it.
create index if not exists notification_jobs_sms_awaiting_status_idx
  on public.notification_jobs (sent_at)
  where channel = 'sms' and status = 'sent'
    and (delivery_status is null or delivery_status in ('accepted', 'partly_delivered'));
