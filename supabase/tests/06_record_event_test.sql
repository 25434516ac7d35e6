-- record_notification_event: stored once, states only forward, and the same
-- result whether the job is known (one pass) or not yet (kept, applied later).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(16);

update public.notification_rules set delay = interval '1 hour';
insert into public.landing_leads (name, email, source) values ('A', 'a@mail.ru', 'proftest_main'), ('B', 'b@mail.ru', 'proftest_main');
update public.notification_jobs j
   set status = 'sent', sent_at = now(), finished_at = now(),
       provider_message_id = 'msg-' || l.name
  from public.landing_leads l
 where l.id = j.lead_id and j.channel = 'email';

create temporary table job_of (name text, job_id bigint);
insert into job_of
select l.name, j.id from public.notification_jobs j join public.landing_leads l on l.id = j.lead_id where j.channel = 'email';

-- a known job, nothing waiting: stored applied, in one pass
select is(public.record_notification_event('resend', 'e1', 'email.sent', 'msg-A', now(), '{}', 'sent'),
  'applied', 'an event for a known message is applied');
select is((select (applied_at is not null, job_id = (select job_id from job_of where name = 'A'))
             from public.notification_events where provider_event_id = 'e1'),
  (true, true), 'it is stored already applied, naming its job');
select is((select count(*)::int from public.notification_events where applied_at is null), 0,
  'nothing is left waiting');
select is(public.record_notification_event('resend', 'e1', 'email.sent', 'msg-A', now(), '{}', 'sent'),
  'duplicate', 'a redelivery is a duplicate');
select is(public.record_notification_event('resend', 'e2', 'email.delivered', 'msg-A', now(), '{}', 'delivered'),
  'applied', 'a later state is applied');
select is(public.record_notification_event('resend', 'e3', 'email.sent', 'msg-A', now(), '{}', 'sent'),
  'applied', 'an earlier state arriving late is recorded');
select is((select delivery_status from public.notification_jobs where provider_message_id = 'msg-A'),
  'delivered', 'but the state does not move back');
select is((select email_delivery_status from public.landing_leads where name = 'A'),
  'delivered', 'and the lead mirrors the job');
select is(public.record_notification_event('resend', 'e4', 'email.bounced', 'msg-A', now(),
            '{"data": {"bounce": {"message": "Mailbox does not exist"}}}', 'bounced'),
  'applied', 'a bounce is applied');
select is((select (j.delivery_status, j.last_error, l.email_error)
             from public.notification_jobs j join public.landing_leads l on l.id = j.lead_id
            where j.provider_message_id = 'msg-A'),
  ('bounced'::text, 'Mailbox does not exist'::text, 'Mailbox does not exist'::text),
  'with the provider''s reason on the job and the lead');

-- an unknown message: kept, then applied when its id is recorded
select is(public.record_notification_event('resend', 'e5', 'email.delivered', 'msg-C', now(), '{}', 'delivered'),
  'pending', 'an event for an unknown message waits');
update public.notification_jobs set provider_message_id = 'msg-C'
 where id = (select job_id from job_of where name = 'B');
select is(public.record_notification_event('resend', 'e6', 'email.sent', 'msg-C', now(), '{}', 'sent'),
  'applied', 'the next event of that message applies both');
select is((select count(*)::int from public.notification_events where provider_message_id = 'msg-C' and applied_at is null), 0,
  'none is left waiting');
select is((select delivery_status from public.notification_jobs where provider_message_id = 'msg-C'),
  'delivered', 'and the best of them wins, whatever the order');

-- no delivery state, no message: stored and done
select is(public.record_notification_event('resend', 'e7', 'contact.created', null, now(), '{}', null),
  'stored', 'an event with no state is stored');
select is((select applied_at is not null from public.notification_events where provider_event_id = 'e7'),
  true, 'and needs nothing more');

select * from finish();
rollback;
