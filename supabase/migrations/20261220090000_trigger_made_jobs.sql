-- The jobs the landing's trigger writes are not checked again by the rules'
-- trigger.
--
-- The rules of a job (20261217090000_job_rules_per_statement.sql) are
-- checked after each statement that writes notification_jobs, by a
-- PL/pgSQL function over the statement's new rows. The landing's INSERT
-- runs one such statement per lead, inside its trigger, and each call cost
-- 80,000 instructions of about 1,030,000 (callgrind of 1,000 of the
-- benchmark's landing INSERTs in `postgres --single`, docs/benchmarks.md,
-- 2026-12-04): the function's call, its query and its plan's start.
--
-- It bought nothing there: every value of such a job is made by
-- enqueue_lead_notifications() itself, and keeps each rule by construction.
-- Its status is scheduled, due or invalid (an invalid job has its reason
-- and its finish time); its channel is a rule's, which notification_rules
-- holds to the three; its recipient is an address of at most 254 characters
-- or 11 digits; its reason is one of the trigger's own short texts; its
-- attempts, lease, batch, hold and policy columns are left to their
-- defaults. supabase/tests/21_job_rules_test.sql checks every job the
-- trigger writes for a set of hostile leads against every rule.
--
-- So the INSERT trigger fires only for a statement sent by a client, the
-- worker, the CLI or a function they call (pg_trigger_depth() = 0): the
-- landing's trigger is the only trigger that inserts jobs. Every UPDATE is
-- checked as before, whoever sends it.
--
-- CREATE OR REPLACE TRIGGER takes a lock on the jobs that holds the
-- landing's writes for a moment (`leadrelay migrate` gives way to them
-- while it waits, lock_timeout); running it twice replaces the same
-- trigger.

create or replace trigger notification_jobs_rules_insert
  after insert on public.notification_jobs
  referencing new table as new_jobs
  for each statement
  -- a job written by a trigger (the landing's) is made to keep the rules
  when (pg_trigger_depth() < 1)
  execute function leadrelay.notification_jobs_check_rules();

comment on trigger notification_jobs_rules_insert on public.notification_jobs is
  'The rules of a job (leadrelay.notification_jobs_check_rules()) over the new rows of each INSERT a client, the worker or the CLI sends; the jobs the landing''s trigger writes keep them by construction (20261220090000_trigger_made_jobs.sql).';
