-- leadrelay core: durable notification jobs for landing leads.
--
-- Rules this file keeps (they are tested in supabase/tests/):
--  * it applies twice without error and inside one transaction (`leadrelay migrate`
--    and `supabase db push` both wrap it), so every statement is idempotent;
--  * an existing landing_leads with its rows is never rewritten: only columns are
--    added, each with a constant default (a catalog-only change since PG 11);
--  * every function pins search_path and schema-qualifies what it touches;
--  * nothing new is readable by the Supabase API roles anon and authenticated.

-- ---------------------------------------------------------------------------
-- landing_leads: owned by the Node backend; created here only for new projects.
-- ---------------------------------------------------------------------------
do $$
begin
  if to_regclass('public.landing_leads') is null then
    create table public.landing_leads (
      id uuid primary key default gen_random_uuid(),
      name text,
      email text,
      phone text,
      source text,
      metadata jsonb,
      created_at timestamptz not null default now()
    );
    -- A table we create is locked down like the others; an existing one keeps the
    -- access rules its owners gave it.
    alter table public.landing_leads enable row level security;
  end if;
end
$$;

-- The mirror: a copy of the jobs' outcome where the dashboard already looks.
-- leadrelay writes these columns; the jobs table stays the source of truth.
alter table public.landing_leads
  add column if not exists email_sent boolean not null default false,
  add column if not exists email_sent_at timestamptz,
  add column if not exists email_error text,
  add column if not exists sms_sent boolean not null default false,
  add column if not exists sms_sent_at timestamptz,
  add column if not exists sms_error text,
  add column if not exists email_delivery_status text,
  add column if not exists sms_delivery_status text;

-- ---------------------------------------------------------------------------
-- notification_rules: which leads get which message after what delay.
-- ---------------------------------------------------------------------------
create table if not exists public.notification_rules (
  id bigint generated always as identity primary key,
  -- matched with LIKE against landing_leads.source, e.g. 'proftest%'
  source_pattern text not null,
  channel text not null check (channel in ('email', 'sms', 'lead_tracking')),
  template text not null check (template ~ '^[a-z0-9_]{1,64}$'),
  delay interval not null default interval '10 minutes'
    check (delay >= interval '0' and delay <= interval '30 days'),
  enabled boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint notification_rules_pattern_channel_template_key
    unique (source_pattern, channel, template)
);

comment on table public.notification_rules is
  'Which leads get which message and when. Change the delay with one UPDATE; it applies to leads inserted afterwards.';

insert into public.notification_rules (source_pattern, channel, template, delay)
values ('proftest%', 'email', 'proftest_result', interval '10 minutes'),
       ('proftest%', 'sms', 'proftest_result', interval '10 minutes')
on conflict on constraint notification_rules_pattern_channel_template_key do nothing;

-- ---------------------------------------------------------------------------
-- notification_jobs: one row per lead, channel and template; a state machine.
--
--   scheduled --promote (due_at reached)--> due --claim--> sending --> sent
--                                            ^               |   \--> failed (permanent error or attempts used up)
--                                            +--retry/lease--+
--   invalid: the recipient can never be valid; cancelled: an operator said so.
--
-- lead_id has no foreign key on purpose: the RI check would lock the new lead row
-- once per job inside every landing insert. Deleting a lead deletes its jobs
-- through a trigger instead (below).
-- ---------------------------------------------------------------------------
create table if not exists public.notification_jobs (
  id bigint generated always as identity primary key,
  lead_id uuid not null,
  channel text not null check (channel in ('email', 'sms', 'lead_tracking')),
  template text not null,
  -- the normalised address or international phone digits, fixed at enqueue time so
  -- that a retried email has exactly the same body (Resend's idempotency needs it)
  recipient text,
  status text not null default 'scheduled'
    check (status in ('scheduled', 'due', 'sending', 'sent', 'failed', 'invalid', 'cancelled')),
  due_at timestamptz not null,
  attempts integer not null default 0 check (attempts >= 0),
  max_attempts integer not null default 8 check (max_attempts between 1 and 100),
  -- the lease of the worker that is sending it; expired leases are rescued
  locked_by text,
  locked_until timestamptz,
  last_error text,
  -- every failed attempt, oldest first: [{"attempt", "at", "error"}]
  errors jsonb not null default '[]'::jsonb,
  provider_message_id text,
  delivery_status text,
  delivery_status_at timestamptz,
  sent_at timestamptz,
  finished_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint notification_jobs_lead_channel_template_key unique (lead_id, channel, template),
  -- timestamps and leases tied to states, so a buggy writer fails loudly
  constraint notification_jobs_sending_has_lease
    check (status <> 'sending' or (locked_by is not null and locked_until is not null)),
  constraint notification_jobs_sent_has_sent_at
    check (status <> 'sent' or sent_at is not null),
  constraint notification_jobs_final_has_finished_at
    check (status not in ('sent', 'failed', 'invalid', 'cancelled') or finished_at is not null),
  constraint notification_jobs_failure_has_reason
    check (status not in ('failed', 'invalid') or last_error is not null),
  constraint notification_jobs_recipient_length check (length(recipient) <= 320),
  constraint notification_jobs_last_error_length check (length(last_error) <= 2000)
);

comment on table public.notification_jobs is
  'One row per lead, channel and template. status: scheduled, due, sending, sent, failed, invalid, cancelled.';

-- A new job touches the two keys and, unless it is invalid or due at once, this
-- one index. It serves the promotion (scheduled jobs whose due_at has passed,
-- oldest first) and the worker's "when is the next job due" timer.
create index if not exists notification_jobs_scheduled_idx
  on public.notification_jobs (due_at, id)
  where status = 'scheduled';

-- The claim: each channel's worker lane takes the oldest due jobs of its
-- channel. The columns are exactly the claim's WHERE channel = … ORDER BY
-- due_at, id; only due jobs are in it, so it stays small at any table size.
create index if not exists notification_jobs_claim_idx
  on public.notification_jobs (channel, due_at, id)
  where status = 'due';

-- Expired leases are found here; only jobs being sent are in it.
create index if not exists notification_jobs_sending_idx
  on public.notification_jobs (locked_until)
  where status = 'sending';

-- Webhooks find a job by the provider's message id; unsent jobs are not in it.
create index if not exists notification_jobs_provider_message_idx
  on public.notification_jobs (provider_message_id)
  where provider_message_id is not null;

-- ---------------------------------------------------------------------------
-- notification_events: every provider webhook received, once.
-- ---------------------------------------------------------------------------
create table if not exists public.notification_events (
  id bigint generated always as identity primary key,
  provider text not null check (provider in ('resend', 'mobizon')),
  -- svix-id for Resend; for Mobizon a digest of the report (it has no event id)
  provider_event_id text not null check (length(provider_event_id) between 1 and 256),
  event_type text not null,
  provider_message_id text,
  occurred_at timestamptz,
  payload jsonb not null,
  received_at timestamptz not null default now(),
  -- set when the event has been applied to its job; null while the job's
  -- provider_message_id is not recorded yet (the webhook beat the worker)
  job_id bigint,
  applied_at timestamptz,
  constraint notification_events_provider_event_key unique (provider, provider_event_id)
);

create index if not exists notification_events_unapplied_idx
  on public.notification_events (provider, provider_message_id)
  where applied_at is null;

-- ---------------------------------------------------------------------------
-- Recipient checks shared by the trigger and the tests. They return a reason a
-- person understands, or null when the value is usable; they never raise.
-- ---------------------------------------------------------------------------
create or replace function public.leadrelay_email_problem(p_email text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_email is null or btrim(p_email) = '' then 'email is missing'
    when length(p_email) > 254 then 'email is longer than 254 characters'
    when btrim(p_email) !~ '^[^@[:space:]<>(),;:"]+@[^@[:space:]<>(),;:"]+\.[^@[:space:]<>(),;:".]{2,}$'
      then 'email is not an address of the form name@domain.tld'
    when btrim(p_email) ~ '\.\.' then 'email has two dots in a row'
    else null
  end
$$;

-- People type '+7 (705) 123-45-67', '8 705 123 4567' or '87051234567': keep the
-- digits, turn a leading 8 into the country code 7, and accept only 11 digits.
create or replace function public.leadrelay_phone_digits(p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_phone is null or length(p_phone) > 64 then null
    else (
      select case
        when length(d) = 11 and left(d, 1) = '8' then '7' || substr(d, 2)
        when length(d) = 11 and left(d, 1) = '7' then d
        else null
      end
      from (select regexp_replace(p_phone, '[^0-9]', '', 'g') as d) digits
    )
  end
$$;

create or replace function public.leadrelay_phone_problem(p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_phone is null or btrim(p_phone) = '' then 'phone is missing'
    when length(p_phone) > 64 then 'phone is longer than 64 characters'
    when p_phone ~ '[^0-9[:space:]()+.\-]' then 'phone contains characters other than digits, spaces, +, -, ( and )'
    else (
      select case
        when length(d) = 0 then 'phone has no digits'
        when length(d) <> 11 then format(
          'phone has %s digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)',
          length(d))
        when left(d, 1) not in ('7', '8') then 'phone does not start with the country code 7 (or 8)'
        else null
      end
      from (select regexp_replace(p_phone, '[^0-9]', '', 'g') as d) digits
    )
  end
$$;

-- ---------------------------------------------------------------------------
-- The enqueue trigger: runs in the inserting transaction, so a committed lead
-- always has its jobs. It must never make the landing's INSERT fail: any error
-- is caught, reported as a WARNING, and the lead is still saved (its missing
-- jobs are then visible to `leadrelay backfill` and to the SQL checks).
-- SECURITY DEFINER because the landing inserts as service_role through
-- PostgREST, a role that has no rights on the jobs table.
-- ---------------------------------------------------------------------------
create or replace function public.enqueue_lead_notifications()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_email text := btrim(new.email);
  v_phone text := new.phone;
  v_digits text;
  v_email_problem text;
  v_phone_problem text;
  v_inserted bigint;
begin
  begin
    -- The checks of leadrelay_email_problem() and leadrelay_phone_problem(),
    -- written out here: a call to a function with its own SET search_path
    -- costs a configuration save and restore, which on every landing insert
    -- was most of this trigger's cost. supabase/tests/ checks both agree.
    v_email_problem := case
      when v_email is null or v_email = '' then 'email is missing'
      when length(new.email) > 254 then 'email is longer than 254 characters'
      when v_email !~ '^[^@[:space:]<>(),;:"]+@[^@[:space:]<>(),;:"]+\.[^@[:space:]<>(),;:".]{2,}$'
        then 'email is not an address of the form name@domain.tld'
      when v_email ~ '\.\.' then 'email has two dots in a row'
    end;
    if v_phone is null or btrim(v_phone) = '' then
      v_phone_problem := 'phone is missing';
    elsif length(v_phone) > 64 then
      v_phone_problem := 'phone is longer than 64 characters';
    elsif v_phone ~ '[^0-9[:space:]()+.\-]' then
      v_phone_problem := 'phone contains characters other than digits, spaces, +, -, ( and )';
    else
      v_digits := regexp_replace(v_phone, '[^0-9]', '', 'g');
      v_phone_problem := case
        when length(v_digits) = 0 then 'phone has no digits'
        when length(v_digits) <> 11 then format(
          'phone has %s digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)',
          length(v_digits))
        when left(v_digits, 1) not in ('7', '8') then 'phone does not start with the country code 7 (or 8)'
      end;
      if v_phone_problem is null then
        v_digits := '7' || substr(v_digits, 2);
      end if;
    end if;

    with rules as (
      select r.channel, r.template, r.delay,
             case r.channel
               when 'email' then v_email_problem
               when 'sms' then v_phone_problem
             end as problem
      from public.notification_rules r
      where r.enabled and new.source like r.source_pattern
    ), inserted as (
      insert into public.notification_jobs
        (lead_id, channel, template, recipient, status, due_at, last_error, finished_at)
      select new.id, rules.channel, rules.template,
             case
               when rules.problem is not null then null
               when rules.channel = 'email' then v_email
               when rules.channel = 'sms' then v_digits
             end,
             case
               when rules.problem is not null then 'invalid'
               when rules.delay = interval '0' then 'due'
               else 'scheduled'
             end,
             coalesce(new.created_at, now()) + rules.delay,
             rules.problem,
             case when rules.problem is not null then now() end
      from rules
      on conflict on constraint notification_jobs_lead_channel_template_key do nothing
      returning id
    )
    select count(*) from inserted into strict v_inserted;
    -- No NOTIFY here, even for jobs due at once: PostgreSQL serialises the
    -- commits of all transactions that notify, which would make concurrent
    -- landing inserts wait for each other. Those jobs are found by the
    -- worker's next sweep (SWEEP_INTERVAL, 30 s by default).

    -- Show an unusable address where the dashboard looks. Rare, so the extra
    -- update of the new row costs nothing in the common case.
    if v_inserted > 0 and (v_email_problem is not null or v_phone_problem is not null) then
      update public.landing_leads l
         set email_error = case when exists (
               select 1 from public.notification_jobs j
               where j.lead_id = new.id and j.channel = 'email' and j.status = 'invalid')
             then v_email_problem else l.email_error end,
             sms_error = case when exists (
               select 1 from public.notification_jobs j
               where j.lead_id = new.id and j.channel = 'sms' and j.status = 'invalid')
             then v_phone_problem else l.sms_error end
       where l.id = new.id;
    end if;
  exception when others then
    raise warning 'leadrelay: lead % was saved but its notifications were not enqueued: % (SQLSTATE %)',
      new.id, sqlerrm, sqlstate;
  end;
  return null;
end
$$;

drop trigger if exists landing_leads_enqueue_notifications on public.landing_leads;
create trigger landing_leads_enqueue_notifications
  after insert on public.landing_leads
  for each row execute function public.enqueue_lead_notifications();

-- Deleting a lead (a person asking to be forgotten) deletes its jobs too.
create or replace function public.delete_lead_notifications()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  delete from public.notification_jobs j where j.lead_id = old.id;
  return null;
end
$$;

drop trigger if exists landing_leads_delete_notifications on public.landing_leads;
create trigger landing_leads_delete_notifications
  after delete on public.landing_leads
  for each row execute function public.delete_lead_notifications();

-- ---------------------------------------------------------------------------
-- Promotion: scheduled jobs whose time has come become due, and each one is
-- announced on channel notification_jobs (payload: the job id). It also rescues
-- jobs whose sender's lease ran out (a crashed worker): they go back to due, or
-- fail once their attempts are used up. pg_cron calls it; so does the worker's
-- own sweep, so it works without pg_cron too.
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
           last_error = format('attempt %s: the worker stopped before recording an outcome (lease expired)', j.attempts),
           errors = j.errors || jsonb_build_array(jsonb_build_object(
             'attempt', j.attempts, 'at', now(),
             'error', 'lease expired: outcome unknown')),
           finished_at = case when j.attempts >= j.max_attempts then now() end,
           locked_by = null,
           locked_until = null,
           updated_at = now()
      from expired
     where j.id = expired.id
    returning j.id, j.status
  ), promoted as (
    update public.notification_jobs j
       set status = 'due', updated_at = now()
     where j.id in (
       select s.id from public.notification_jobs s
       where s.status = 'scheduled' and s.due_at <= now()
       order by s.due_at, s.id
       limit p_limit
       for update skip locked)
    returning j.id
  ), woken as (
    select id from promoted
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

comment on function public.promote_due_notification_jobs(integer) is
  'Marks scheduled jobs whose due_at has passed as due, returns expired leases to due, and notifies channel notification_jobs with each job id. Called by pg_cron job promote-due-notification-jobs and by the worker.';

-- ---------------------------------------------------------------------------
-- lead_notification_status: one row per lead, for checks in the SQL editor.
-- security_invoker: the view reads with the rights of whoever queries it, so it
-- opens nothing that the tables keep closed.
-- ---------------------------------------------------------------------------
-- Created once: later migrations add columns at the end, and a second run
-- of this file must not try to take them away.
do $view$
begin
  if to_regclass('public.lead_notification_status') is null then
    execute $sql$
create view public.lead_notification_status
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
       s.last_error as sms_error
from public.landing_leads l
left join lateral (
  select * from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'email'
  order by j.id limit 1) e on true
left join lateral (
  select * from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'sms'
  order by j.id limit 1) s on true
    $sql$;
  end if;
end
$view$;

-- ---------------------------------------------------------------------------
-- Access: RLS on, no policies, and no grants for the browser-facing roles.
-- The owner (postgres, the worker) and service_role (BYPASSRLS on Supabase)
-- keep their access. On a plain PostgreSQL the Supabase roles may not exist.
-- ---------------------------------------------------------------------------
alter table public.notification_rules enable row level security;
alter table public.notification_jobs enable row level security;
alter table public.notification_events enable row level security;

revoke all on function public.enqueue_lead_notifications() from public;
revoke all on function public.delete_lead_notifications() from public;
revoke all on function public.promote_due_notification_jobs(integer) from public;
revoke all on function public.leadrelay_email_problem(text) from public;
revoke all on function public.leadrelay_phone_digits(text) from public;
revoke all on function public.leadrelay_phone_problem(text) from public;

do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on table public.notification_rules, public.notification_jobs, '
                     'public.notification_events, public.lead_notification_status from %I', r);
      execute format('revoke all on sequence public.notification_rules_id_seq, public.notification_jobs_id_seq, '
                     'public.notification_events_id_seq from %I', r);
      execute format('revoke all on function public.enqueue_lead_notifications(), '
                     'public.delete_lead_notifications(), public.promote_due_notification_jobs(integer), '
                     'public.leadrelay_email_problem(text), public.leadrelay_phone_digits(text), '
                     'public.leadrelay_phone_problem(text) from %I', r);
    end if;
  end loop;
  if exists (select 1 from pg_roles where rolname = 'service_role') then
    grant select on public.lead_notification_status to service_role;
    grant execute on function public.promote_due_notification_jobs(integer) to service_role;
  end if;
end
$$;

-- ---------------------------------------------------------------------------
-- pg_cron: promote every 5 seconds where pg_cron >= 1.5 (Supabase ships 1.6),
-- every minute on older versions (Debian bookworm has 1.4). Without pg_cron, or
-- in a database other than cron.database_name, the worker's sweep promotes.
-- ---------------------------------------------------------------------------
do $$
declare
  v_version text;
  v_schedule text;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    if not exists (select 1 from pg_available_extensions where name = 'pg_cron') then
      raise notice 'leadrelay: pg_cron is not installed; the worker''s own sweep promotes due jobs';
      return;
    end if;
    if current_setting('cron.database_name', true) is distinct from current_database() then
      raise notice 'leadrelay: pg_cron is not loaded for database % (cron.database_name = %); the worker''s own sweep promotes due jobs',
        current_database(), coalesce(current_setting('cron.database_name', true), 'unset: pg_cron is not in shared_preload_libraries');
      return;
    end if;
    create extension pg_cron with schema pg_catalog;
  end if;

  select extversion into v_version from pg_extension where extname = 'pg_cron';
  if string_to_array(split_part(v_version, '-', 1), '.')::int[] >= array[1, 5] then
    v_schedule := '5 seconds';
  else
    v_schedule := '* * * * *';
  end if;
  -- cron.schedule with an existing job name updates that job, so a second run
  -- of this migration leaves one job.
  perform cron.schedule('promote-due-notification-jobs', v_schedule,
                        'select public.promote_due_notification_jobs()');
  raise notice 'leadrelay: pg_cron % promotes due jobs on schedule ''%''', v_version, v_schedule;
end
$$;
