-- Email batches: the grouping is stored on the jobs, never set at enqueue time,
-- and looking for batches to send again never scans a busy queue.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(7);

select has_column('public', 'notification_jobs', 'batch_key', 'jobs carry the key of their batch request');
select col_is_null('public', 'notification_jobs', 'batch_key', 'a job sent on its own has none');
select has_index('public', 'notification_jobs', 'notification_jobs_due_batches_idx',
  'batches due again have their own index');
select is(
  (select pg_get_expr(indpred, indrelid) from pg_index
    where indexrelid = 'public.notification_jobs_due_batches_idx'::regclass),
  '((status = ''due''::text) AND (batch_key IS NOT NULL))',
  'that index holds only batches due again');

update public.notification_rules set delay = interval '0';
insert into public.landing_leads (name, email, phone, source)
select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 123 45 67', 'proftest_main'
from generate_series(1, 3) g;

select is(
  (select count(*)::int from public.notification_jobs where batch_key is not null), 0,
  'the enqueue trigger puts no job in a batch: the worker does, when it claims');

select throws_ok(
  $$update public.notification_jobs set batch_key = repeat('k', 257) where channel = 'email'$$,
  '23514', null,
  'a key longer than Resend accepts (256) is refused');

-- The members of one batch are found by key.
update public.notification_jobs set batch_key = 'leadrelay-batch-t' where channel = 'email';
set local enable_seqscan = off;
select ok(
  (select count(*) from public.notification_jobs where batch_key = 'leadrelay-batch-t') = 3,
  'the members of a batch are found by its key');

select * from finish();
rollback;
