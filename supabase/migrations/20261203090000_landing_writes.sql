-- leadrelay: no-transaction
-- The landing's writes: they never fail because of leadrelay, and never wait
-- for it.
--
-- The rule every migration that touches landing_leads keeps: nothing
-- leadrelay adds to the landing's table (trigger, index, constraint, policy,
-- default, generated column) may depend on a privilege the writing role
-- might lack, or fail for any row content. Whoever writes the table
-- (service_role through PostgREST, anon or authenticated under an RLS
-- policy, the owner, a role of the project's own) writes exactly as before
-- leadrelay, under Supabase's old default privileges and under today's (no
-- automatic grants), and on a PostgreSQL without Supabase's roles.
--
-- Why it needs stating: PostgreSQL evaluates an index expression, a partial
-- index's predicate, a CHECK constraint, a column default, a generated
-- column and an RLS policy with the privileges of the role writing the row.
-- A trigger is different: EXECUTE on its function is checked once, when the
-- trigger is created, and a SECURITY DEFINER function runs as its owner, so
-- the enqueue trigger runs whoever inserts. The console's email index called
-- public.leadrelay_trim(), whose EXECUTE the migrations revoke from PUBLIC
-- (it is not an API endpoint): on a project created under today's default,
-- where service_role is granted nothing automatically, every INSERT and
-- UPDATE of a lead failed with "permission denied for function
-- leadrelay_trim". supabase/tests/13_landing_writes_test.sql checks every
-- object on landing_leads for a function the writer would need to execute.
--
-- This file runs outside a transaction (its first line), one statement at a
-- time, so each index on a table the landing's INSERT writes (landing_leads,
-- and notification_jobs through the trigger) is built CONCURRENTLY: the
-- landing's writes go on during the build. Every statement can run twice;
-- `leadrelay migrate` drops and builds again an index an interrupted build
-- left invalid. `leadrelay migrations export` writes it for the Supabase
-- CLI, which runs a file in one transaction, without CONCURRENTLY.

-- ---------------------------------------------------------------------------
-- What a write of landing_leads evaluates with the writer's privileges:
-- every function (an operator's included) that an index expression or
-- predicate, a constraint, a default or generated column, a policy or a
-- trigger's WHEN condition calls, beside what calls it. Built-in functions
-- have no dependency rows (they are pinned) and are executable by every
-- role. `leadrelay doctor` checks these against LANDING_ROLE; pgTAP checks
-- them against PUBLIC. In schema leadrelay, which the API does not expose.
-- ---------------------------------------------------------------------------
create schema if not exists leadrelay;
create or replace function leadrelay.landing_write_functions()
returns table (evaluated_by text, fn regprocedure)
language sql
stable
set search_path = ''
as $$
  with deps as (
    select 'index ' || i.indexrelid::regclass::text as what, d.refclassid, d.refobjid
      from pg_catalog.pg_index i
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_class'::regclass and d.objid = i.indexrelid
     where i.indrelid = 'public.landing_leads'::regclass
    union all
    select 'constraint ' || c.conname, d.refclassid, d.refobjid
      from pg_catalog.pg_constraint c
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_constraint'::regclass and d.objid = c.oid
     where c.conrelid = 'public.landing_leads'::regclass
    union all
    select 'default of ' || a.attname, d.refclassid, d.refobjid
      from pg_catalog.pg_attrdef ad
      join pg_catalog.pg_attribute a on a.attrelid = ad.adrelid and a.attnum = ad.adnum
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_attrdef'::regclass and d.objid = ad.oid
     where ad.adrelid = 'public.landing_leads'::regclass
    union all
    select 'policy ' || p.polname, d.refclassid, d.refobjid
      from pg_catalog.pg_policy p
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_policy'::regclass and d.objid = p.oid
     where p.polrelid = 'public.landing_leads'::regclass
    union all
    -- a trigger's own function is checked when the trigger is created, not
    -- when it fires; only its WHEN condition is evaluated as the writer
    select 'trigger ' || t.tgname, d.refclassid, d.refobjid
      from pg_catalog.pg_trigger t
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_trigger'::regclass and d.objid = t.oid
     where t.tgrelid = 'public.landing_leads'::regclass and not t.tgisinternal
       and not (d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = t.tgfoid)
  )
  select deps.what, f.oid::regprocedure
    from deps
    join pg_catalog.pg_proc f
      on (deps.refclassid = 'pg_catalog.pg_proc'::regclass and f.oid = deps.refobjid)
      or (deps.refclassid = 'pg_catalog.pg_operator'::regclass
          and f.oid = (select o.oprcode::oid from pg_catalog.pg_operator o where o.oid = deps.refobjid))
   order by 1, 2
$$;

-- ---------------------------------------------------------------------------
-- landing_leads: the console's search. Built-in functions only.
-- ---------------------------------------------------------------------------
create index concurrently if not exists landing_leads_created_at_idx
  on public.landing_leads (created_at);

-- The email as the recipient checks compare it: lower-cased, every kind of
-- white space trimmed. The character set is leadrelay_trim()'s, written out
-- (btrim and lower are built in, executable by every role); pgTAP checks the
-- two agree, and the console's search names this same expression.
create index concurrently if not exists landing_leads_email_lookup_idx
  on public.landing_leads (lower(btrim(email, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff')));

-- The released console's index on leadrelay_trim(), where it was built.
drop index concurrently if exists public.landing_leads_email_search_idx;

-- The digits as typed (the search checks each candidate with the normaliser).
create index concurrently if not exists landing_leads_phone_search_idx
  on public.landing_leads (regexp_replace(phone, '[^0-9]', '', 'g'));

-- A fragment of the name, through trigrams: the operator class lives in the
-- schema pg_trgm was installed in (`extensions` on Supabase), which this
-- session puts on its search_path for the one build.
select pg_catalog.set_config('search_path',
  'public, ' || (select pg_catalog.quote_ident(n.nspname)
                   from pg_catalog.pg_extension e
                   join pg_catalog.pg_namespace n on n.oid = e.extnamespace
                  where e.extname = 'pg_trgm'),
  false);
create index concurrently if not exists landing_leads_name_trgm_idx
  on public.landing_leads using gin (name gin_trgm_ops);
select pg_catalog.set_config('search_path', 'public', false);

-- ---------------------------------------------------------------------------
-- notification_jobs (written by the landing's INSERT, through the trigger)
-- and notification_events: the console's and /metrics' reads, each a range
-- of a small or partial index.
-- ---------------------------------------------------------------------------
-- Failed and invalid jobs: the queue chart and the job gauges count them by
-- channel (an index-only scan), `leadrelay retry --failed-since` walks them.
create index concurrently if not exists notification_jobs_failed_idx
  on public.notification_jobs (channel, status, finished_at)
  where status in ('failed', 'invalid');

-- The failures table: failed jobs and delivery failures, by last change.
-- (notification_jobs is written only by leadrelay's SECURITY DEFINER
-- functions and its worker, both of which may execute the rank.)
create index concurrently if not exists notification_jobs_failures_idx
  on public.notification_jobs (updated_at)
  where status in ('failed', 'invalid') or public.leadrelay_delivery_rank(delivery_status) >= 60;

-- Sent, delivered, opened and clicked per hour (48 hours) and in the funnel
-- (7 days): an index-only scan, the heap is not read.
create index concurrently if not exists notification_jobs_sent_at_idx
  on public.notification_jobs (sent_at) include (channel, delivery_status)
  where sent_at is not null;

-- SMS found by a look-up, and those still in doubt.
create index concurrently if not exists notification_jobs_recovered_idx
  on public.notification_jobs (recovered_at)
  where recovered_at is not null;
create index concurrently if not exists notification_jobs_in_doubt_idx
  on public.notification_jobs (id)
  where channel = 'sms' and outcome_unknown_since is not null and status <> 'sent';

-- A lead's page: each job's delivery events.
create index concurrently if not exists notification_events_job_idx
  on public.notification_events (job_id, id)
  where job_id is not null;
