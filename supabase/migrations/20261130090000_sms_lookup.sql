-- An SMS is never sent twice. Mobizon has no idempotency key: an attempt
-- whose answer was lost (the worker killed mid-request, a timeout after the
-- request was written, a gateway's 502/503/504, a body cut short) may have
-- been taken. Such a job now carries the moment that attempt began, and the
-- worker looks the message up at Mobizon (`service/message/list`: recipient,
-- exact text, since then) before anything is sent again. Found: the job is
-- `sent` with Mobizon's ids and `recovered_at` says a look-up found it.

alter table public.notification_jobs
  add column if not exists outcome_unknown_since timestamptz,
  add column if not exists recovered_at timestamptz,
  add column if not exists provider_campaign_id text;

comment on column public.notification_jobs.outcome_unknown_since is
  'An SMS attempt that began at this time got no answer and may have been taken by Mobizon: the next attempt looks it up first (SMS_UNKNOWN_OUTCOME). Cleared once the outcome is known.';
comment on column public.notification_jobs.recovered_at is
  'When a look-up at Mobizon found the SMS an unanswered attempt had sent: the job was recorded sent without sending again.';
comment on column public.notification_jobs.provider_campaign_id is
  'Mobizon''s campaignId of the SMS.';

-- Jobs an earlier release put back after an unanswered attempt: the rescue
-- (lease expired) and a timeout left their mark only in the error history.
update public.notification_jobs j
   set outcome_unknown_since = j.updated_at
 where j.channel = 'sms' and j.outcome_unknown_since is null
   and j.status in ('scheduled', 'due', 'failed')
   and (j.errors -> -1 ->> 'error' = 'lease expired: outcome unknown'
        or j.errors -> -1 ->> 'error' like 'mobizon: timed out%');

-- The rescue of an expired lease, as in 20261129090000_event_hardening.sql,
-- now marking an SMS whose attempt got no answer. A claim sets `updated_at`,
-- and nothing else writes a job while it is `sending`: it is when the
-- unanswered attempt began.
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
             -- the expired claim's lease token: that claim's answer, if it
             -- comes, may still be recorded while no other claim has begun
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
