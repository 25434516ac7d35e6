-- A job's rules, the CHECK constraints of notification_jobs: every row that
-- breaks one is refused with SQLSTATE 23514 and the name of the constraint
-- that holds that rule; every row that keeps them all is written, by any
-- role that may write the table. The net for any change to how the rules
-- are checked (docs/benchmarks.md measured one).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(23);

update notification_rules set delay = interval '1 hour', send_window_start = null, send_window_end = null;
insert into landing_leads (name, email, phone, source)
values ('Айгерим', 'aigerim@mail.ru', '+7 705 904 44 67', 'proftest_main');
create temporary table job as
select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id
 where l.email = 'aigerim@mail.ru' and j.channel = 'email';

select is((select status from notification_jobs where id = (select id from job)), 'scheduled',
          'the landing''s INSERT writes its jobs through the check');

-- Each broken rule, on the scheduled email job, and the constraint it names.
select throws_ok(
  format('update notification_jobs set %s where id = %s', change, (select id from job)),
  '23514',
  format('new row for relation "notification_jobs" violates check constraint "%s"', constraint_name),
  format('%s is refused by %s', change, constraint_name))
from (values
  ('status = ''bogus''', 'notification_jobs_status_check'),
  ('channel = ''fax''', 'notification_jobs_channel_check'),
  ('attempts = -1', 'notification_jobs_attempts_check'),
  ('max_attempts = 0', 'notification_jobs_max_attempts_check'),
  ('max_attempts = 101', 'notification_jobs_max_attempts_check'),
  ('status = ''sending'', locked_by = ''w1''', 'notification_jobs_sending_has_lease'),
  ('status = ''sent'', finished_at = now()', 'notification_jobs_sent_has_sent_at'),
  ('status = ''cancelled''', 'notification_jobs_final_has_finished_at'),
  ('status = ''failed'', finished_at = now()', 'notification_jobs_failure_has_reason'),
  ('cancelled_by = ''duplicate''', 'notification_jobs_cancelled_by_policy'),
  ('status = ''cancelled'', finished_at = now(), cancelled_by = ''whim''', 'notification_jobs_cancelled_by_policy'),
  ('failed_because = ''whim''', 'notification_jobs_failed_because_check'),
  ('sent_unconfirmed = ''409''', 'notification_jobs_sent_unconfirmed_check'),
  ('recipient = repeat(''a'', 321)', 'notification_jobs_recipient_length'),
  ('last_error = repeat(''e'', 2001)', 'notification_jobs_last_error_length'),
  ('hold_reason = repeat(''h'', 501)', 'notification_jobs_hold_reason_length'),
  ('batch_key = repeat(''b'', 257)', 'notification_jobs_batch_key_length')
) broken(change, constraint_name);

-- What keeps the rules is written: a job's whole life, each bound at its
-- limit, and the NULLs a CHECK lets through.
select lives_ok(
  format('update notification_jobs set %s where id = %s', change, (select id from job)),
  format('%s is written', change))
from (values
  ('status = ''sending'', locked_by = ''w1'', locked_until = now() + interval ''1 minute'', attempts = 1, max_attempts = 100'),
  ('status = ''sent'', sent_at = now(), finished_at = now(), sent_unconfirmed = repeat(''u'', 2000), locked_by = null, locked_until = null'),
  ('status = ''failed'', sent_unconfirmed = null, last_error = repeat(''e'', 2000), failed_because = ''in_doubt'', recipient = repeat(''a'', 320)'),
  ('status = ''cancelled'', cancelled_by = ''suppressed'', failed_because = null, hold_reason = repeat(''h'', 500), batch_key = repeat(''b'', 256)')
) kept(change);

-- A role the project lets write jobs writes them under its privileges (today's
-- Supabase grants nothing by itself): no rule needs more than the table.
create role leadrelay_t21_writer;
grant usage on schema public to leadrelay_t21_writer;
grant select, update on public.notification_jobs to leadrelay_t21_writer;
grant select on job to leadrelay_t21_writer;
-- as sql/06_worker_role.sql lets the worker's role through row security
create policy leadrelay_t21_writer_jobs on public.notification_jobs to leadrelay_t21_writer using (true) with check (true);
set local role leadrelay_t21_writer;
update notification_jobs set attempts = 2 where id = (select id from job);
reset role;
select is((select attempts from notification_jobs where id = (select id from job)), 2,
          'a role granted the table, and nothing of leadrelay''s, writes a job');

select * from finish();
rollback;
