-- A job's rules (once the CHECK constraints of notification_jobs, now
-- leadrelay.notification_jobs_check_rules() after each statement,
-- 20261217090000_job_rules_per_statement.sql): every row that breaks one is
-- refused with SQLSTATE 23514 and the name of the constraint that held that
-- rule, and its statement writes nothing; every row that keeps them all is
-- written, by any role that may write the table. The net for any change to
-- how the rules are checked (docs/benchmarks.md measured several).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(33);

update notification_rules set delay = interval '1 hour', send_window_start = null, send_window_end = null;
insert into landing_leads (name, email, phone, source)
values ('Айгерим', 'aigerim@mail.ru', '+7 705 904 44 67', 'proftest_main');
create temporary table job as
select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id
 where l.email = 'aigerim@mail.ru' and j.channel = 'email';

select is((select status from notification_jobs where id = (select id from job)), 'scheduled',
          'the landing''s INSERT writes its jobs');

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

-- An INSERT is held to the same rules as an UPDATE.
select throws_ok(
  format($$insert into notification_jobs (lead_id, channel, template, status, due_at)
           select lead_id, 'email', 'another_template', 'bogus', now() from notification_jobs where id = %s$$,
         (select id from job)),
  '23514',
  'new row for relation "notification_jobs" violates check constraint "notification_jobs_status_check"',
  'an INSERT of a job with an unknown status is refused by notification_jobs_status_check');
select is((select count(*) from notification_jobs where template = 'another_template'), 0::bigint,
          'and nothing of it is written');

-- One broken row fails its whole statement: the rows that keep the rules
-- are not written either.
select throws_ok(
  format($$update notification_jobs set attempts = case when id = %s then -1 else 7 end
           where lead_id = (select lead_id from notification_jobs where id = %s)$$,
         (select id from job), (select id from job)),
  '23514',
  'new row for relation "notification_jobs" violates check constraint "notification_jobs_attempts_check"',
  'a statement of three jobs, one of them broken, is refused');
select is((select count(*) from notification_jobs
            where attempts = 7 and lead_id = (select lead_id from notification_jobs where id = (select id from job))),
          0::bigint, 'and none of its three jobs changed');

-- The error names the rule where a caller reads it (the CONSTRAINT field,
-- as PostgreSQL's own check violation), and the table and schema.
create function pg_temp.broken_rule(p_sql text) returns text language plpgsql as $$
declare
  v_constraint text;
  v_table text;
  v_schema text;
begin
  execute p_sql;
  return 'nothing was refused';
exception when check_violation then
  get stacked diagnostics v_constraint = constraint_name, v_table = table_name, v_schema = schema_name;
  return format('%s.%s %s', v_schema, v_table, v_constraint);
end
$$;
select is(pg_temp.broken_rule(format('update notification_jobs set channel = ''fax'' where id = %s', (select id from job))),
          'public.notification_jobs notification_jobs_channel_check',
          'the error carries the schema, the table and the rule''s name');
-- no rule is left to a CHECK constraint of its own, so none is checked twice
select is((select count(*) from pg_constraint where conrelid = 'public.notification_jobs'::regclass and contype = 'c'),
          0::bigint, 'the jobs have no CHECK constraint: the rules are checked once, by the trigger');

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

-- The jobs the landing's trigger writes are not checked by the INSERT
-- trigger (20261220090000_trigger_made_jobs.sql): each keeps the rules by
-- construction. Here every such job of a set of hostile leads, under rules
-- that make each status the trigger writes, is checked after all: an UPDATE
-- that changes nothing runs the same rules over every one of them.
select ok(pg_get_triggerdef(t.oid) like '%WHEN ((pg_trigger_depth() < 1))%',
          'the INSERT trigger checks the statements of clients, the worker and the CLI, not of a trigger')
from pg_trigger t where t.tgname = 'notification_jobs_rules_insert' and t.tgrelid = 'public.notification_jobs'::regclass;
update notification_rules set delay = interval '0' where channel = 'lead_tracking';
update notification_rules set delay = interval '0', send_window_start = '09:00', send_window_end = '21:00',
       time_zone = 'Asia/Almaty' where channel = 'sms';
insert into landing_leads (name, email, phone, source, metadata)
select h.name, h.email, h.phone, 'proftest_t21_hostile', h.metadata
from (values
  ('Айгерим', 'aigerim.t21@mail.ru', '+7 (705) 123-45-67', '{}'::jsonb),
  (null, null, null, null),
  ('', '', '', '{"answers": []}'),
  (repeat('N', 5000), repeat('a', 246) || '@mail.ru', '8 705 123 45 67', '{}'),
  ('x', repeat('a', 247) || '@mail.ru', '7051234567', '{}'),
  ('x', E'a\u200bb@mail.ru', '+7 727 123 45 67', '{}'),
  ('x', 'a..b@mail.ru', '+7 705 123 45 67 89', '{}'),
  ('x', 'no-at-sign', '+7 70５ 123 45 67', '{}'),
  ('x', 'a@b.c', repeat('7', 65), '{}'),
  ('x', E' \t spaced@mail.ru \u00a0', 'call me: +7 705 123 45 67', '{}'),
  ('x', 'Ünïcödé@почта.рф', '(705) 123-45-67', '{}')
) h(name, email, phone, metadata);
select is((select count(*) from notification_jobs j join landing_leads l on l.id = j.lead_id
            where l.source = 'proftest_t21_hostile'),
          33::bigint, 'the landing''s trigger wrote the three jobs of each of the eleven hostile leads');
select is((select array_agg(distinct j.status order by j.status) from notification_jobs j
             join landing_leads l on l.id = j.lead_id where l.source = 'proftest_t21_hostile'),
          array['due', 'invalid', 'scheduled'],
          'among them every status the trigger writes: due, invalid and held for a window');
select lives_ok(
  $$update notification_jobs j set status = j.status
      from landing_leads l where l.id = j.lead_id and l.source = 'proftest_t21_hostile'$$,
  'and every one of them keeps every rule of a job');

select * from finish();
rollback;
