-- Is pg_cron promoting due jobs? The job and its last runs. On Supabase
-- (pg_cron 1.6) it runs every 5 seconds; on pg_cron 1.4, every minute.
-- Without pg_cron these tables do not exist: the worker promotes by itself.
select jobid, jobname, schedule, command, active
from cron.job
where jobname = 'promote-due-notification-jobs';

select d.start_time,
       d.end_time - d.start_time as took,
       d.status,                 -- succeeded or failed
       d.return_message          -- for a failure, PostgreSQL's error
from cron.job_run_details d
join cron.job j using (jobid)
where j.jobname = 'promote-due-notification-jobs'
order by d.start_time desc
limit 20;
-- job_run_details grows forever; Supabase recommends pruning it, e.g.:
--   select cron.schedule('prune-cron-history', '0 3 * * *',
--     $$delete from cron.job_run_details where end_time < now() - interval '7 days'$$);
