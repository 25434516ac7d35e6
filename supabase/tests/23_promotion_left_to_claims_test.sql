-- The promotion the worker's sweep and pg_cron run leaves to the claims the
-- jobs they take as they are: a scheduled job past its moment for less than
-- p_left_to_claims. Email batches and expired leases go at once; the
-- one-argument form promotes everything past its moment, as before.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(13);

update notification_rules set enabled = (channel <> 'lead_tracking');
insert into public.landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000a1', 'Just past', 'a1@mail.ru', '87051234561', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000a2', 'Long past', 'a2@mail.ru', '87051234562', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000a3', 'In a batch', 'a3@mail.ru', '87051234563', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000a4', 'Lease expired', 'a4@mail.ru', '87051234564', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000a5', 'Not yet', 'a5@mail.ru', '87051234565', 'proftest_main');
update notification_jobs set due_at = now() - interval '30 seconds'
 where lead_id = '00000000-0000-0000-0000-0000000000a1';
update notification_jobs set due_at = now() - interval '61 seconds'
 where lead_id = '00000000-0000-0000-0000-0000000000a2';
-- an email batch put off until its moment, five seconds ago
update notification_jobs set due_at = now() - interval '5 seconds', batch_key = 'leadrelay-batch-test-a3'
 where lead_id = '00000000-0000-0000-0000-0000000000a3' and channel = 'email';
-- a worker stopped while sending, its lease run out a second ago
update notification_jobs set status = 'sending', attempts = 1, locked_by = 'gone-worker:1',
       locked_until = now() - interval '1 second', due_at = now() - interval '10 seconds'
 where lead_id = '00000000-0000-0000-0000-0000000000a4' and channel = 'sms';

select is(promote_due_notification_jobs(10000, interval '1 minute'), 4,
  'the jobs a minute past their moment, the batch and the expired lease are promoted');
select results_eq(
  $$select l.name, j.channel, j.status from notification_jobs j join landing_leads l on l.id = j.lead_id
     where j.lead_id::text like '00000000-0000-0000-0000-0000000000a%' order by l.name, j.channel$$,
  $$values ('In a batch', 'email', 'due'), ('In a batch', 'sms', 'scheduled'),
           ('Just past', 'email', 'scheduled'), ('Just past', 'sms', 'scheduled'),
           ('Lease expired', 'email', 'scheduled'), ('Lease expired', 'sms', 'due'),
           ('Long past', 'email', 'due'), ('Long past', 'sms', 'due'),
           ('Not yet', 'email', 'scheduled'), ('Not yet', 'sms', 'scheduled')$$,
  'a job past its moment for less than a minute is left to the claims');
select is(
  (select last_error from notification_jobs
    where lead_id = '00000000-0000-0000-0000-0000000000a4' and channel = 'sms'),
  'attempt 1: the worker stopped before recording an outcome (lease expired)',
  'the expired lease is recorded as before');
select is(promote_due_notification_jobs(10000, interval '1 minute'), 0, 'a second call promotes nothing');
select is(promote_due_notification_jobs(1, interval '0'), 1, 'the limit holds');
select is(promote_due_notification_jobs(), 1, 'the one-argument form promotes the rest past its moment');
select is(
  (select count(*)::int from notification_jobs
    where lead_id = '00000000-0000-0000-0000-0000000000a1' and status = 'due'),
  2, 'the jobs left to the claims among them');
select is(
  (select count(*)::int from notification_jobs
    where lead_id = '00000000-0000-0000-0000-0000000000a5' and status = 'scheduled'),
  2, 'a job before its moment is never promoted');

select throws_ok($$select promote_due_notification_jobs(10, null)$$, '22023', null,
  'a null interval is refused with a clear error');
select throws_ok($$select promote_due_notification_jobs(10, interval '-1 second')$$, '22023', null,
  'a negative interval is refused');

select ok(not has_function_privilege('anon', 'public.promote_due_notification_jobs(integer, interval)', 'execute'),
  'anon cannot call the promotion through the API');
select ok(not has_function_privilege('authenticated', 'public.promote_due_notification_jobs(integer, interval)', 'execute'),
  'authenticated cannot call it either');
select is(
  (select p.proconfig from pg_proc p where p.oid = 'public.promote_due_notification_jobs(integer, interval)'::regprocedure),
  array['search_path=""'], 'its search_path is pinned');

select * from finish();
rollback;
