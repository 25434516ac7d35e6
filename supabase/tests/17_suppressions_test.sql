-- The suppression list: the hash a recipient is matched by, the reports
-- that fill it (linked at once or later), and the gate that obeys it for
-- every spelling of an address and even for a job that ignores the policies.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(11);

select is(leadrelay.recipient_hash('email', ' V.I.C.T.I.M+x@GoogleMail.com '),
          leadrelay.recipient_hash('email', 'victim@gmail.com'),
          'one hash for every spelling of one address');
select isnt(leadrelay.recipient_hash('sms', '77051234567'), leadrelay.recipient_hash('email', '77051234567'),
            'a phone and an address never share a hash');

-- a job sent, then a permanent bounce reported for it
update notification_rules set delay = interval '0', send_window_start = null, send_window_end = null;
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000f1', 'Gone', 'Gone.Away@gmail.com', '+7 705 444 55 01', 'proftest_main');
update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'em-f1'
 where lead_id = '00000000-0000-0000-0000-0000000000f1' and channel = 'email';
select record_notification_event('resend', 'ev-f1', 'email.bounced', 'em-f1', now(),
  '{"data": {"bounce": {"type": "Permanent"}}}', 'bounced');
select results_eq(
  $$select reason, recipient, lead_id from notification_suppressions$$,
  $$values ('hard_bounce'::text, 'goneaway@gmail.com'::text, '00000000-0000-0000-0000-0000000000f1'::uuid)$$,
  'a permanent bounce suppresses the address, keyed');

-- a transient bounce suppresses nothing; an early complaint does once linked
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000f2', 'Full', 'full@mail.ru', '+7 705 444 55 02', 'proftest_main');
update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'em-f2'
 where lead_id = '00000000-0000-0000-0000-0000000000f2' and channel = 'email';
select record_notification_event('resend', 'ev-f2', 'email.bounced', 'em-f2', now(),
  '{"data": {"bounce": {"type": "Transient"}}}', 'bounced');
select is((select count(*) from notification_suppressions where recipient = 'full@mail.ru'), 0::bigint,
          'a transient bounce suppresses nothing');
select is(record_notification_event('resend', 'ev-early', 'email.complained', 'em-later', now(), '{}', 'complained'),
          'pending', 'a complaint before its message is known waits');
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000f3', 'Later', 'later@mail.ru', '+7 705 444 55 03', 'proftest_main');
update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'em-later'
 where lead_id = '00000000-0000-0000-0000-0000000000f3' and channel = 'email';
select apply_pending_notification_events('resend', 'em-later');
select is((select reason from notification_suppressions where recipient = 'later@mail.ru'), 'complained',
          'and suppresses once it is linked to its job');

-- the gate: a new lead of the bounced address, spelled otherwise, even with
-- the policies ignored
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000f4', 'Again', ' gone.away+2@googlemail.com', '+7 705 444 55 04', 'proftest_main');
update notification_jobs set status = 'due', ignore_policies = true
 where lead_id = '00000000-0000-0000-0000-0000000000f4';
select results_eq(
  $$select j.channel, g.verdict from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000f4' and channel in ('email', 'sms'))) g
    join notification_jobs j on j.id = g.job_id$$,
  $$values ('email'::text, 'suppressed'::text)$$,
  'the gate refuses the suppressed address only, whatever the spelling and the policies');
select matches((select g.reason from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000f4' and channel = 'email')) g),
  '^on the suppression list since .*: the address bounced', 'with the reason in words');

-- one in force per recipient; a lifted one no longer refuses
select is(leadrelay_suppress('email', 'goneaway@gmail.com', 'operator', null, null, null, 'again'),
          (select id from notification_suppressions where recipient = 'goneaway@gmail.com'),
          'a recipient on the list keeps its first suppression');
update notification_suppressions set lifted_at = now() where recipient = 'goneaway@gmail.com';
select is((select count(*) from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000f4' and channel = 'email'))), 0::bigint,
  'a lifted suppression refuses nothing');
select throws_ok(
  $$update notification_jobs set status = 'due', cancelled_by = 'suppressed' where lead_id = '00000000-0000-0000-0000-0000000000f4' and channel = 'email'$$,
  '23514', null, 'suppressed is a cancellation only');

select * from finish();
rollback;
