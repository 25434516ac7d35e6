-- Housekeeping: pruning what is old enough to go.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

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
