-- Webhook events under load: answered once stored, applied right after.
--
-- A busy webhook's groups (src/ingest/event_batches.rs) used to be stored
-- and applied by one call before their requests were answered, so the
-- ingestion was bound by one database session: each group paid the job's
-- update, the lead's mirror and their indexes while its providers waited
-- (docs/benchmarks.md, 2026-12-02). Providers ask only that a 2xx mean the
-- event is stored (docs of Resend/Svix and Mobizon: they deliver again until
-- they get one). So a group is now written into this inbox (one INSERT, one
-- index), answered, and applied from here by the service's applier, which
-- takes what has piled up in one call: the larger the pile, the less each
-- event costs. A lone event while nothing waits is still stored and applied
-- at once, as before.
--
-- An event in the inbox is durable: a service that stops before applying it
-- leaves it here, and the next applier (of any serve process) takes it. What
-- applying means is unchanged: record_notification_events(), fed from here in
-- message-id order and, within a message, in arrival order.

create table if not exists public.notification_event_inbox (
  id bigint generated always as identity primary key,
  -- the same rules as notification_events', so what is accepted here is
  -- accepted there
  provider text not null check (provider in ('resend', 'mobizon')),
  provider_event_id text not null check (length(provider_event_id) between 1 and 256),
  event_type text not null,
  provider_message_id text,
  occurred_at timestamptz,
  payload jsonb not null,
  delivery_status text,
  received_at timestamptz not null default now(),
  -- set when the event could not be applied (the error, without the
  -- payload's words): it is kept here, skipped, for an operator (doctor
  -- counts them; clearing it tries again)
  last_error text,
  failed_at timestamptz
);

comment on table public.notification_event_inbox is
  'Provider events stored and answered but not applied yet; the service applies and removes them within moments (apply_notification_event_inbox).';

alter table public.notification_event_inbox enable row level security;
-- rows live for milliseconds: vacuum it by the number of dead rows, not by
-- a share of a table that is almost always empty
alter table public.notification_event_inbox set (
  autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);

do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on table public.notification_event_inbox from %I', r);
      execute format('revoke all on sequence public.notification_event_inbox_id_seq from %I', r);
    end if;
  end loop;
end
$$;

-- The received time travels with the event: the 8-argument form is the
-- definition, the 7-argument one (a lone event, or a build before this one)
-- stores the moment of the call as before.
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

comment on function public.record_notification_events(text[], text[], text[], text[], timestamptz[], jsonb[], text[], timestamptz[]) is
  'Stores a group of provider events (parallel arrays, one element per event; received_at null for now) and applies them forward only; returns each event''s outcome in order: applied, pending, stored or duplicate.';

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

-- One event: the group of one, stored at the moment of the call.
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

-- Takes up to p_limit events from the inbox, oldest first, and applies them
-- as one group; returns how many it took. The ids are looked up by the
-- primary key, not joined: the join's plan scanned the inbox's dead rows
-- (2.1 ms a call of about 50 events against 1.4, BENCH_ONLY=webhooks
-- BENCH_PROFILE=1). No `for update skip locked`: locking the rows before
-- deleting them wrote each twice (1.5 ms against 1.1); two appliers (two
-- serve processes) that pick the same rows take turns, the second finding
-- them gone. A deadlock with the worker rolls the taking back, so the
-- events wait for the next call; an event that cannot be applied even on its
-- own stays in the inbox with its error and is skipped from then on.
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

comment on function public.apply_notification_event_inbox(integer) is
  'Applies up to p_limit stored webhook events from notification_event_inbox, oldest first, and removes them (one that cannot be applied stays, with last_error and failed_at); returns how many it took.';

-- Forgetting a person erases the payloads of their events still in the
-- inbox too (12_forget in supabase/schemas).
create or replace function public.leadrelay_forget(
  p_leads uuid[], p_lead_rows boolean, p_actor text, p_session_id bigint, p_client_addr text,
  out cancelled integer, out jobs integer, out events integer, out suppressions integer,
  out audit_notes integer, out lead_rows integer, out audit_id bigint)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_erased constant text := 'erased: the person asked to be forgotten';
  v_jobs bigint[];
  v_waiting integer;
begin
  update public.notification_jobs
     set status = 'cancelled', finished_at = now(), last_error = 'cancelled: the person asked to be forgotten',
         locked_by = null, locked_until = null, updated_at = now()
   where lead_id = any(p_leads) and status in ('scheduled', 'due');
  get diagnostics cancelled = row_count;

  -- the suppressions first: their hash is found through the leads' contacts
  update public.notification_suppressions s
     set recipient = null, note = null, lift_reason = case when s.lift_reason is not null then v_erased end
   where s.lead_id = any(p_leads)
      or s.recipient_hash in (
           select leadrelay.recipient_hash('email', leadrelay.recipient('email', l.email, null))
             from public.landing_leads l where l.id = any(p_leads)
           union all
           select leadrelay.recipient_hash('sms', leadrelay.recipient('sms', null, l.phone))
             from public.landing_leads l where l.id = any(p_leads));
  get diagnostics suppressions = row_count;

  update public.notification_events e
     set payload = jsonb_build_object('erased', true)
   where e.job_id in (select j.id from public.notification_jobs j where j.lead_id = any(p_leads))
      or (e.job_id is null and e.provider_message_id in (
            select j.provider_message_id from public.notification_jobs j
             where j.lead_id = any(p_leads) and j.provider_message_id is not null));
  get diagnostics events = row_count;
  -- and those answered but not applied yet (20261215090000)
  update public.notification_event_inbox b
     set payload = jsonb_build_object('erased', true)
   where b.provider_message_id in (
           select j.provider_message_id from public.notification_jobs j
            where j.lead_id = any(p_leads) and j.provider_message_id is not null);
  get diagnostics v_waiting = row_count;
  events := events + v_waiting;

  with erased as (
    update public.notification_jobs j
       set recipient = null, sent_params = null,
           last_error = case when j.last_error is not null then v_erased end,
           sent_unconfirmed = case when j.sent_unconfirmed is not null then v_erased end,
           hold_reason = case when j.hold_reason is not null then v_erased end,
           errors = coalesce((select jsonb_agg(case jsonb_typeof(e)
                                                 when 'object' then (e - 'error') || jsonb_build_object('error', v_erased)
                                                 else jsonb_build_object('error', v_erased) end)
                                from jsonb_array_elements(case jsonb_typeof(j.errors) when 'array' then j.errors
                                                               else '[]'::jsonb end) e), '[]'::jsonb),
           updated_at = now()
     where j.lead_id = any(p_leads)
    returning j.id
  )
  select coalesce(array_agg(id), '{}') into v_jobs from erased;
  jobs := cardinality(v_jobs);

  update public.ops_audit set reason = v_erased
   where lead_ids && p_leads and reason is not null;
  get diagnostics audit_notes = row_count;

  update public.landing_leads
     set email_error = case when email_error is not null then v_erased end,
         sms_error = case when sms_error is not null then v_erased end
   where id = any(p_leads) and (email_error is not null or sms_error is not null);

  lead_rows := 0;
  if p_lead_rows then
    update public.landing_leads
       set name = null, email = null, phone = null, metadata = null
     where id = any(p_leads);
    get diagnostics lead_rows = row_count;
  end if;

  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  values (p_session_id, left(p_actor, 200), 'forget', v_jobs, v_jobs, p_leads, 'a person was forgotten', left(p_client_addr, 64))
  returning id into audit_id;
end
$$;

do $$
declare
  f text;
  r text;
begin
  foreach f in array array[
    'public.record_notification_events(text[], text[], text[], text[], timestamptz[], jsonb[], text[], timestamptz[])',
    'public.apply_notification_event_inbox(integer)'] loop
    execute format('revoke all on function %s from public', f);
    foreach r in array array['anon', 'authenticated'] loop
      if exists (select 1 from pg_roles where rolname = r) then
        execute format('revoke all on function %s from %I', f, r);
      end if;
    end loop;
  end loop;
end
$$;
