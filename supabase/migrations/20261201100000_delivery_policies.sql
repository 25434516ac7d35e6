-- Delivery policies, as rules the marketing team sets in notification_rules:
--
-- * Send windows: `send_window_start` / `send_window_end` (local times; both
--   null = any time) in `time_zone` (an IANA name PostgreSQL knows). A job that
--   becomes due outside its rule's window stays `scheduled` and is moved to the
--   next opening, with the reason kept on the job (`held_until`,
--   `hold_reason`). The promotion decides, so the landing's INSERT costs what
--   it did; local times are converted by the time-zone database, so daylight
--   saving needs no code. A window may cross midnight (21:00–09:00).
-- * One message per person: `dedupe_window` (null = off). A job about to be
--   sent whose channel and template already went, or are in flight, to the
--   same normalised recipient is `cancelled` with the reason. "Already went"
--   means sent since `dedupe_window` before the job's lead arrived, so a
--   backfilled lead served meanwhile under another id is not served again.
-- * A cap per recipient across templates: `max_per_recipient_per_day` (null =
--   off): messages of one channel sent or in flight to one recipient in the
--   last 24 hours; the excess is `cancelled` with the reason.
--
-- Shipped on: the seeded rules get a 24-hour dedupe window and every rule a
-- cap of 3 per channel. A public form is an open door.
--
-- How two workers never both send: the worker's claim locks its due jobs
-- (`FOR UPDATE SKIP LOCKED`, as before) and, in the same statement, asks
-- leadrelay_policy_verdicts() which of them to cancel. That function takes a
-- transaction-scoped advisory lock per recipient (sorted, so two claims never
-- deadlock) and only then, in a query with a snapshot of its own, compares
-- the jobs with those already cleared (`cleared_at`): a claim that waited for
-- the lock sees what the one before it cleared. The claim clears the rest
-- and cancels the others with their reason, one write per job, before any
-- request. A cleared job counts as sent or in flight until it ends.

-- ---------------------------------------------------------------------------
-- The rules' policies.
-- ---------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from information_schema.columns
                  where table_schema = 'public' and table_name = 'notification_rules'
                    and column_name = 'dedupe_window') then
    alter table public.notification_rules
      add column send_window_start time,
      add column send_window_end time,
      add column time_zone text not null default 'Asia/Almaty',
      add column dedupe_window interval,
      add column max_per_recipient_per_day integer default 3;
    -- once, when the columns are new: an operator's later `null` stays off
    update public.notification_rules
       set dedupe_window = interval '24 hours'
     where source_pattern = 'proftest%' and template = 'proftest_result' and channel in ('email', 'sms');
  end if;
end
$$;

comment on column public.notification_rules.send_window_start is
  'Local time (in time_zone) from which this rule''s messages may be sent; with send_window_end. Both null: any time. 21:00 to 09:00 crosses midnight.';
comment on column public.notification_rules.time_zone is
  'IANA time zone of the send window, e.g. Asia/Almaty (checked against pg_timezone_names).';
comment on column public.notification_rules.dedupe_window is
  'A job whose channel and template already went (or are in flight) to the same recipient since this long before its lead arrived is cancelled. Null: off.';
comment on column public.notification_rules.max_per_recipient_per_day is
  'At most this many messages of the rule''s channel to one recipient in 24 hours, across templates; the excess is cancelled. Null: no cap.';

-- Refused when the rule is written, with a message that says why: never
-- discovered by the worker at 3 a.m.
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
-- What the jobs carry.
-- ---------------------------------------------------------------------------
alter table public.notification_jobs
  add column if not exists rule_id bigint,
  add column if not exists ignore_policies boolean not null default false,
  add column if not exists cleared_at timestamptz,
  add column if not exists held_until timestamptz,
  add column if not exists hold_reason text,
  add column if not exists cancelled_by text,
  add column if not exists duplicate_of_lead uuid;

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'notification_jobs_cancelled_by_policy') then
    alter table public.notification_jobs
      add constraint notification_jobs_cancelled_by_policy
        check (cancelled_by is null or (cancelled_by in ('duplicate', 'recipient_cap') and status = 'cancelled')),
      add constraint notification_jobs_hold_reason_length check (length(hold_reason) <= 500);
  end if;
end
$$;

comment on column public.notification_jobs.rule_id is
  'The notification_rules row that made the job (no foreign key: the landing''s INSERT must not lock the rule). Its window and policies apply.';
comment on column public.notification_jobs.ignore_policies is
  'Set by `leadrelay backfill --ignore-policies`: no window, no de-duplication, no cap.';
comment on column public.notification_jobs.cleared_at is
  'When the job passed the de-duplication and the per-recipient cap, at its first claim. From then on it counts as sent or in flight to its recipient.';
comment on column public.notification_jobs.held_until is
  'The opening of the send window the job was last moved to (it stays as a record after the job went).';
comment on column public.notification_jobs.cancelled_by is
  'duplicate or recipient_cap: a delivery policy cancelled the job before any request (the reason is in last_error).';

-- Jobs of an earlier release: the unfinished ones take their rule, and what
-- was sent or is in flight counts for the new policies.
update public.notification_jobs j
   set rule_id = r.id
  from public.landing_leads l, public.notification_rules r
 where j.rule_id is null and j.status in ('scheduled', 'due', 'sending')
   and l.id = j.lead_id and r.channel = j.channel and r.template = j.template
   and l.source like r.source_pattern;
update public.notification_jobs j
   set cleared_at = coalesce(j.sent_at, j.updated_at)
 where j.cleared_at is null and j.channel in ('email', 'sms') and j.recipient is not null
   and ((j.status = 'sent' and j.sent_at > now() - interval '31 days')
        or (j.status in ('scheduled', 'due', 'sending') and j.attempts > 0));

-- The gate's look-ups: one recipient's cleared jobs (an address compared
-- lower-cased: it is stored as typed, trimmed, and sent that way). Jobs never cleared (the
-- new ones, the cancelled, the invalid) are not in it, so an INSERT does not
-- touch it and a flood of submissions for one phone does not grow it.
create index if not exists notification_jobs_recipient_idx
  on public.notification_jobs (lower(recipient), channel, template)
  where cleared_at is not null;

-- The ops page's view of the policies at work: only cancelled jobs are in it.
create index if not exists notification_jobs_policy_cancelled_idx
  on public.notification_jobs (finished_at)
  where cancelled_by is not null;

-- ---------------------------------------------------------------------------
-- The next moment a window is open: `p_at` itself when it is inside the
-- window, else the next opening. Local dates and times are converted with
-- the zone's rules in force on that day; an opening that falls in a
-- daylight-saving gap is the instant the clocks jump to.
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
    else ((l.d + case when l.t < p_start then 0 else 1 end) + p_start) at time zone p_zone
  end
  from (select (p_at at time zone p_zone)::time as t, (p_at at time zone p_zone)::date as d) l
$$;

comment on function public.leadrelay_send_time(timestamptz, time, time, text) is
  'p_at when it is inside the local window [p_start, p_end) of zone p_zone, else the next opening.';

-- ---------------------------------------------------------------------------
-- The trigger, as in 20261129100000_recipient_checks.sql, now noting the
-- rule and leaving a job whose rule has a window `scheduled` even with no
-- delay: the promotion applies the window.
-- ---------------------------------------------------------------------------
create or replace function public.enqueue_lead_notifications()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- leadrelay_trim(), written out (see below)
  v_email text := btrim(new.email, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff');
  v_phone text := btrim(new.phone, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff');
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
      -- one expression in the common case: the format characters are
      -- refused by the shape, and named only when the shape fails
      when v_email !~ '^[^@[:space:]<>(),;:"\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]+@[^@[:space:]<>(),;:"\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]+\.[^@[:space:]<>(),;:".\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]{2,}$'
        then case when v_email ~ '[\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]'
                  then 'email contains invisible formatting characters (zero-width or direction marks)'
                  else 'email is not an address of the form name@domain.tld' end
      when v_email ~ '\.\.' then 'email has two dots in a row'
    end;
    if v_phone is null or v_phone = '' then
      v_phone_problem := 'phone is missing';
    elsif length(new.phone) > 64 then
      v_phone_problem := 'phone is longer than 64 characters';
    elsif v_phone ~ '[^0-9[:space:]()+.\-]' then
      v_phone_problem := 'phone contains characters other than digits, spaces, +, -, ( and )';
    else
      -- leadrelay_national_digits(), written out
      v_digits := regexp_replace(v_phone, '[^0-9]', '', 'g');
      if length(v_digits) = 10 and left(v_digits, 1) = '7' and left(v_phone, 1) <> '+' then
        v_digits := '7' || v_digits;
      end if;
      v_phone_problem := case
        when length(v_digits) = 0 then 'phone has no digits'
        when length(v_digits) <> 11 then format(
          'phone has %s digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)',
          length(v_digits))
        when left(v_digits, 1) not in ('7', '8') then 'phone does not start with the country code 7 (or 8)'
        -- leadrelay_is_mobile(), written out
        when not (substr(v_digits, 2, 1) = '9'
                  or (substr(v_digits, 2, 1) = '7' and substr(v_digits, 3, 1) in ('0', '4', '5', '6', '7')))
          then 'phone is not a mobile number (a landline cannot receive an SMS)'
      end;
      if v_phone_problem is null then
        v_digits := '7' || substr(v_digits, 2);
      end if;
    end if;

    with rules as (
      select r.id, r.channel, r.template, r.delay, r.send_window_start is not null as has_window,
             case r.channel
               when 'email' then v_email_problem
               when 'sms' then v_phone_problem
             end as problem
      from public.notification_rules r
      where r.enabled and new.source like r.source_pattern
    ), inserted as (
      insert into public.notification_jobs
        (lead_id, channel, template, rule_id, recipient, status, due_at, last_error, finished_at)
      select new.id, rules.channel, rules.template, rules.id,
             case
               when rules.problem is not null then null
               when rules.channel = 'email' then v_email
               when rules.channel = 'sms' then v_digits
             end,
             case
               when rules.problem is not null then 'invalid'
               -- a window is applied by the promotion, so such a job waits for it
               when rules.delay = interval '0' and not rules.has_window then 'due'
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

-- ---------------------------------------------------------------------------
-- The promotion, as in 20261130090000_sms_lookup.sql, now applying each
-- job's send window: a job due outside it stays scheduled, moved to the next
-- opening with the reason. A retried job goes through here too, so a retry
-- never goes out at night either.
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
    returning j.id, j.status
  ), ready as (
    select s.id, s.due_at, r.send_window_start, r.send_window_end, r.time_zone,
           case when s.ignore_policies or r.send_window_start is null then now()
                else public.leadrelay_send_time(now(), r.send_window_start, r.send_window_end, r.time_zone)
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
             else format('due at %s, outside the send window %s–%s %s: held until %s',
                         to_char(now() at time zone k.time_zone, 'YYYY-MM-DD HH24:MI'),
                         left(k.send_window_start::text, 5), left(k.send_window_end::text, 5), k.time_zone,
                         to_char(k.opens_at at time zone k.time_zone, 'YYYY-MM-DD HH24:MI')) end,
           updated_at = now()
      from ready k
     where j.id = k.id
    returning j.id, j.status
  ), woken as (
    select id from promoted where status = 'due'
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

comment on function public.leadrelay_policy_verdicts(bigint[]) is
  'The delivery policies'' gate (dedupe_window, max_per_recipient_per_day) for jobs the caller has locked, under an advisory lock per recipient: the jobs to cancel, with the reason. The worker''s claim applies the verdicts.';

-- ---------------------------------------------------------------------------
-- lead_notification_status, as in 20261124120000_leadrelay_core.sql, with
-- the policies' columns at the end: when a window holds a job, and which
-- jobs were cancelled as duplicates (or over the cap) and for which lead.
-- ---------------------------------------------------------------------------
create or replace view public.lead_notification_status
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
       s.last_error as sms_error,
       case when e.status = 'scheduled' and e.held_until = e.due_at then e.held_until end as email_held_until,
       e.hold_reason as email_hold_reason,
       e.cancelled_by as email_cancelled_by,
       e.duplicate_of_lead as email_duplicate_of_lead,
       case when s.status = 'scheduled' and s.held_until = s.due_at then s.held_until end as sms_held_until,
       s.hold_reason as sms_hold_reason,
       s.cancelled_by as sms_cancelled_by,
       s.duplicate_of_lead as sms_duplicate_of_lead
from public.landing_leads l
left join lateral (
  select * from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'email'
  order by j.id limit 1) e on true
left join lateral (
  select * from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'sms'
  order by j.id limit 1) s on true;

-- ---------------------------------------------------------------------------
-- Access.
-- ---------------------------------------------------------------------------
revoke all on function public.notification_rules_check_policies() from public;
revoke all on function public.leadrelay_send_time(timestamptz, time, time, text) from public;
revoke all on function public.leadrelay_policy_verdicts(bigint[]) from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on public.lead_notification_status from %I', r);
      execute format('revoke all on function public.notification_rules_check_policies(), '
                     'public.leadrelay_send_time(timestamptz, time, time, text), '
                     'public.leadrelay_policy_verdicts(bigint[]) from %I', r);
    end if;
  end loop;
  if exists (select 1 from pg_roles where rolname = 'service_role') then
    grant select on public.lead_notification_status to service_role;
  end if;
end
$$;
