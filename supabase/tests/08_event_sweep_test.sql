-- The sweep of early events walks every pending event in turn, so events
-- for messages no job will ever have cannot hide one of ours; old ones are
-- abandoned (kept, no longer scanned). And what a report writes into the
-- error columns: Resend's words, Mobizon's status in ours.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(12);

update public.notification_rules set delay = interval '1 hour';
insert into public.landing_leads (name, email, phone, source) values ('A', 'a@mail.ru', '87051234567', 'proftest_main');
update public.notification_jobs set status = 'sent', sent_at = now(), finished_at = now(),
       provider_message_id = 'ours'
 where channel = 'email';

-- 1,500 events for other senders' messages, then the early event of ours.
insert into public.notification_events (provider, provider_event_id, event_type, provider_message_id, payload, delivery_status)
select 'resend', 'foreign-' || g, 'email.delivered', 'foreign-' || g, '{}', 'delivered' from generate_series(1, 1500) g;
insert into public.notification_events (provider, provider_event_id, event_type, provider_message_id, payload, delivery_status)
values ('resend', 'ours-delivered', 'email.delivered', 'ours', '{}', 'delivered');

select is(public.apply_all_pending_notification_events(1000), 0, 'the first sweep meets only foreign events');
select is((select delivery_status from public.notification_jobs where provider_message_id = 'ours'), null,
  'ours is beyond the first 1,000');
select is(public.apply_all_pending_notification_events(1000), 1, 'the next sweep goes on from there');
select is((select delivery_status from public.notification_jobs where provider_message_id = 'ours'), 'delivered',
  'and applies the early event of ours');
select is((select pending_events_cursor from public.leadrelay_settings), 0::bigint,
  'having reached the end, the walk starts again from the beginning');

-- pending longer than the setting: abandoned, kept
update public.notification_events set received_at = now() - interval '8 days' where provider_event_id = 'foreign-1';
select public.apply_all_pending_notification_events(1000);
select isnt((select abandoned_at from public.notification_events where provider_event_id = 'foreign-1'), null,
  'an event pending longer than pending_event_max_age is abandoned');
select is((select count(*)::int from public.notification_events where provider_event_id = 'foreign-1'), 1,
  'and kept for audit');
select throws_ok($$update public.leadrelay_settings set pending_event_max_age = interval '1 minute'$$,
  '23514', null, 'a max age under an hour is refused');

-- the error columns
select is(public.leadrelay_delivery_problem('mobizon', 'undelivered', '{"data": {"bounce": {"message": "call +7 700"}}}'),
  'Mobizon: the SMS was not delivered (UNDELIV)', 'a Mobizon report writes only our words');
select is(public.leadrelay_delivery_problem('resend', 'bounced', '{"data": {"bounce": {"message": "550 user unknown"}}}'),
  '550 user unknown', 'a signed Resend bounce keeps its own words');
select is(public.leadrelay_delivery_problem('resend', 'delivered', '{}'), null, 'a success writes nothing');
select is(public.record_notification_event('resend', 'contact-1', 'contact.created', null, now(), '{}', null),
  'stored', 'an event without a state is stored (it used to fail on an unassigned record)');

select * from finish();
rollback;
