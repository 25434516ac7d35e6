-- Housekeeping a real project needs. Provider webhooks are stored forever
-- otherwise (a few hundred bytes each, several per message), and pg_cron logs
-- every run of every job in cron.job_run_details (17,280 rows a day for the
-- promotion job alone at its 5-second schedule).
--
-- Pruning runs in small batches: each call deletes at most p_batch rows of
-- each table, found through the primary key in insertion order, so it never
-- scans a large table and never holds locks for long. pg_cron calls it every
-- ten minutes where it runs in this database; elsewhere the worker calls it.
--
-- Amended 2026-12-03: its two revokes from anon and authenticated are made
-- only where those roles exist (as every other file does; both in the block
-- after the function), because on a
-- PostgreSQL without Supabase's roles this file stopped `leadrelay migrate`
-- with `role "anon" does not exist`. Where it was applied the roles exist,
-- and the amended text does there exactly what the released one did.

-- ---------------------------------------------------------------------------
-- leadrelay_settings: one row of settings an operator changes with an UPDATE.
-- ---------------------------------------------------------------------------
create table if not exists public.leadrelay_settings (
  -- one row only
  id boolean primary key default true constraint leadrelay_settings_one_row check (id),
  -- provider events older than this are deleted (their effect on the job's
  -- delivery_status stays)
  event_retention interval not null default interval '180 days'
    constraint leadrelay_settings_event_retention_check check (event_retention >= interval '1 day'),
  -- pg_cron's run log older than this is deleted
  cron_history_retention interval not null default interval '7 days'
    constraint leadrelay_settings_cron_history_retention_check check (cron_history_retention >= interval '1 hour')
);
insert into public.leadrelay_settings default values on conflict (id) do nothing;

alter table public.leadrelay_settings enable row level security;

comment on table public.leadrelay_settings is
  'leadrelay''s settings (one row): event_retention (default 180 days), cron_history_retention (default 7 days). Change with UPDATE.';

-- ---------------------------------------------------------------------------
-- prune_leadrelay_history: one bounded batch of each.
-- ---------------------------------------------------------------------------
create or replace function public.prune_leadrelay_history(p_batch integer default 5000)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings public.leadrelay_settings;
  v_upto bigint;
  v_events integer := 0;
  v_cron integer := 0;
begin
  if p_batch is null or p_batch < 1 or p_batch > 100000 then
    raise exception 'p_batch must be from 1 to 100000, got %', p_batch;
  end if;
  select * into v_settings from public.leadrelay_settings where id;
  if not found then
    v_settings := row(true, interval '180 days', interval '7 days');
  end if;

  -- The oldest p_batch events by id (the primary key, in arrival order):
  -- the highest id among them that is old enough bounds the delete.
  select max(id) into v_upto
    from (select id, received_at from public.notification_events order by id limit p_batch) oldest
   where received_at < now() - v_settings.event_retention;
  if v_upto is not null then
    delete from public.notification_events
     where id <= v_upto and received_at < now() - v_settings.event_retention;
    get diagnostics v_events = row_count;
  end if;

  -- pg_cron's log, where it exists and this role may prune it.
  if to_regclass('cron.job_run_details') is not null then
    begin
      execute $sql$
        with oldest as (
          select runid, end_time from cron.job_run_details order by runid limit $1)
        delete from cron.job_run_details d
         using oldest
         where d.runid = oldest.runid and oldest.end_time < now() - $2$sql$
        using p_batch, v_settings.cron_history_retention;
      get diagnostics v_cron = row_count;
    exception when insufficient_privilege then
      v_cron := 0;
    end;
  end if;
  return jsonb_build_object('events', v_events, 'cron_runs', v_cron);
end
$$;

comment on function public.prune_leadrelay_history(integer) is
  'Deletes at most p_batch provider events older than leadrelay_settings.event_retention and at most p_batch pg_cron run-log rows older than cron_history_retention; returns the counts.';

revoke all on function public.prune_leadrelay_history(integer) from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on public.leadrelay_settings from %I', r);
      execute format('revoke all on function public.prune_leadrelay_history(integer) from %I', r);
    end if;
  end loop;
  if exists (select 1 from pg_roles where rolname = 'service_role') then
    grant execute on function public.prune_leadrelay_history(integer) to service_role;
  end if;
end
$$;

-- ---------------------------------------------------------------------------
-- Scheduled through pg_cron where it runs in this database (same test as the
-- promotion job); the worker prunes hourly when this job does not exist.
-- ---------------------------------------------------------------------------
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('prune-leadrelay-history', '*/10 * * * *',
                          'select public.prune_leadrelay_history()');
    raise notice 'leadrelay: pg_cron prunes old provider events and run logs every 10 minutes';
  else
    raise notice 'leadrelay: pg_cron is not here; the worker prunes old provider events hourly';
  end if;
end
$$;
