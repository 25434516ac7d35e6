-- The one gate (leadrelay_gate): the send window for every job whatever
-- made it due, and the delivery policies for every job put on its way since
-- it last passed them (a first send or a retry), comparing recipients as a
-- person is one: +tags and Gmail's dots do not make five people.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(17);

-- Recipients as the policies compare them.
select results_eq(
  $$select leadrelay.recipient_key('email', e) from (values
      ('Victim+1@Gmail.com'), ('v.i.c.t.i.m+promo@googlemail.com'), ('victim@gmail.com'),
      ('a.b+x@mail.ru'), ('a.b@mail.ru'), ('+only@mail.ru'), ('no-at-sign'), (null)) v(e)$$,
  $$values ('victim@gmail.com'), ('victim@gmail.com'), ('victim@gmail.com'),
           ('a.b@mail.ru'), ('a.b@mail.ru'), ('+only@mail.ru'), ('no-at-sign'), (null::text)$$,
  'an email without its +tag, and without dots at Gmail; other domains keep their dots');
select is(leadrelay.recipient_key('sms', '77051234567'), '77051234567', 'a phone is its digits');

-- A job held by a window, whatever made it due (here: a retry, already
-- cleared once): the gate says wait, until the opening.
update notification_rules set delay = interval '0', dedupe_window = interval '24 hours',
       max_per_recipient_per_day = null;
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000d1', 'Night', 'night@mail.ru', '+7 705 444 55 66', 'proftest_main');
update notification_jobs set status = 'due', cleared_at = now() - interval '1 hour'
 where lead_id = '00000000-0000-0000-0000-0000000000d1' and channel = 'sms';
update notification_rules
   set send_window_start = (now() at time zone 'Asia/Almaty' + interval '2 hours')::time,
       send_window_end = (now() at time zone 'Asia/Almaty' + interval '3 hours')::time
 where channel = 'sms';
select results_eq(
  $$select g.verdict, g.held_until from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000d1' and channel = 'sms')) g$$,
  $$values ('window'::text, now() + interval '2 hours')$$,
  'a due job outside its window is held until the opening, even one that passed the policies before');
select matches(
  (select g.reason from leadrelay_gate(array(select id from notification_jobs
     where lead_id = '00000000-0000-0000-0000-0000000000d1' and channel = 'sms')) g),
  '^due at .*, outside the send window \d\d:\d\d–\d\d:\d\d Asia/Almaty: held until ',
  'with the reason the promotion writes');
update notification_jobs set ignore_policies = true where lead_id = '00000000-0000-0000-0000-0000000000d1' and channel = 'sms';
select is((select count(*)::int from leadrelay_gate(array(select id from notification_jobs
            where lead_id = '00000000-0000-0000-0000-0000000000d1' and channel = 'sms'))), 0,
  'a job backfilled with --ignore-policies goes at once');
update notification_rules set send_window_start = null, send_window_end = null where channel = 'sms';

-- A retried lead is judged again: its person got the message meanwhile
-- through a newer lead (the first lead had failed on a bad API key).
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000e1', 'First', 'Victim+1@Gmail.com', '+7 705 555 66 77', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000e2', 'Second', 'victim@gmail.com', '87055556677', 'proftest_main');
update notification_jobs set status = 'sent', sent_at = now() - interval '1 hour', finished_at = now(),
       cleared_at = now() - interval '1 hour', provider_message_id = 'p-' || id
 where lead_id = '00000000-0000-0000-0000-0000000000e2' and channel in ('email', 'sms');
-- the first lead's jobs, as `leadrelay retry` leaves them: due, not cleared
update notification_jobs set status = 'due', cleared_at = null
 where lead_id = '00000000-0000-0000-0000-0000000000e1' and channel in ('email', 'sms');
select results_eq(
  $$select j.channel, g.verdict, g.duplicate_of from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000e1' and channel in ('email', 'sms'))) g
      join notification_jobs j on j.id = g.job_id order by j.channel$$,
  $$values ('email'::text, 'duplicate'::text, '00000000-0000-0000-0000-0000000000e2'::uuid),
           ('sms', 'duplicate', '00000000-0000-0000-0000-0000000000e2'::uuid)$$,
  'the retried lead''s email (a +tag of the same Gmail address) and SMS are duplicates of what went');

-- An SMS that failed with its outcome unknown may have reached the person:
-- it counts as in flight.
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000f1', 'Doubt', 'doubt@mail.ru', '+7 705 666 77 88', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000f2', 'Later', 'other@mail.ru', '+7 705 666 77 88', 'proftest_main');
update notification_jobs set status = 'failed', finished_at = now(), last_error = 'gave up', attempts = 8,
       cleared_at = now() - interval '1 hour', outcome_unknown_since = now() - interval '1 hour'
 where lead_id = '00000000-0000-0000-0000-0000000000f1' and channel = 'sms';
update notification_jobs set status = 'due' where lead_id = '00000000-0000-0000-0000-0000000000f2' and channel = 'sms';
select is(
  (select g.verdict from leadrelay_gate(array(select id from notification_jobs
     where lead_id = '00000000-0000-0000-0000-0000000000f2' and channel = 'sms')) g),
  'duplicate', 'an SMS in doubt blocks a second one to the same phone');
update notification_jobs set outcome_unknown_since = null
 where lead_id = '00000000-0000-0000-0000-0000000000f1' and channel = 'sms';
select is((select count(*)::int from leadrelay_gate(array(select id from notification_jobs
            where lead_id = '00000000-0000-0000-0000-0000000000f2' and channel = 'sms'))), 0,
  'one that failed for a known reason (nothing sent) does not');

-- A window opening in a skipped hour is the jump itself.
select is(leadrelay_send_time('2027-03-28 00:30Z', '02:30', '05:00', 'Europe/Berlin'),
  '2027-03-28 01:00Z'::timestamptz, 'Berlin, 2027-03-28: 02:30 does not exist; the window opens at the jump (03:00)');
select is(leadrelay_send_time('2027-03-28 00:30Z', '02:00', '05:00', 'Europe/Berlin'),
  '2027-03-28 01:00Z'::timestamptz, 'an opening at the very start of the gap too');
select is(leadrelay_send_time('2027-10-31 00:30Z', '02:30', '05:00', 'Europe/Berlin'),
  '2027-10-31 00:30Z'::timestamptz, 'on the night the clocks go back, 02:30 exists (twice): the first');
select is(leadrelay_send_time('2027-03-27 23:00Z', '09:00', '21:00', 'Asia/Almaty'),
  '2027-03-28 04:00Z'::timestamptz, 'Almaty has no daylight saving: 09:00 is 04:00 UTC');

-- Zones that read backwards are refused.
select throws_like(
  $$update notification_rules set time_zone = 'Etc/GMT+5' where channel = 'sms'$$,
  '%reads backwards: Etc/GMT+5 is UTC−5%',
  'Etc/GMT+5 is refused: it is UTC−5, not Kazakhstan');
select throws_like(
  $$update notification_rules set time_zone = 'etc/gmt-5' where channel = 'sms'$$,
  '%time zone PostgreSQL knows%',
  'whatever its case (PostgreSQL knows only the exact name)');
select lives_ok(
  $$update notification_rules set time_zone = 'Etc/UTC' where channel = 'sms'$$,
  'Etc/UTC is fine');

-- Sequences: closed to the browser-facing roles.
select is(
  array(select s.relname::text || ' ' || r.rolname
          from pg_class s cross join pg_roles r
         where s.relkind = 'S' and s.relnamespace = 'public'::regnamespace
           and s.relname in ('notification_rules_id_seq', 'notification_jobs_id_seq', 'notification_events_id_seq',
                             'ops_sessions_id_seq', 'ops_audit_id_seq')
           and r.rolname in ('anon', 'authenticated')
           and (has_sequence_privilege(r.oid, s.oid, 'USAGE') or has_sequence_privilege(r.oid, s.oid, 'SELECT'))
         order by 1),
  '{}'::text[],
  'no sequence of leadrelay''s is usable by anon or authenticated');

select has_function('public', 'leadrelay_policy_verdicts', array['bigint[]'],
  'the gate of the release before stays for its workers during an upgrade');

select * from finish();
rollback;
