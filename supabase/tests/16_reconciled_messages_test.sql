-- Messages found at the provider by `leadrelay reconcile`: the column that
-- marks them, the audit's names for the two commands that write them, and
-- the key a listed address is matched by (the recipient checks' own).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(7);

select has_column('public', 'notification_jobs', 'reconciled_at', 'jobs say whether reconciliation found them');
select col_type_is('public', 'notification_jobs', 'reconciled_at', 'timestamp with time zone', 'a moment');

insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000e1', 'Fresh', 'fresh@mail.ru', '+7 705 444 55 66', 'proftest_main');
select is((select count(*) from notification_jobs
            where lead_id = '00000000-0000-0000-0000-0000000000e1' and reconciled_at is not null),
          0::bigint, 'a job leadrelay makes itself is never marked as found');

select lives_ok(
  $$insert into ops_audit (actor, action, job_ids, changed_job_ids, lead_ids)
    values ('cli:operator', 'reconcile', '{}', '{}', '{}'), ('cli:operator', 'backfill', '{}', '{}', '{}')$$,
  'the audit takes reconcile and backfill');
select throws_ok(
  $$insert into ops_audit (actor, action, job_ids, changed_job_ids, lead_ids)
    values ('cli:operator', 'guess', '{}', '{}', '{}')$$,
  '23514', null, 'and no other name');

-- A listed address and the lead's, keyed as reconcile keys them
select is(leadrelay.recipient_key('email', public.leadrelay_trim(' Aigerim.Test0@gmail.com ')),
          leadrelay.recipient_key('email', leadrelay.recipient('email', 'aigerim.test0@gmail.com', null)),
          'an address Resend lists matches the lead''s however it was typed');
select isnt(leadrelay.recipient_key('email', 'aigerim.test0@mail.ru'),
            leadrelay.recipient_key('email', 'aigerim.test0@gmail.com'),
            'another domain is another person');

select * from finish();
rollback;
