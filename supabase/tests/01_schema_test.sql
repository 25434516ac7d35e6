-- The schema the contract names, locked down as Supabase's linter asks.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(28);

select has_table('public', 'landing_leads', 'landing_leads exists');
select has_table('public', 'notification_rules', 'notification_rules exists');
select has_table('public', 'notification_jobs', 'notification_jobs exists');
select has_table('public', 'notification_events', 'notification_events exists');
select has_view('public', 'lead_notification_status', 'lead_notification_status exists');

select columns_are('public', 'landing_leads', array[
  'id', 'name', 'email', 'phone', 'source', 'metadata', 'created_at',
  'email_sent', 'email_sent_at', 'email_error', 'sms_sent', 'sms_sent_at', 'sms_error',
  'email_delivery_status', 'sms_delivery_status'], 'landing_leads has its columns and the mirror');

select col_is_unique('public', 'notification_jobs', array['lead_id', 'channel', 'template'],
  'one job per lead, channel and template');
select col_is_unique('public', 'notification_events', array['provider', 'provider_event_id'],
  'one event per provider event id');
select has_index('public', 'notification_jobs', 'notification_jobs_claim_idx',
  array['channel', 'due_at', 'id'], 'the claim index matches the claim order');

select throws_ok(
  $$insert into notification_jobs (lead_id, channel, template, status, due_at)
    values (gen_random_uuid(), 'email', 't', 'shipped', now())$$,
  '23514', null, 'an unknown status is refused');
select throws_ok(
  $$insert into notification_jobs (lead_id, channel, template, status, due_at)
    values (gen_random_uuid(), 'email', 't', 'sending', now())$$,
  '23514', null, 'sending without a lease is refused');
select throws_ok(
  $$insert into notification_jobs (lead_id, channel, template, status, due_at, finished_at)
    values (gen_random_uuid(), 'email', 't', 'failed', now(), now())$$,
  '23514', null, 'failed without a reason is refused');
select throws_ok(
  $$insert into notification_jobs (lead_id, channel, template, status, due_at, finished_at)
    values (gen_random_uuid(), 'email', 't', 'sent', now(), now())$$,
  '23514', null, 'sent without sent_at is refused');

select is(
  (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'public'
     and c.relname in ('notification_rules', 'notification_jobs', 'notification_events')
     and c.relrowsecurity),
  3, 'RLS is on for every new table');

select is(
  (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname = 'public'
     and p.proname in ('enqueue_lead_notifications', 'delete_lead_notifications',
                       'promote_due_notification_jobs', 'leadrelay_email_problem',
                       'leadrelay_phone_digits', 'leadrelay_phone_problem', 'leadrelay_delivery_rank',
                       'apply_pending_notification_events', 'record_notification_event',
                       'apply_all_pending_notification_events')
     and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')),
  0, 'every function pins search_path');
select is(
  (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname = 'public' and p.prolang <> (select oid from pg_language where lanname = 'c')
     and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')
     and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')),
  0, 'no function in public, ours or added later, leaves search_path open');

select is(
  (select count(*)::int from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where n.nspname = 'public'),
  0, 'no extension lives in schema public');

select ok(
  (select 'security_invoker=true' = any(reloptions) from pg_class
   where oid = 'public.lead_notification_status'::regclass),
  'the view runs with the rights of its reader');

select ok(not has_table_privilege('anon', 'public.notification_jobs', 'select'), 'anon cannot read jobs');
select ok(not has_table_privilege('authenticated', 'public.notification_jobs', 'select'), 'authenticated cannot read jobs');
select ok(not has_table_privilege('anon', 'public.notification_events', 'select'), 'anon cannot read events');
select ok(not has_table_privilege('anon', 'public.notification_rules', 'update'), 'anon cannot change rules');
select ok(not has_table_privilege('authenticated', 'public.lead_notification_status', 'select'), 'authenticated cannot read the view');
select ok(not has_function_privilege('anon', 'public.promote_due_notification_jobs(integer)', 'execute'),
  'anon cannot call the promotion through the API');
select ok(not has_function_privilege('authenticated', 'public.leadrelay_phone_problem(text)', 'execute'),
  'helpers are not API endpoints');

select results_eq(
  $$select source_pattern, channel, template, delay, enabled from notification_rules order by channel$$,
  $$values ('proftest%', 'email', 'proftest_result', interval '10 minutes', true),
           ('proftest%', 'lead_tracking', 'proftest', interval '0', true),
           ('proftest%', 'sms', 'proftest_result', interval '10 minutes', true)$$,
  'the proftest rule is seeded: email and sms after 10 minutes, the dashboard row at once');

select has_trigger('public', 'landing_leads', 'landing_leads_enqueue_notifications', 'the enqueue trigger exists');
select has_trigger('public', 'landing_leads', 'landing_leads_delete_notifications', 'the delete trigger exists');

select * from finish();
rollback;
