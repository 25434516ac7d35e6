-- Delivery policies: a rule's send window, its check, and the gate every
-- path that puts a message on its way passes (window, one message per
-- person, the recipient cap).
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

-- ---------------------------------------------------------------------------
-- Rules: a time zone of the Etc/GMT±N family reads backwards (POSIX: Etc/GMT-5
-- is UTC+5), so someone who meant Kazakhstan's UTC+5 and wrote Etc/GMT+5 gets
-- a window ten hours off. Refused with the name to use.
-- ---------------------------------------------------------------------------
create or replace function public.notification_rules_check_policies()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' or new.time_zone is distinct from old.time_zone then
    if new.time_zone is null
       or not exists (select 1 from pg_catalog.pg_timezone_names z where z.name = new.time_zone) then
      raise exception 'notification_rules: time_zone % is not a time zone PostgreSQL knows',
        coalesce(quote_literal(new.time_zone), 'null')
        using errcode = 'check_violation',
              hint = 'Use a name from pg_timezone_names such as Asia/Almaty or Europe/Berlin. Offsets and abbreviations (+05, ALMT) are refused: daylight saving must come from the time-zone database.';
    end if;
    if new.time_zone ~* '^(etc/)?gmt[+-][0-9]' then
      raise exception 'notification_rules: time_zone % reads backwards: % is UTC%',
        quote_literal(new.time_zone), new.time_zone,
        case when new.time_zone like '%+%' then '−' else '+' end || regexp_replace(new.time_zone, '^.*[+-]', '')
        using errcode = 'check_violation',
              hint = 'POSIX zones name the offset with the sign reversed. Use the name of a place: Asia/Almaty for Kazakhstan (UTC+5).';
    end if;
  end if;
  if (new.send_window_start is null) <> (new.send_window_end is null) then
    raise exception 'notification_rules: send_window_start and send_window_end are set together (% and %)',
      coalesce(new.send_window_start::text, 'null'), coalesce(new.send_window_end::text, 'null')
      using errcode = 'check_violation',
            hint = 'Set both to local times (21:00 to 09:00 crosses midnight), or both to null to send at any time.';
  end if;
  if new.send_window_start = new.send_window_end then
    raise exception 'notification_rules: send_window_start equals send_window_end (%): the window would be empty or the whole day',
      new.send_window_start
      using errcode = 'check_violation',
            hint = 'Set both to null to send at any time.';
  end if;
  if new.dedupe_window is not null
     and (new.dedupe_window <= interval '0' or new.dedupe_window > interval '30 days') then
    raise exception 'notification_rules: dedupe_window % must be longer than 0 and at most 30 days', new.dedupe_window
      using errcode = 'check_violation',
            hint = 'Null turns de-duplication off.';
  end if;
  if new.max_per_recipient_per_day is not null and new.max_per_recipient_per_day not between 1 and 1000 then
    raise exception 'notification_rules: max_per_recipient_per_day % must be between 1 and 1000', new.max_per_recipient_per_day
      using errcode = 'check_violation',
            hint = 'Null removes the cap.';
  end if;
  return new;
end
$$;

create or replace trigger notification_rules_check_policies
  before insert or update on public.notification_rules
  for each row execute function public.notification_rules_check_policies();

-- ---------------------------------------------------------------------------
-- The send window's opening at or after p_at. An opening inside a
-- daylight-saving gap (02:30 on the night the clocks jump from 02:00 to
-- 03:00) is the jump itself.
-- ---------------------------------------------------------------------------
create or replace function public.leadrelay_send_time(p_at timestamptz, p_start time, p_end time, p_zone text)
returns timestamptz
language sql
stable
set search_path = ''
as $$
  select case
    when p_start is null or p_end is null then p_at
    when case when p_start < p_end then l.t >= p_start and l.t < p_end
              else l.t >= p_start or l.t < p_end end then p_at
    when (o.naive at time zone p_zone) at time zone p_zone = o.naive then o.naive at time zone p_zone
    -- the local time does not exist that day: the first minute at or after
    -- which the clock reads at least the opening is the jump
    else (select min(m) from pg_catalog.generate_series(
            (o.naive at time zone p_zone) - interval '3 hours', o.naive at time zone p_zone, interval '1 minute') m
          where (m at time zone p_zone) >= o.naive)
  end
  from (select (p_at at time zone p_zone)::time as t, (p_at at time zone p_zone)::date as d) l,
       lateral (select (l.d + case when l.t < p_start then 0 else 1 end) + p_start as naive) o
$$;

-- What a hold says, in the rule's zone (the promotion writes the same).
create or replace function public.leadrelay_window_hold_reason(
  p_due timestamptz, p_start time, p_end time, p_zone text, p_opens timestamptz)
returns text
language sql
stable
set search_path = ''
as $$
  select format('due at %s, outside the send window %s–%s %s: held until %s',
                to_char(p_due at time zone p_zone, 'YYYY-MM-DD HH24:MI'),
                left(p_start::text, 5), left(p_end::text, 5), p_zone,
                to_char(p_opens at time zone p_zone, 'YYYY-MM-DD HH24:MI'))
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

-- ---------------------------------------------------------------------------
-- When a send window holds a job: it waits (`scheduled`) exactly until the
-- opening the promotion chose for it. Null when it is not held.
-- ---------------------------------------------------------------------------
create or replace function leadrelay.held_until(p_status text, p_held_until timestamptz, p_due_at timestamptz)
returns timestamptz
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when p_status = 'scheduled' and p_held_until = p_due_at then p_held_until end
$$;

-- ---------------------------------------------------------------------------
-- The gate. For jobs p_ids, which the caller (a claim) has locked and applies
-- the verdicts to in the same statement:
--  * 'window': outside its rule's send window (every job, whatever path
--    made it due, unless it ignores policies): back to waiting until
--    held_until, with the reason;
--  * 'duplicate', 'recipient_cap': for a job inside its window that has not
--    passed the policies since it was last put on its way (`cleared_at` is
--    null: a first send, or a retry, which clears it), compared under a lock
--    per recipient with the jobs that count as sent or in flight to that
--    person (cleared and scheduled, due, sending, sent in the window, or
--    failed with an outcome that may have reached the person);
-- and nothing for a job that may go. Recipients are compared by
-- leadrelay.recipient_key(), written out with built-in functions (the
-- expression of notification_jobs_recipient_lookup_idx): a call of an SQL
-- function with its own search_path is not inlined, and cost a fifth of the
-- database's time when the gate made five per job (20261207090000).
--
-- VOLATILE on purpose: each query below takes its own snapshot, so the
-- second one sees every claim that committed while the first waited for the
-- recipients' locks. leadrelay_policy_verdicts() stays for workers of the
-- release before this one, during an upgrade.
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
-- The gate's verdicts on jobs p_ids, which the caller has locked (the
-- worker's claim, `FOR UPDATE SKIP LOCKED`) and applies in the same
-- statement: one write per job. The jobs never cleared get a verdict;
-- returned are those a policy cancels, with the policy, the lead that
-- already got the message (for a duplicate) and the reason.
--
-- VOLATILE on purpose: each query below takes its own snapshot, so the
-- second one sees every claim that committed while the first waited for
-- the recipients' locks, though the calling statement began before.
-- ---------------------------------------------------------------------------
create or replace function public.leadrelay_policy_verdicts(p_ids bigint[])
returns table (job_id bigint, policy text, duplicate_of uuid, reason text)
language plpgsql
volatile
security definer
set search_path = ''
-- planned once per connection, not on every claim: planning this statement
-- costs more than running it
set plan_cache_mode = force_generic_plan
as $$
begin
  -- One recipient at a time across every worker, in one order; held until
  -- the calling claim commits its verdicts.
  perform pg_advisory_xact_lock(k.key)
  from (select distinct hashtextextended('leadrelay recipient ' || j.channel || ' ' || lower(j.recipient), 0) as key
        from public.notification_jobs j
        where j.id = any(p_ids) and j.cleared_at is null and j.channel in ('email', 'sms')
          and j.recipient is not null and not j.ignore_policies
        order by 1) k;

  return query
  with candidate as (
    select j.id, j.lead_id, j.channel, j.template, lower(j.recipient) as recipient,
           j.ignore_policies or j.recipient is null as exempt,
           r.dedupe_window, r.max_per_recipient_per_day as cap,
           coalesce(l.created_at, j.created_at) as arrived
    from public.notification_jobs j
    left join public.notification_rules r on r.id = j.rule_id
    left join public.landing_leads l on l.id = j.lead_id
    where j.id = any(p_ids) and j.cleared_at is null and j.channel in ('email', 'sms')
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
        and lower(o.recipient) = c.recipient and o.channel = c.channel and o.template = c.template
        and o.cleared_at is not null and o.id <> c.id
        and (o.status in ('scheduled', 'due', 'sending')
             or (o.status = 'sent' and o.sent_at >= c.arrived - c.dedupe_window))
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
        and lower(o.recipient) = d.recipient and o.channel = d.channel
        and o.cleared_at is not null and o.id <> d.id
        and (o.status in ('scheduled', 'due', 'sending')
             or (o.status = 'sent' and o.sent_at >= now() - interval '24 hours'))) recent on true
  ), verdict as (
    select c.id,
           case when c.duplicate then 'duplicate'
                when c.cap is not null and not c.exempt and c.n + c.nth_recipient > c.cap then 'recipient_cap'
           end as policy,
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
  select v.id, v.policy, v.duplicate_of, v.reason from verdict v where v.policy is not null;
end
$$;
