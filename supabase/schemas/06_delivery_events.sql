-- Delivery reports: how far a message got (the rank), the text of a final
-- failure, storing an event, and applying events that beat the worker's
-- own write.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

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
    when 'suppressed' then 60        -- Resend email.suppressed
    when 'complained' then 70
    else 0
  end
$$;

-- The text a final failure writes into last_error and *_error, or null for a
-- state that is not a failure.
create or replace function public.leadrelay_delivery_problem(p_provider text, p_status text, p_payload jsonb)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when public.leadrelay_delivery_rank(p_status) < 60 then null
    when p_provider = 'resend' then left(coalesce(
      nullif(p_payload #>> '{data,bounce,message}', ''),
      nullif(p_payload #>> '{data,failed,reason}', ''),
      nullif(p_payload #>> '{data,suppressed,message}', ''),
      case p_status
        when 'suppressed' then 'Resend did not send it: the address is on the suppression list (an earlier bounce or complaint)'
        when 'complained' then 'the recipient marked the email as spam'
        else format('Resend reported %s', p_status)
      end), 2000)
    else case p_status
      when 'undelivered' then 'Mobizon: the SMS was not delivered (UNDELIV)'
      when 'rejected' then 'Mobizon: the SMS was rejected (REJECTD)'
      when 'expired' then 'Mobizon: the SMS expired before delivery (EXPIRED)'
      when 'deleted' then 'Mobizon: the SMS was deleted (DELETED)'
      else format('Mobizon reported %s', p_status)
    end
  end
$$;

-- As in …_webhook_fast_path.sql, with the problem text from
-- leadrelay_delivery_problem, and one mend: an event without a delivery
-- state (contact, domain and suppression-list events, form events, types
-- added later) no longer reads the unassigned v_job, which failed every such
-- event with "record v_job is not assigned yet" and a 503.
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
  v_job_id bigint;
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
    if v_fast then
      v_job_id := v_job.id;
    end if;
  end if;

  insert into public.notification_events
    (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload,
     delivery_status, job_id, applied_at)
  values (p_provider, p_event_id, left(p_event_type, 100), left(p_message_id, 200), p_occurred_at,
          p_payload, p_delivery_status,
          v_job_id,
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
    v_problem := public.leadrelay_delivery_problem(p_provider, p_delivery_status, p_payload);
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

-- As before, with the problem text from leadrelay_delivery_problem.
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
    v_problem := public.leadrelay_delivery_problem(p_provider, v_best.delivery_status, v_best.payload);
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

-- The sweep: up to p_limit pending events after the cursor, in id order,
-- each message applied once; the cursor wraps round when the walk reaches
-- the end. Events pending longer than pending_event_max_age are abandoned
-- first, a bounded batch at a time.
create or replace function public.apply_all_pending_notification_events(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings record;
  v_cursor bigint;
  v_last bigint;
  v_seen integer := 0;
  v_message record;
  v_total integer := 0;
begin
  select pending_event_max_age, pending_events_cursor into v_settings
    from public.leadrelay_settings where id;
  v_cursor := coalesce(v_settings.pending_events_cursor, 0);

  update public.notification_events e
     set abandoned_at = now()
   where e.id in (
     select o.id from public.notification_events o
      where o.applied_at is null and o.abandoned_at is null and o.provider_message_id is not null
        and o.received_at < now() - coalesce(v_settings.pending_event_max_age, interval '7 days')
      order by o.id
      limit p_limit);

  for v_message in
    select w.provider, w.provider_message_id, max(w.id) as last_id, count(*) as n
      from (select e.id, e.provider, e.provider_message_id
              from public.notification_events e
             where e.applied_at is null and e.abandoned_at is null
               and e.provider_message_id is not null and e.id > v_cursor
             order by e.id
             limit p_limit) w
     group by w.provider, w.provider_message_id
  loop
    v_total := v_total + public.apply_pending_notification_events(v_message.provider, v_message.provider_message_id);
    v_last := greatest(coalesce(v_last, 0), v_message.last_id);
    v_seen := v_seen + v_message.n;
  end loop;

  update public.leadrelay_settings
     set pending_events_cursor = case when v_seen < p_limit then 0 else v_last end
   where id;
  return v_total;
end
$$;
