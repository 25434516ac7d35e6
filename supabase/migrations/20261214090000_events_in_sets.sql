-- Webhook events stored as a set: a group of events (the webhook's grouped
-- commits, src/ingest/event_batches.rs) is stored and applied by a few
-- statements over the whole group, instead of one function call, and its
-- five inner statements, per event. Measured with `cargo bench --bench
-- leadrelay` (BENCH_ONLY=webhooks): the per-event calls spent most of the
-- database's time planning leadrelay_delivery_rank() and
-- leadrelay_delivery_problem() again on every call from PL/pgSQL.
--
-- What an event does is unchanged (06_record_event_test, 08_event_sweep_test):
-- stored once, applied forward only, kept pending while its job's message id
-- is not recorded. Within a group the events of one message end as if applied
-- one after the other in arrival order: the first of the highest rank wins.
-- record_notification_event() is now the group of one, so there is one
-- definition of what storing an event means.
--
-- This file does not touch landing_leads' definition; the function writes
-- its delivery columns as before.

-- The rank of a delivery state and a failure's text, as PL/pgSQL: a SQL
-- function that pins search_path is never inlined, and every call of one
-- starts an executor of its own (3.3 µs a call against 0.9 µs, measured with
-- 100,000 calls); the webhooks call the rank several times per event.
-- Same values as before (06_record_event_test, 20_events_in_sets_test).
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
     or cardinality(p_event_id) is distinct from cardinality(p_delivery_status) then
    raise exception 'record_notification_events: the arrays differ in length'
      using errcode = '22023';
  end if;

  with input as (
    select t.ord, t.provider, t.event_id, left(t.event_type, 100) as event_type,
           left(t.message_id, 200) as message_id, t.occurred_at, t.payload, t.delivery_status
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
       delivery_status, job_id, applied_at)
    select f.provider, f.event_id, f.event_type, f.message_id, f.occurred_at, f.payload,
           f.delivery_status,
           case when f.fast then f.job_id end,
           case when f.fast or f.delivery_status is null or f.message_id is null then now() end
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

comment on function public.record_notification_events(text[], text[], text[], text[], timestamptz[], jsonb[], text[]) is
  'Stores a group of provider events (parallel arrays, one element per event) and applies them forward only; returns each event''s outcome in order: applied, pending, stored or duplicate.';

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
                                             array[p_delivery_status]))[1];
end
$$;

revoke all on function public.record_notification_events(text[], text[], text[], text[], timestamptz[], jsonb[], text[]) from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function public.record_notification_events(text[], text[], text[], '
                     'text[], timestamptz[], jsonb[], text[]) from %I', r);
    end if;
  end loop;
end
$$;
