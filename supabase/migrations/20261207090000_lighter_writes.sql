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
-- migrate`). landing_leads is not touched.

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

drop index concurrently if exists public.notification_jobs_recipient_idx;
