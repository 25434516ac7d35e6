-- Jobs that should have gone out more than two minutes ago. Any row here means
-- the worker (`leadrelay serve`) is down or stuck: nothing else delays a due
-- message that long. Check `systemctl status leadrelay` and GET /readyz.
select j.id as job_id,
       j.lead_id,
       j.channel,
       j.status,
       j.due_at,
       now() - j.due_at as late_by,
       j.attempts,
       j.last_error
from public.notification_jobs j
where j.status in ('scheduled', 'due') and j.due_at < now() - interval '2 minutes'
order by j.due_at
limit 200;

-- Jobs held by a worker longer than their lease: a crashed worker. They come
-- back by themselves at the next promotion (pg_cron or any running worker).
select id as job_id, lead_id, channel, locked_by, locked_until, now() - locked_until as expired_for
from public.notification_jobs
where status = 'sending' and locked_until < now()
order by locked_until;
