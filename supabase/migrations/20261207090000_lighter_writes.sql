-- leadrelay: no-transaction
-- Lighter writes of notification_jobs: every job the landing's trigger
-- inserts, and every claim and outcome the worker writes, maintains the
-- table's indexes. Two of them cost more than they bought (measured with
-- `cargo bench --bench leadrelay`, docs/benchmarks.md):
--
--  * the failures table's index had a predicate calling
--    leadrelay_delivery_rank(), an SQL function with its own search_path,
--    which PostgreSQL cannot inline: every statement writing a job parsed
--    and planned it again (an eighth of the landing's INSERT at 8 clients).
--    The same rows, named by the failure states themselves
--    (DeliveryState::is_failure; a unit test holds this list to it);
--  * the policies' look-up by leadrelay.recipient_key(), for the same
--    reason: every claim and every outcome wrote that index through the
--    function, and the gate called it five times per job (a fifth of the
--    database's time in the processing benchmark). The index and the gate
--    now write its expression out with built-in functions only, as the
--    trigger writes its checks out; leadrelay.recipient_key() stays the
--    definition, and supabase/tests/15_recipient_lookup_test.sql holds the
--    index's expression equal to it;
--  * the policies' older look-up by lower(recipient), which the gate of
--    20261204090000 replaced. A worker of a release before that one, still
--    running during an upgrade, finds its verdicts without an index (slower,
--    not wrong) until it is restarted.
--
-- Built and dropped concurrently: the landing's INSERT never waits (a build
-- interrupted midway is dropped and built again by the next `leadrelay
-- migrate`).
--
-- landing_leads gets room on its pages for the worker's two writes of each
-- lead (the sent flags of the email and of the SMS), unless the project set
-- its own fillfactor: a write that fits on the lead's page is a HOT update,
-- which adds nothing to the table's indexes (the console's search indexes
-- among them). Only pages filled from now on keep the room. The setting
-- takes a lock that lets the landing's reads and writes through.

create index concurrently if not exists notification_jobs_failures_by_change_idx
  on public.notification_jobs (updated_at)
  where status in ('failed', 'invalid')
     or delivery_status in ('undelivered', 'rejected', 'expired', 'deleted', 'failed', 'bounced', 'suppressed', 'complained');

drop index concurrently if exists public.notification_jobs_failures_idx;

-- ---------------------------------------------------------------------------
-- The recipients as the policies compare them: leadrelay.recipient_key()
-- written out (built-in functions only, so writing a job's index entry
-- calls no SQL function). The gate below compares by the same expression.
-- ---------------------------------------------------------------------------
create index concurrently if not exists notification_jobs_recipient_lookup_idx
  on public.notification_jobs ((case when recipient is null then null
         when channel <> 'email' or position('@' in recipient) = 0 then lower(recipient)
         when lower(btrim(substr(recipient, length(recipient) - strpos(reverse(recipient), '@') + 2))) in ('gmail.com', 'googlemail.com') then replace(coalesce(nullif(split_part(lower(btrim(substr(recipient, 1, length(recipient) - strpos(reverse(recipient), '@')))), '+', 1), ''), lower(btrim(substr(recipient, 1, length(recipient) - strpos(reverse(recipient), '@'))))), '.', '') || '@gmail.com'
         else coalesce(nullif(split_part(lower(btrim(substr(recipient, 1, length(recipient) - strpos(reverse(recipient), '@')))), '+', 1), ''), lower(btrim(substr(recipient, 1, length(recipient) - strpos(reverse(recipient), '@'))))) || '@' || lower(btrim(substr(recipient, length(recipient) - strpos(reverse(recipient), '@') + 2))) end), channel, template)
  where cleared_at is not null;

-- ---------------------------------------------------------------------------
-- The gate, as in 20261204090000, with leadrelay.recipient_key() written out
-- (the same expression as the index above, over the job and over the jobs
-- it is compared with).
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
           r.send_window_start, r.send_window_end, r.time_zone, r.dedupe_window,
           r.max_per_recipient_per_day as cap,
           case when j.ignore_policies or r.send_window_start is null then now()
                else public.leadrelay_send_time(now(), r.send_window_start, r.send_window_end, r.time_zone)
           end as opens_at
    from public.notification_jobs j
    left join public.notification_rules r on r.id = j.rule_id
    where j.id = any(p_ids)
  ), held as (
    select j.id, 'window'::text as verdict, null::uuid as duplicate_of, j.opens_at as held_until,
           public.leadrelay_window_hold_reason(now(), j.send_window_start, j.send_window_end, j.time_zone, j.opens_at) as reason
    from job j
    where j.opens_at > now()
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
  select h.id, h.verdict, h.duplicate_of, h.held_until, h.reason from held h
  union all
  select v.id, v.verdict, v.duplicate_of, null::timestamptz, v.reason from judged v where v.verdict is not null;
end
$$;

drop index concurrently if exists public.notification_jobs_recipient_key_idx;

-- ---------------------------------------------------------------------------
-- The promotion, as in 20261206090000, waking the worker once per channel
-- instead of once per job: NOTIFY is only a wake-up (the worker claims what
-- is due), and promoting 10,000 jobs sent 10,000 messages to every
-- listener inside the promoting transaction.
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

drop index concurrently if exists public.notification_jobs_recipient_idx;

-- ---------------------------------------------------------------------------
-- Room for the worker's writes on the landing's pages (see the head).
-- ---------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_catalog.pg_class c, pg_catalog.unnest(coalesce(c.reloptions, '{}')) o
                 where c.oid = 'public.landing_leads'::regclass and o like 'fillfactor=%') then
    alter table public.landing_leads set (fillfactor = 80);
  end if;
exception when insufficient_privilege then
  raise notice 'landing_leads keeps its fillfactor: % (only its owner may set it)', sqlerrm;
end
$$;
