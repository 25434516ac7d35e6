-- Working days in send windows: a rule's window may name the days of the
-- week it is open (notification_rules.send_days, ISO day numbers, 1 =
-- Monday … 7 = Sunday, in the rule's time zone; null = every day, so every
-- existing rule behaves as before), and the dates it is closed
-- (notification_closed_dates, one row per rule and date, managed with SQL:
-- public holidays). The gate and the promotion hold a job until the next
-- opening (Friday 21:30 → Monday 09:00); leadrelay_next_opening(rule, time)
-- answers when that is.
--
-- Kazakhstan's operators allow notification and promotional SMS on working
-- days, 09:00–21:00 local time; the seeded rules keep their windows as they
-- are (an upgrade changes nobody's sending hours): the README has the
-- UPDATE that applies the rule.
--
-- This file does not touch landing_leads; notification_rules is locked for
-- the moment a column and its CHECK are added.

alter table public.notification_rules add column if not exists send_days smallint[];
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'notification_rules_send_days_check') then
    alter table public.notification_rules add constraint notification_rules_send_days_check
      check (send_days is null
             or (cardinality(send_days) between 1 and 7 and send_days <@ '{1,2,3,4,5,6,7}'::smallint[]));
  end if;
end
$$;
comment on column public.notification_rules.send_days is
  'ISO days of the week (1 = Monday … 7 = Sunday, in time_zone) the send window is open; null: every day.';

create table if not exists public.notification_closed_dates (
  rule_id bigint not null references public.notification_rules (id) on delete cascade,
  day date not null,
  note text check (length(note) <= 200),
  primary key (rule_id, day)
);
comment on table public.notification_closed_dates is
  'Dates on which a rule''s send window stays closed (public holidays), in the rule''s time zone: insert one row per rule and date.';
alter table public.notification_closed_dates enable row level security;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on public.notification_closed_dates from %I', r);
    end if;
  end loop;
end
$$;

-- ---------------------------------------------------------------------------
-- A rule's calendar: its daily window (send_window_start/end, in time_zone),
-- the days of the week it is open (send_days, ISO: 1 = Monday … 7 = Sunday;
-- null: every day) and the dates it is closed (notification_closed_dates).
-- A moment belongs to the day its window opened: 02:00 inside a 22:00–06:00
-- window is the evening before's.
--
-- leadrelay_next_opening(rule, at): the first moment at or after `at` when
-- the rule's window is open; for a rule without a calendar, `at` itself;
-- null when no day in the next 400 is open (every day closed).
-- ---------------------------------------------------------------------------
create or replace function public.leadrelay_next_opening(p_rule_id bigint, p_at timestamptz)
returns timestamptz
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  r record;
  v_at timestamptz := p_at;
  v_open timestamptz;
  v_local timestamp;
  v_day date;
  v_start time;
  v_end time;
begin
  select n.send_window_start, n.send_window_end, n.time_zone, n.send_days into r
    from public.notification_rules n where n.id = p_rule_id;
  if not found then
    return p_at;
  end if;
  if r.send_window_start is null and r.send_days is null
     and not exists (select 1 from public.notification_closed_dates c where c.rule_id = p_rule_id) then
    return p_at;
  end if;
  -- no daily window: the whole day (leadrelay_send_time reads equal bounds
  -- as always open)
  v_start := coalesce(r.send_window_start, time '00:00');
  v_end := coalesce(r.send_window_end, time '00:00');
  for i in 1..400 loop
    v_open := public.leadrelay_send_time(v_at, v_start, v_end, r.time_zone);
    v_local := v_open at time zone r.time_zone;
    v_day := case when v_start < v_end or v_start = v_end or v_local::time >= v_start
                  then v_local::date else v_local::date - 1 end;
    if (r.send_days is null or extract(isodow from v_day)::int = any(r.send_days))
       and not exists (select 1 from public.notification_closed_dates c
                        where c.rule_id = p_rule_id and c.day = v_day) then
      return v_open;
    end if;
    -- that day is closed: the next day's opening
    v_at := ((v_day + 1) + v_start) at time zone r.time_zone;
  end loop;
  return null;
end
$$;

-- The opening the gate and the promotion hold a job until: the plain
-- window's (an SQL function, no loop) for a rule without days or closed
-- dates, leadrelay_next_opening otherwise; a rule closed for 400 days holds
-- its jobs for 400 days.
create or replace function public.leadrelay_opening(
  p_rule_id bigint, p_start time, p_end time, p_zone text, p_days smallint[], p_at timestamptz)
returns timestamptz
language sql
stable
security definer
set search_path = ''
as $$
  select case
    when p_days is null
         and not exists (select 1 from public.notification_closed_dates c where c.rule_id = p_rule_id)
      then public.leadrelay_send_time(p_at, p_start, p_end, p_zone)
    else coalesce(public.leadrelay_next_opening(p_rule_id, p_at), p_at + interval '400 days')
  end
$$;

-- ISO day numbers as names: {1,2,3,4,5} → 'Mon–Fri', {1,3} → 'Mon, Wed'.
create or replace function leadrelay.day_names(p_days smallint[])
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_days is null then 'every day'
    when p_days @> '{1,2,3,4,5}'::smallint[] and p_days <@ '{1,2,3,4,5}'::smallint[] then 'Mon–Fri'
    when p_days @> '{1,2,3,4,5,6}'::smallint[] and p_days <@ '{1,2,3,4,5,6}'::smallint[] then 'Mon–Sat'
    else (select string_agg((array['Mon','Tue','Wed','Thu','Fri','Sat','Sun'])[d], ', ' order by d)
            from (select distinct unnest(p_days)::int as d) x)
  end
$$;

-- What a hold says, in the rule's zone (the gate and the promotion).
create or replace function leadrelay.calendar_hold_reason(
  p_due timestamptz, p_start time, p_end time, p_zone text, p_days smallint[], p_opens timestamptz)
returns text
language sql
stable
set search_path = ''
as $$
  select format('due at %s, outside the send window %s %s%s: held until %s',
                to_char(p_due at time zone p_zone, 'YYYY-MM-DD HH24:MI'),
                coalesce(left(p_start::text, 5) || '–' || left(p_end::text, 5), 'all day'), p_zone,
                case when p_days is null then '' else ' on ' || leadrelay.day_names(p_days) end,
                to_char(p_opens at time zone p_zone, 'YYYY-MM-DD HH24:MI'))
$$;

revoke all on function public.leadrelay_next_opening(bigint, timestamptz) from public;
revoke all on function public.leadrelay_opening(bigint, time, time, text, smallint[], timestamptz) from public;
revoke all on function leadrelay.day_names(smallint[]) from public;
revoke all on function leadrelay.calendar_hold_reason(timestamptz, time, time, text, smallint[], timestamptz) from public;

-- ---------------------------------------------------------------------------
-- The gate, as in 20261207090000, with two changes:
--  * the suppression list first (20261209090000): a suppressed recipient's
--    job is refused (verdict 'suppressed') whatever its window or policies
--    say, --ignore-policies included;
--  * a job is held until its rule's next opening, days and closed dates
--    included.
-- ---------------------------------------------------------------------------
create or replace function public.leadrelay_gate(p_ids bigint[])
returns table (job_id bigint, verdict text, duplicate_of uuid, held_until timestamptz, reason text)
language plpgsql
volatile
security definer
set search_path = ''
-- planned once per connection, not on every claim
set plan_cache_mode = force_generic_plan
as $$
begin
  -- One recipient at a time across every worker, in one order; held until
  -- the calling claim commits its verdicts. Only the jobs the policies judge.
  perform pg_advisory_xact_lock(k.key)
  from (select distinct hashtextextended('leadrelay recipient ' || j.channel || ' '
                                         || (case when j.recipient is null then null
                                               when j.channel <> 'email' or position('@' in j.recipient) = 0 then lower(j.recipient)
                                               when lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))), '.', '') || '@gmail.com'
                                               else coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))) || '@' || lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) end), 0) as key
        from public.notification_jobs j
        left join public.notification_rules r on r.id = j.rule_id
        where j.id = any(p_ids) and j.cleared_at is null and j.channel in ('email', 'sms')
          and j.recipient is not null and not j.ignore_policies
          and (r.dedupe_window is not null or r.max_per_recipient_per_day is not null)
        order by 1) k;

  return query
  with job as (
    select j.id, j.lead_id, j.channel, j.template, j.recipient, j.cleared_at, j.ignore_policies,
           j.due_at, j.created_at,
           r.send_window_start, r.send_window_end, r.time_zone, r.send_days, r.dedupe_window,
           r.max_per_recipient_per_day as cap,
           case when j.ignore_policies or r.id is null
                     or (r.send_window_start is null and r.send_days is null
                         and not exists (select 1 from public.notification_closed_dates c where c.rule_id = r.id))
                  then now()
                else public.leadrelay_opening(r.id, r.send_window_start, r.send_window_end, r.time_zone,
                                              r.send_days, now())
           end as opens_at,
           -- the suppression list (even --ignore-policies obeys it): the
           -- recipient's key written out as in the look-up below, hashed
           (select leadrelay.suppression_reason(s.reason, s.created_at, s.note)
              from public.notification_suppressions s
             where j.channel in ('email', 'sms') and j.recipient is not null
               and s.channel = j.channel and s.lifted_at is null
               and s.recipient_hash = sha256(convert_to(j.channel || ':' || (case when j.recipient is null then null
                                               when j.channel <> 'email' or position('@' in j.recipient) = 0 then lower(j.recipient)
                                               when lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))), '.', '') || '@gmail.com'
                                               else coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))) || '@' || lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) end), 'UTF8'))
             limit 1) as suppressed
    from public.notification_jobs j
    left join public.notification_rules r on r.id = j.rule_id
    where j.id = any(p_ids)
  ), refused as (
    select j.id, 'suppressed'::text as verdict, null::uuid as duplicate_of, null::timestamptz as held_until,
           j.suppressed as reason
    from job j
    where j.suppressed is not null
  ), held as (
    select j.id, 'window'::text as verdict, null::uuid as duplicate_of, j.opens_at as held_until,
           leadrelay.calendar_hold_reason(now(), j.send_window_start, j.send_window_end, j.time_zone, j.send_days, j.opens_at) as reason
    from job j
    where j.opens_at > now() and j.suppressed is null
  ), candidate as (
    select j.id, j.lead_id, j.channel, j.template,
           (case when j.recipient is null then null
                when j.channel <> 'email' or position('@' in j.recipient) = 0 then lower(j.recipient)
                when lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))), '.', '') || '@gmail.com'
                else coalesce(nullif(split_part(lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@')))), '+', 1), ''), lower(btrim(substr(j.recipient, 1, length(j.recipient) - strpos(reverse(j.recipient), '@'))))) || '@' || lower(btrim(substr(j.recipient, length(j.recipient) - strpos(reverse(j.recipient), '@') + 2))) end) as recipient,
           j.ignore_policies or j.recipient is null as exempt,
           j.dedupe_window, j.cap,
           coalesce(l.created_at, j.created_at) as arrived
    from job j
    left join public.landing_leads l on l.id = j.lead_id
    where j.opens_at <= now() and j.cleared_at is null and j.channel in ('email', 'sms')
      and j.suppressed is null
  ), first_pass as (
    select c.*,
           row_number() over same_message as nth_same,
           first_value(c.lead_id) over same_message as first_lead,
           prior.lead_id as prior_lead, prior.at as prior_at, prior.went as prior_went
    from candidate c
    left join lateral (
      select o.lead_id, coalesce(o.sent_at, o.cleared_at) as at, o.status = 'sent' as went
      from public.notification_jobs o
      where c.dedupe_window is not null and not c.exempt
        and (case when o.recipient is null then null
                  when o.channel <> 'email' or position('@' in o.recipient) = 0 then lower(o.recipient)
                  when lower(btrim(substr(o.recipient, length(o.recipient) - strpos(reverse(o.recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@')))), '+', 1), ''), lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@'))))), '.', '') || '@gmail.com'
                  else coalesce(nullif(split_part(lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@')))), '+', 1), ''), lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@'))))) || '@' || lower(btrim(substr(o.recipient, length(o.recipient) - strpos(reverse(o.recipient), '@') + 2))) end) = c.recipient
        and o.channel = c.channel and o.template = c.template
        and o.cleared_at is not null and o.id <> c.id
        and (o.status in ('scheduled', 'due', 'sending')
             or (o.status = 'sent' and o.sent_at >= c.arrived - c.dedupe_window)
             or (o.status = 'failed' and o.outcome_unknown_since is not null
                 and o.outcome_unknown_since >= c.arrived - c.dedupe_window))
      order by o.id
      limit 1) prior on true
    window same_message as (partition by c.channel, c.template, c.recipient order by c.id)
  ), deduped as (
    select f.*,
           not f.exempt and f.dedupe_window is not null
             and (f.prior_lead is not null or f.nth_same > 1) as duplicate
    from first_pass f
  ), counted as (
    select d.*,
           row_number() over (partition by d.channel, d.recipient, d.duplicate order by d.id) as nth_recipient,
           recent.n
    from deduped d
    left join lateral (
      select count(*) as n
      from public.notification_jobs o
      where d.cap is not null and not d.exempt and not d.duplicate
        and (case when o.recipient is null then null
                  when o.channel <> 'email' or position('@' in o.recipient) = 0 then lower(o.recipient)
                  when lower(btrim(substr(o.recipient, length(o.recipient) - strpos(reverse(o.recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@')))), '+', 1), ''), lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@'))))), '.', '') || '@gmail.com'
                  else coalesce(nullif(split_part(lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@')))), '+', 1), ''), lower(btrim(substr(o.recipient, 1, length(o.recipient) - strpos(reverse(o.recipient), '@'))))) || '@' || lower(btrim(substr(o.recipient, length(o.recipient) - strpos(reverse(o.recipient), '@') + 2))) end) = d.recipient and o.channel = d.channel
        and o.cleared_at is not null and o.id <> d.id
        and (o.status in ('scheduled', 'due', 'sending')
             or (o.status = 'sent' and o.sent_at >= now() - interval '24 hours')
             or (o.status = 'failed' and o.outcome_unknown_since >= now() - interval '24 hours'))) recent on true
  ), judged as (
    select c.id,
           case when c.duplicate then 'duplicate'
                when c.cap is not null and not c.exempt and c.n + c.nth_recipient > c.cap then 'recipient_cap'
           end as verdict,
           case when c.duplicate then coalesce(c.prior_lead, c.first_lead) end as duplicate_of,
           case when c.duplicate and c.prior_went then
                  format('already sent to this recipient for lead %s at %s', c.prior_lead,
                         to_char(c.prior_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'))
                when c.duplicate then
                  format('already being sent to this recipient for lead %s (since %s)',
                         coalesce(c.prior_lead, c.first_lead),
                         to_char(coalesce(c.prior_at, now()) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'))
                else
                  format('this recipient already got %s %s message(s) in the last 24 hours (max_per_recipient_per_day = %s)',
                         greatest(c.n, least(c.n + c.nth_recipient - 1, c.cap)), c.channel, c.cap)
           end as reason
    from counted c
  )
  select s.id, s.verdict, s.duplicate_of, s.held_until, s.reason from refused s
  union all
  select h.id, h.verdict, h.duplicate_of, h.held_until, h.reason from held h
  union all
  select v.id, v.verdict, v.duplicate_of, null::timestamptz, v.reason from judged v where v.verdict is not null;
end
$$;

-- ---------------------------------------------------------------------------
-- The promotion, as in 20261207090000, likewise.
-- ---------------------------------------------------------------------------
create or replace function public.promote_due_notification_jobs(p_limit integer default 10000)
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
    where s.status = 'scheduled' and s.due_at <= now()
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
