-- Delivery reports: how far a message got (the rank), the text of a final
-- failure, storing an event, and applying events that beat the worker's
-- own write.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

-- PL/pgSQL, not SQL: a SQL function that pins search_path is never inlined,
-- and every call of one starts an executor of its own (20261214090000).
create or replace function public.leadrelay_delivery_rank(p_status text)
returns integer
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  return case p_status
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
  end;
end
$$;

-- The text a final failure writes into last_error and *_error, or null for a
-- state that is not a failure.
create or replace function public.leadrelay_delivery_problem(p_provider text, p_status text, p_payload jsonb)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  return case
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
  end;
end
$$;

-- A group of events (20261214090000; the received times since
-- 20261215090000): stored and applied as a set, each
-- event's outcome in order; the events of one message end as if applied one
-- after the other in arrival order (the first of the highest rank wins).
create or replace function public.record_notification_events(
  p_provider text[],
  p_event_id text[],
  p_event_type text[],
  p_message_id text[],
  p_occurred_at timestamptz[],
  p_payload jsonb[],
  p_delivery_status text[],
  p_received_at timestamptz[])
returns text[]
language plpgsql
security definer
set search_path = ''
-- planned once per connection: a group's statements cost far less to run
-- than to plan again for every group's arrays
set plan_cache_mode = force_generic_plan
as $$
declare
  v_outcome text[];
  v_message record;
begin
  if cardinality(p_event_id) is distinct from cardinality(p_provider)
     or cardinality(p_event_id) is distinct from cardinality(p_event_type)
     or cardinality(p_event_id) is distinct from cardinality(p_message_id)
     or cardinality(p_event_id) is distinct from cardinality(p_occurred_at)
     or cardinality(p_event_id) is distinct from cardinality(p_payload)
     or cardinality(p_event_id) is distinct from cardinality(p_delivery_status)
     or (p_received_at is not null and cardinality(p_event_id) is distinct from cardinality(p_received_at)) then
    raise exception 'record_notification_events: the arrays differ in length'
      using errcode = '22023';
  end if;

  with input as (
    select t.ord, t.provider, t.event_id, left(t.event_type, 100) as event_type,
           left(t.message_id, 200) as message_id, t.occurred_at, t.payload, t.delivery_status,
           coalesce(p_received_at[t.ord], now()) as received_at
      from unnest(p_provider, p_event_id, p_event_type, p_message_id, p_occurred_at, p_payload,
                  p_delivery_status)
           with ordinality as t(provider, event_id, event_type, message_id, occurred_at, payload,
                                delivery_status, ord)
  ),
  -- An event with a state, for a job we know and nothing of its message
  -- waiting, is applied as it is stored (the fast path); the rest wait.
  -- The job's row lock serialises concurrent events for one message; the
  -- caller orders a group by message id, so two groups take their locks in
  -- one order (a deadlock with the worker fails the group, which the caller
  -- then stores event by event).
  judged as (
    select i.*, k.id as job_id,
           k.id is not null and not exists (
             select 1 from public.notification_events e
              where e.provider = i.provider and e.provider_message_id = i.message_id
                and e.applied_at is null) as fast
      from input i
      left join lateral (
        select j.id from public.notification_jobs j
         where i.delivery_status is not null
           and j.provider_message_id = i.message_id
           and j.channel = case i.provider when 'resend' then 'email' when 'mobizon' then 'sms' end
         limit 1
           for update of j) k on true
  ),
  -- an event repeated within the group is stored once, as its first
  firsts as (
    select distinct on (g.provider, g.event_id) g.*
      from judged g
     order by g.provider, g.event_id, g.ord
  ),
  inserted as (
    insert into public.notification_events
      (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload,
       delivery_status, job_id, applied_at, received_at)
    select f.provider, f.event_id, f.event_type, f.message_id, f.occurred_at, f.payload,
           f.delivery_status,
           case when f.fast then f.job_id end,
           case when f.fast or f.delivery_status is null or f.message_id is null then now() end,
           f.received_at
      from firsts f
     order by f.ord
    on conflict on constraint notification_events_provider_event_key do nothing
    returning provider, provider_event_id
  ),
  stored as (
    select f.ord, f.job_id, f.fast, f.provider, f.delivery_status, f.occurred_at, f.payload
      from firsts f
      join inserted n on n.provider = f.provider and n.provider_event_id = f.event_id
  ),
  -- each job moves once, to the first of its new events of the highest rank
  ranked as (
    select s.*, public.leadrelay_delivery_rank(s.delivery_status) as rank
      from stored s
     where s.fast
  ),
  best as (
    select distinct on (r.job_id) r.*,
           -- only a failure has a problem text (leadrelay_delivery_problem)
           case when r.rank >= 60
                then public.leadrelay_delivery_problem(r.provider, r.delivery_status, r.payload) end as problem
      from ranked r
     order by r.job_id, r.rank desc, r.ord
  ),
  moved as (
    update public.notification_jobs j
       set delivery_status = b.delivery_status,
           delivery_status_at = coalesce(b.occurred_at, now()),
           last_error = coalesce(b.problem, j.last_error),
           updated_at = now()
      from best b
     where j.id = b.job_id
       and b.rank > public.leadrelay_delivery_rank(j.delivery_status)
    returning j.id, j.lead_id, j.channel, j.delivery_status, b.problem
  ),
  -- the lead's columns, once per lead: of two jobs of one channel moved
  -- together, the newer one's
  per_lead as (
    select m.lead_id,
           (array_agg(m.delivery_status order by m.id desc) filter (where m.channel = 'email'))[1] as email_status,
           (array_agg(m.problem order by m.id desc) filter (where m.channel = 'email'))[1] as email_problem,
           (array_agg(m.delivery_status order by m.id desc) filter (where m.channel = 'sms'))[1] as sms_status,
           (array_agg(m.problem order by m.id desc) filter (where m.channel = 'sms'))[1] as sms_problem
      from moved m
     group by m.lead_id
  ),
  mirrored as (
    update public.landing_leads l
       set email_delivery_status = coalesce(p.email_status, l.email_delivery_status),
           email_error = coalesce(p.email_problem, l.email_error),
           sms_delivery_status = coalesce(p.sms_status, l.sms_delivery_status),
           sms_error = coalesce(p.sms_problem, l.sms_error)
      from per_lead p
     where l.id = p.lead_id
    returning l.id
  )
  select array_agg(case
           when s.ord is null then 'duplicate'
           when g.delivery_status is null or g.message_id is null then 'stored'
           when g.fast then 'applied'
           else 'pending' end
         order by g.ord)
    into v_outcome
    from judged g
    left join stored s on s.ord = g.ord;
  v_outcome := coalesce(v_outcome, '{}');

  -- The job is known but events of its message were waiting (or it is not
  -- known yet): those and the new ones are applied together, best first.
  for v_message in
    select distinct p_provider[o.i] as provider, left(p_message_id[o.i], 200) as message_id
      from generate_subscripts(v_outcome, 1) as o(i)
     where v_outcome[o.i] = 'pending'
  loop
    if public.apply_pending_notification_events(v_message.provider, v_message.message_id) > 0 then
      select array_agg(case
               when v_outcome[o.i] = 'pending' and p_provider[o.i] = v_message.provider
                    and left(p_message_id[o.i], 200) = v_message.message_id then 'applied'
               else v_outcome[o.i] end
             order by o.i)
        into v_outcome
        from generate_subscripts(v_outcome, 1) as o(i);
    end if;
  end loop;
  return v_outcome;
end
$$;

-- The form of seven arrays: the moment of the call as every event's
-- received time (20261215090000).
create or replace function public.record_notification_events(
  p_provider text[],
  p_event_id text[],
  p_event_type text[],
  p_message_id text[],
  p_occurred_at timestamptz[],
  p_payload jsonb[],
  p_delivery_status text[])
returns text[]
language plpgsql
security definer
set search_path = ''
as $$
begin
  return public.record_notification_events(p_provider, p_event_id, p_event_type, p_message_id,
                                           p_occurred_at, p_payload, p_delivery_status, null);
end
$$;

-- One event: the group of one.
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
begin
  return (public.record_notification_events(array[p_provider], array[p_event_id], array[p_event_type],
                                             array[p_message_id], array[p_occurred_at], array[p_payload],
                                             array[p_delivery_status], null))[1];
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

-- A busy webhook's groups, stored in notification_event_inbox and answered,
-- applied from there in arrival order (20261215090000).
create or replace function public.apply_notification_event_inbox(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_taken record;
  v_state text;
  v_error text;
begin
  if p_limit is null or p_limit < 1 then
    raise exception 'apply_notification_event_inbox: the limit must be at least 1'
      using errcode = '22023';
  end if;
  with taken as (
    delete from public.notification_event_inbox b
     where b.id = any(array(select i.id from public.notification_event_inbox i
                             where i.failed_at is null
                             order by i.id limit p_limit))
       and b.failed_at is null
    returning b.*
  )
  -- in message-id order, each message's events in arrival order: the order
  -- record_notification_events() locks jobs in and ranks ties by
  select count(*)::int as n,
         array_agg(t.provider order by t.provider, t.provider_message_id, t.id) as provider,
         array_agg(t.provider_event_id order by t.provider, t.provider_message_id, t.id) as event_id,
         array_agg(t.event_type order by t.provider, t.provider_message_id, t.id) as event_type,
         array_agg(t.provider_message_id order by t.provider, t.provider_message_id, t.id) as message_id,
         array_agg(t.occurred_at order by t.provider, t.provider_message_id, t.id) as occurred_at,
         array_agg(t.payload order by t.provider, t.provider_message_id, t.id) as payload,
         array_agg(t.delivery_status order by t.provider, t.provider_message_id, t.id) as delivery_status,
         array_agg(t.received_at order by t.provider, t.provider_message_id, t.id) as received_at
    into v_taken
    from taken t;
  if v_taken.n = 0 then
    return 0;
  end if;
  begin
    perform public.record_notification_events(v_taken.provider, v_taken.event_id, v_taken.event_type,
                                              v_taken.message_id, v_taken.occurred_at, v_taken.payload,
                                              v_taken.delivery_status, v_taken.received_at);
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate;
    -- a deadlock with the worker, a serialization failure: the whole call
    -- again later, the events back in the inbox
    if v_state like '40%' then
      raise;
    end if;
    -- one event's trouble must not hold the others back: each alone, and
    -- one that fails alone is kept with its error, out of the way
    for i in 1 .. v_taken.n loop
      begin
        perform public.record_notification_events(
          array[v_taken.provider[i]], array[v_taken.event_id[i]], array[v_taken.event_type[i]],
          array[v_taken.message_id[i]], array[v_taken.occurred_at[i]], array[v_taken.payload[i]],
          array[v_taken.delivery_status[i]], array[v_taken.received_at[i]]);
      exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_error = message_text;
        if v_state like '40%' then
          raise;
        end if;
        insert into public.notification_event_inbox
          (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload,
           delivery_status, received_at, last_error, failed_at)
        values (v_taken.provider[i], v_taken.event_id[i], v_taken.event_type[i], v_taken.message_id[i],
                v_taken.occurred_at[i], v_taken.payload[i], v_taken.delivery_status[i],
                v_taken.received_at[i], left(format('%s (SQLSTATE %s)', v_error, v_state), 2000), now());
      end;
    end loop;
  end;
  return v_taken.n;
end
$$;
