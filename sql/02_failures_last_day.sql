-- Everything that went wrong in the last 24 hours, newest first: jobs that
-- failed (the provider refused, or retries ran out), recipients that can never
-- work (invalid), and messages the provider could not deliver.
select j.updated_at,
       l.name,
       j.channel,
       j.status,
       j.delivery_status,
       j.attempts,
       j.last_error,             -- the provider's own words, or our reason
       j.errors                  -- every failed attempt: [{attempt, at, error}]
from public.notification_jobs j
join public.landing_leads l on l.id = j.lead_id
where j.updated_at > now() - interval '1 day'
  and (j.status in ('failed', 'invalid')
       or j.delivery_status in ('bounced', 'complained', 'failed', 'undelivered', 'rejected', 'expired', 'deleted'))
order by j.updated_at desc;
-- After fixing the cause (a wrong API key, an unverified sender domain):
--   leadrelay retry --failed-since '2026-11-24 09:00'
