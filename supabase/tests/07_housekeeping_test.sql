-- prune_leadrelay_history: old provider events go in bounded batches, recent
-- ones stay, and the retention is a setting the database validates.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(11);

select is((select event_retention from public.leadrelay_settings), interval '180 days',
  'events are kept 180 days by default');

insert into public.notification_events (provider, provider_event_id, event_type, payload, received_at)
select 'resend', 'old-' || g, 'email.delivered', '{}', now() - interval '200 days' + g * interval '1 second'
  from generate_series(1, 30) g;
insert into public.notification_events (provider, provider_event_id, event_type, payload, received_at)
select 'resend', 'new-' || g, 'email.delivered', '{}', now() - interval '1 day'
  from generate_series(1, 5) g;

select is(public.prune_leadrelay_history(10) ->> 'events', '10', 'one call deletes at most one batch');
select is((select count(*)::int from public.notification_events where provider_event_id like 'old-%'), 20,
  'the oldest go first');
select is(public.prune_leadrelay_history(1000) ->> 'events', '20', 'the next call takes the rest');
select is((select count(*)::int from public.notification_events), 5, 'recent events stay');
select is(public.prune_leadrelay_history() ->> 'events', '0', 'nothing left to prune is a cheap no-op');

select throws_ok($$update public.leadrelay_settings set event_retention = interval '1 hour'$$,
  '23514', null, 'a retention under a day is refused when it is written');
select throws_ok($$insert into public.leadrelay_settings (id) values (false)$$,
  '23514', null, 'there is one settings row');
select throws_ok($$select public.prune_leadrelay_history(0)$$,
  'P0001', 'p_batch must be from 1 to 100000, got 0', 'a nonsensical batch size is refused');

select ok(not has_table_privilege('anon', 'public.leadrelay_settings', 'select'), 'anon cannot read the settings');
select ok(not has_function_privilege('authenticated', 'public.prune_leadrelay_history(integer)', 'execute'),
  'authenticated cannot prune through the API');

select * from finish();
rollback;
