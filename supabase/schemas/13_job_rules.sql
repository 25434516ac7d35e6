-- A job's rules: checked once per statement over its new rows.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database. The
-- function is written by its migration
-- (20261217090000_job_rules_per_statement.sql) from one list of the rules,
-- which are the former CHECK constraints of notification_jobs by their
-- names; this is the text it writes.

-- ---------------------------------------------------------------------------
-- A statement that writes a job breaking a rule fails as the constraint
-- did: SQLSTATE 23514, PostgreSQL's message, the rule's name as the
-- constraint; nothing of it is written. The common case asks one OR of the
-- rules; only a broken statement asks which rule.
-- ---------------------------------------------------------------------------
create or replace function leadrelay.notification_jobs_check_rules()
returns trigger
language plpgsql
set search_path = ''
as $body$
-- Written by supabase/migrations/20261217090000_job_rules_per_statement.sql
-- from its list of the rules; the triggers notification_jobs_rules_insert
-- and notification_jobs_rules_update call it after each statement.
declare
  v_broken text;
begin
  perform from new_jobs j
    where (j.attempts >= 0) is false
      or (length(j.batch_key) <= 256) is false
      or (j.cancelled_by is null or (j.cancelled_by in ('duplicate', 'recipient_cap', 'suppressed') and j.status = 'cancelled')) is false
      or (j.channel in ('email', 'sms', 'lead_tracking')) is false
      or (j.failed_because in ('contact', 'content', 'provider', 'attempts', 'in_doubt')) is false
      or (j.status not in ('failed', 'invalid') or j.last_error is not null) is false
      or (j.status not in ('sent', 'failed', 'invalid', 'cancelled') or j.finished_at is not null) is false
      or (length(j.hold_reason) <= 500) is false
      or (length(j.last_error) <= 2000) is false
      or (j.max_attempts between 1 and 100) is false
      or (length(j.recipient) <= 320) is false
      or (j.status <> 'sending' or (j.locked_by is not null and j.locked_until is not null)) is false
      or (j.status <> 'sent' or j.sent_at is not null) is false
      or (j.sent_unconfirmed is null or (j.status = 'sent' and length(j.sent_unconfirmed) <= 2000)) is false
      or (j.status in ('scheduled', 'due', 'sending', 'sent', 'failed', 'invalid', 'cancelled')) is false
    limit 1;
  if not found then
    return null;
  end if;
  select case
      when (j.attempts >= 0) is false then 'notification_jobs_attempts_check'
      when (length(j.batch_key) <= 256) is false then 'notification_jobs_batch_key_length'
      when (j.cancelled_by is null or (j.cancelled_by in ('duplicate', 'recipient_cap', 'suppressed') and j.status = 'cancelled')) is false then 'notification_jobs_cancelled_by_policy'
      when (j.channel in ('email', 'sms', 'lead_tracking')) is false then 'notification_jobs_channel_check'
      when (j.failed_because in ('contact', 'content', 'provider', 'attempts', 'in_doubt')) is false then 'notification_jobs_failed_because_check'
      when (j.status not in ('failed', 'invalid') or j.last_error is not null) is false then 'notification_jobs_failure_has_reason'
      when (j.status not in ('sent', 'failed', 'invalid', 'cancelled') or j.finished_at is not null) is false then 'notification_jobs_final_has_finished_at'
      when (length(j.hold_reason) <= 500) is false then 'notification_jobs_hold_reason_length'
      when (length(j.last_error) <= 2000) is false then 'notification_jobs_last_error_length'
      when (j.max_attempts between 1 and 100) is false then 'notification_jobs_max_attempts_check'
      when (length(j.recipient) <= 320) is false then 'notification_jobs_recipient_length'
      when (j.status <> 'sending' or (j.locked_by is not null and j.locked_until is not null)) is false then 'notification_jobs_sending_has_lease'
      when (j.status <> 'sent' or j.sent_at is not null) is false then 'notification_jobs_sent_has_sent_at'
      when (j.sent_unconfirmed is null or (j.status = 'sent' and length(j.sent_unconfirmed) <= 2000)) is false then 'notification_jobs_sent_unconfirmed_check'
      when (j.status in ('scheduled', 'due', 'sending', 'sent', 'failed', 'invalid', 'cancelled')) is false then 'notification_jobs_status_check'
    end
    into v_broken
    from new_jobs j
    where (j.attempts >= 0) is false
      or (length(j.batch_key) <= 256) is false
      or (j.cancelled_by is null or (j.cancelled_by in ('duplicate', 'recipient_cap', 'suppressed') and j.status = 'cancelled')) is false
      or (j.channel in ('email', 'sms', 'lead_tracking')) is false
      or (j.failed_because in ('contact', 'content', 'provider', 'attempts', 'in_doubt')) is false
      or (j.status not in ('failed', 'invalid') or j.last_error is not null) is false
      or (j.status not in ('sent', 'failed', 'invalid', 'cancelled') or j.finished_at is not null) is false
      or (length(j.hold_reason) <= 500) is false
      or (length(j.last_error) <= 2000) is false
      or (j.max_attempts between 1 and 100) is false
      or (length(j.recipient) <= 320) is false
      or (j.status <> 'sending' or (j.locked_by is not null and j.locked_until is not null)) is false
      or (j.status <> 'sent' or j.sent_at is not null) is false
      or (j.sent_unconfirmed is null or (j.status = 'sent' and length(j.sent_unconfirmed) <= 2000)) is false
      or (j.status in ('scheduled', 'due', 'sending', 'sent', 'failed', 'invalid', 'cancelled')) is false
    limit 1;
  raise exception using
    errcode = 'check_violation',
    message = format('new row for relation "notification_jobs" violates check constraint "%s"', v_broken),
    constraint = v_broken,
    schema = 'public',
    table = 'notification_jobs';
end
$body$;

-- not for the jobs a trigger writes (the landing's, which keep the rules by
-- construction: 20261220090000_trigger_made_jobs.sql)
create or replace trigger notification_jobs_rules_insert
  after insert on public.notification_jobs
  referencing new table as new_jobs
  for each statement
  when (pg_trigger_depth() < 1)
  execute function leadrelay.notification_jobs_check_rules();

create or replace trigger notification_jobs_rules_update
  after update on public.notification_jobs
  referencing new table as new_jobs
  for each statement execute function leadrelay.notification_jobs_check_rules();
