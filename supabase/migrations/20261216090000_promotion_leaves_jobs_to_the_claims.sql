-- leadrelay: no-transaction
-- The promotion leaves to the claims the jobs they take as they are.
--
-- A worker's claim takes a scheduled job whose moment has passed as it is,
-- and the sweeper's timer wakes the lanes at that moment. But the sweeper
-- promoted at once as well, and pg_cron on its own ticks: a burst of jobs
-- due at one moment was written twice, and the promotion's row locks made
-- the lanes' claims (FOR UPDATE SKIP LOCKED) pass over the very jobs they
-- were woken for. In the processing benchmark (10,000 jobs due at one
-- moment) one promotion took 9,240 of them in one statement of 275 ms while
-- the lanes waited for its commit (docs/benchmarks.md, 2026-12-02).
--
-- The two-argument form leaves alone, for p_left_to_claims after its
-- moment, a job the plain claim takes as it is; the members of an email
-- batch are promoted at their moment as before (a batch is claimed again
-- only once due). Expired leases are rescued at once, as before. The
-- worker's sweep and pg_cron call it with one minute (PROMOTE in
-- src/store/queue/sweep.rs; a test holds pg_cron's command to it); the
-- one-argument form promotes every job past its moment, as before, for
-- operators, tests and a worker of the release before this one during an
-- upgrade.
--
-- The batch members' look-up gets its own small index, built concurrently:
-- the landing's INSERT never waits.

create index concurrently if not exists notification_jobs_scheduled_batches_idx
  on public.notification_jobs (due_at, id)
  where status = 'scheduled' and batch_key is not null;

create or replace function public.promote_due_notification_jobs(p_limit integer, p_left_to_claims interval)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_promoted integer := 0;
  v_channels text[];
  v_channel text;
begin
  if p_left_to_claims is null or p_left_to_claims < interval '0' then
    raise exception 'promote_due_notification_jobs: p_left_to_claims must be an interval of zero or more, not %',
      coalesce(p_left_to_claims::text, 'null')
      using errcode = '22023';
  end if;
  with expired as (
    select j.id from public.notification_jobs j
    where j.status = 'sending' and j.locked_until < now()
    order by j.locked_until
    limit p_limit
    for update skip locked
  ), rescued as (
    update public.notification_jobs j
       set status = case when j.attempts >= j.max_attempts then 'failed' else 'due' end,
           failed_because = case when j.attempts >= j.max_attempts then 'attempts' end,
           last_error = format('attempt %s: the worker stopped before recording an outcome (lease expired)', j.attempts),
           errors = j.errors || jsonb_build_array(jsonb_build_object(
             'attempt', j.attempts, 'at', now(),
             'error', 'lease expired: outcome unknown',
             'lock', j.locked_by)),
           outcome_unknown_since = case when j.channel = 'sms'
                                        then least(j.outcome_unknown_since, j.updated_at)
                                        else j.outcome_unknown_since end,
           finished_at = case when j.attempts >= j.max_attempts then now() end,
           locked_by = null,
           locked_until = null,
           updated_at = now()
      from expired
     where j.id = expired.id
    returning j.id, j.status, j.channel
  ), ready as (
    select s.id, s.due_at, r.send_window_start, r.send_window_end, r.time_zone, r.send_days,
           case when s.ignore_policies or r.id is null
                     or (r.send_window_start is null and r.send_days is null
                         and not exists (select 1 from public.notification_closed_dates c where c.rule_id = r.id))
                  then now()
                else public.leadrelay_opening(r.id, r.send_window_start, r.send_window_end, r.time_zone,
                                              r.send_days, now())
           end as opens_at
    from public.notification_jobs s
    left join public.notification_rules r on r.id = s.rule_id
    where s.id = any(array(
            -- past their moment for longer than the claims are left
            (select o.id from public.notification_jobs o
              where o.status = 'scheduled' and o.due_at <= now() - p_left_to_claims
              order by o.due_at, o.id limit p_limit)
            union all
            -- the members of an email batch: only a promoted batch is
            -- claimed again (CLAIM_BATCHES), so they go at their moment
            (select b.id from public.notification_jobs b
              where b.status = 'scheduled' and b.batch_key is not null and b.due_at <= now()
                and b.due_at > now() - p_left_to_claims
              order by b.due_at, b.id limit p_limit)))
      and s.status = 'scheduled' and s.due_at <= now()
    order by s.due_at, s.id
    limit p_limit
    for update of s skip locked
  ), promoted as (
    update public.notification_jobs j
       set status = case when k.opens_at <= now() then 'due' else 'scheduled' end,
           due_at = case when k.opens_at <= now() then j.due_at else k.opens_at end,
           held_until = case when k.opens_at <= now() then j.held_until else k.opens_at end,
           hold_reason = case when k.opens_at <= now() then j.hold_reason
             else leadrelay.calendar_hold_reason(now(), k.send_window_start, k.send_window_end, k.time_zone,
                                                 k.send_days, k.opens_at) end,
           updated_at = now()
      from ready k
     where j.id = k.id
    returning j.id, j.status, j.channel
  ), woken as (
    select channel from promoted where status = 'due'
    union all
    select channel from rescued where status = 'due'
  )
  select count(*)::int, array_agg(distinct w.channel) into v_promoted, v_channels from woken w;
  -- One wake-up per channel that has new due jobs, its name as the payload:
  -- NOTIFY only wakes the worker (which claims what is due), and one per job
  -- cost a message per job to every listener.
  foreach v_channel in array coalesce(v_channels, '{}') loop
    perform pg_notify('notification_jobs', v_channel);
  end loop;

  return v_promoted;
end
$$;

-- Every job past its moment, as before.
create or replace function public.promote_due_notification_jobs(p_limit integer default 10000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
begin
  return public.promote_due_notification_jobs(p_limit, interval '0');
end
$$;

comment on function public.promote_due_notification_jobs(integer, interval) is
  'Rescues expired leases and marks as due the scheduled jobs past their moment for longer than p_left_to_claims (the members of an email batch at their moment), waking the worker once per channel. The worker''s sweep and pg_cron job promote-due-notification-jobs call it with one minute: a worker''s claims take the others as they are.';
comment on function public.promote_due_notification_jobs(integer) is
  'Rescues expired leases and marks every scheduled job past its moment as due, waking the worker once per channel (promote_due_notification_jobs(p_limit, interval ''0'')).';

do $$
declare
  r text;
begin
  revoke all on function public.promote_due_notification_jobs(integer, interval) from public;
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function public.promote_due_notification_jobs(integer, interval) from %I', r);
    end if;
  end loop;
end
$$;

-- pg_cron's job, where the migrations scheduled it, keeps its schedule and
-- takes the new command (cron.schedule with an existing name updates it).
do $$
declare
  v_schedule text;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    return;
  end if;
  select j.schedule into v_schedule from cron.job j
   where j.jobname = 'promote-due-notification-jobs' and j.database = current_database();
  if v_schedule is not null then
    perform cron.schedule('promote-due-notification-jobs', v_schedule,
                          'select public.promote_due_notification_jobs(10000, interval ''1 minute'')');
  end if;
end
$$;
