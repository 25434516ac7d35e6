-- Delivery policies: send windows in the rule's time zone (promotion holds a
-- job until the opening), and the gate that cancels a duplicate or a message
-- over the per-recipient cap. Bad rules are refused when written.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(43);

-- What ships.
select results_eq(
  $$select channel, dedupe_window, max_per_recipient_per_day, time_zone, send_window_start is null
      from notification_rules where channel in ('email', 'sms') order by channel$$,
  $$values ('email', interval '24 hours', 3, 'Asia/Almaty', true), ('sms', interval '24 hours', 3, 'Asia/Almaty', true)$$,
  'the seeded rules de-duplicate over 24 hours and cap at 3 per channel; no window');
select has_column('public', 'lead_notification_status', 'sms_held_until', 'the view shows a held SMS');
select has_column('public', 'lead_notification_status', 'email_cancelled_by', 'and why an email was cancelled');
select has_column('public', 'lead_notification_status', 'sms_duplicate_of_lead', 'and which lead already got it');

-- Bad rules are refused when they are written, with the reason.
select throws_ok(
  $$update notification_rules set time_zone = 'Mars/Olympus_Mons' where channel = 'sms'$$,
  '23514', 'notification_rules: time_zone ''Mars/Olympus_Mons'' is not a time zone PostgreSQL knows',
  'an unknown time zone is refused');
select throws_ok(
  $$update notification_rules set time_zone = '+05' where channel = 'sms'$$,
  '23514', 'notification_rules: time_zone ''+05'' is not a time zone PostgreSQL knows',
  'an offset is refused: daylight saving belongs to the time-zone database');
select throws_ok(
  $$update notification_rules set time_zone = null where channel = 'sms'$$,
  '23514', null, 'a null time zone is refused');
select throws_ok(
  $$update notification_rules set send_window_start = '09:00', send_window_end = '09:00' where channel = 'sms'$$,
  '23514', 'notification_rules: send_window_start equals send_window_end (09:00:00): the window would be empty or the whole day',
  'a window that starts where it ends is refused');
select throws_ok(
  $$update notification_rules set send_window_start = '09:00' where channel = 'sms'$$,
  '23514', 'notification_rules: send_window_start and send_window_end are set together (09:00:00 and null)',
  'half a window is refused');
select throws_ok(
  $$update notification_rules set dedupe_window = interval '-1 hour' where channel = 'sms'$$,
  '23514', 'notification_rules: dedupe_window -01:00:00 must be longer than 0 and at most 30 days',
  'a negative dedupe window is refused');
select throws_ok(
  $$update notification_rules set dedupe_window = interval '0' where channel = 'sms'$$,
  '23514', null, 'a zero dedupe window is refused (null turns it off)');
select throws_ok(
  $$update notification_rules set max_per_recipient_per_day = 0 where channel = 'sms'$$,
  '23514', 'notification_rules: max_per_recipient_per_day 0 must be between 1 and 1000',
  'a cap of 0 is refused');
select throws_ok(
  $$insert into notification_rules (source_pattern, channel, template, time_zone) values ('x%', 'sms', 'x', 'Nowhere/Else')$$,
  '23514', null, 'an insert with an unknown zone is refused too');
select lives_ok(
  $$update notification_rules set send_window_start = '21:00', send_window_end = '09:00', time_zone = 'Europe/Berlin'
     where channel = 'sms'$$,
  'a window across midnight in another zone is accepted');
update notification_rules set send_window_start = null, send_window_end = null, time_zone = 'Asia/Almaty'
 where channel = 'sms';

-- The next opening, in the rule's zone.
select is(leadrelay_send_time('2026-11-30 02:50+05', '09:00', '21:00', 'Asia/Almaty'),
  '2026-11-30 09:00+05'::timestamptz, 'a lead at 02:50 in Almaty waits for 09:00 the same day');
select is(leadrelay_send_time('2026-11-30 12:00+05', '09:00', '21:00', 'Asia/Almaty'),
  '2026-11-30 12:00+05'::timestamptz, 'inside the window: at once');
select is(leadrelay_send_time('2026-11-30 21:00+05', '09:00', '21:00', 'Asia/Almaty'),
  '2026-12-01 09:00+05'::timestamptz, 'the end is not in the window: the next morning');
select is(leadrelay_send_time('2026-11-30 10:50+05', '21:00', '09:00', 'Asia/Almaty'),
  '2026-11-30 21:00+05'::timestamptz, 'a window across midnight opens in the evening');
select is(leadrelay_send_time('2026-11-30 23:50+05', '21:00', '09:00', 'Asia/Almaty'),
  '2026-11-30 23:50+05'::timestamptz, 'and is open before midnight');
select is(leadrelay_send_time('2026-12-01 03:00+05', '21:00', '09:00', 'Asia/Almaty'),
  '2026-12-01 03:00+05'::timestamptz, 'and after it');
select is(leadrelay_send_time('2026-11-30 02:50+05', '09:00', '21:00', 'America/New_York'),
  '2026-11-30 02:50+05'::timestamptz, 'another zone: 02:50 in Almaty is 16:50 in New York, inside');
select is(leadrelay_send_time('2026-11-30 16:00+05', '09:00', '21:00', 'America/New_York'),
  '2026-11-30 09:00-05'::timestamptz, 'and 06:00 in New York waits for its 09:00');
select is(leadrelay_send_time('2027-03-27 05:00Z', '08:00', '20:00', 'Europe/Berlin'),
  '2027-03-27 07:00Z'::timestamptz, 'Berlin the day before summer time: 08:00 is 07:00 UTC');
select is(leadrelay_send_time('2027-03-28 05:00Z', '08:00', '20:00', 'Europe/Berlin'),
  '2027-03-28 06:00Z'::timestamptz, 'on the day clocks go forward: 08:00 is 06:00 UTC');
select is(leadrelay_send_time('2027-03-27 19:30Z', '08:00', '20:00', 'Europe/Berlin'),
  '2027-03-28 06:00Z'::timestamptz, 'a job held overnight across the change opens at the new 08:00');
select is(leadrelay_send_time('2027-10-30 19:30Z', '08:00', '20:00', 'Europe/Berlin'),
  '2027-10-31 07:00Z'::timestamptz, 'and across the change back, at the winter 08:00');
-- (20261204090000: the jump itself, 01:00 UTC = 03:00 summer time; the
-- release before landed half an hour after it, 03:30.)
select is(leadrelay_send_time('2027-03-28 00:30Z', '02:30', '05:00', 'Europe/Berlin'),
  '2027-03-28 01:00Z'::timestamptz, 'an opening in the skipped hour (02:30) is when the clocks jump: 03:00 summer time');

-- The trigger notes the rule; a window leaves a job with no delay scheduled.
update notification_rules set delay = interval '0', send_window_start = (now() at time zone 'Asia/Almaty' + interval '1 hour')::time,
       send_window_end = (now() at time zone 'Asia/Almaty' + interval '2 hours')::time
 where channel = 'sms';
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000a1', 'Night', 'night@mail.ru', '+7 705 111 22 33', 'proftest_main');
select is((select status from notification_jobs where lead_id = '00000000-0000-0000-0000-0000000000a1' and channel = 'sms'),
  'scheduled', 'a rule with a window and no delay: the job waits for the promotion');
select is((select rule_id from notification_jobs where lead_id = '00000000-0000-0000-0000-0000000000a1' and channel = 'sms'),
  (select id from notification_rules where channel = 'sms'), 'the job knows its rule');
update notification_jobs set due_at = now() - interval '1 second' where lead_id = '00000000-0000-0000-0000-0000000000a1';
select is(promote_due_notification_jobs(), 1, 'the email is promoted, the SMS outside its window is not');
select results_eq(
  $$select status, due_at, held_until from notification_jobs
     where lead_id = '00000000-0000-0000-0000-0000000000a1' and channel = 'sms'$$,
  $$values ('scheduled', now() + interval '1 hour', now() + interval '1 hour')$$,
  'the SMS stays scheduled, moved to the window''s opening');
select matches((select sms_hold_reason from lead_notification_status where lead_id = '00000000-0000-0000-0000-0000000000a1'),
  '^due at \d{4}-\d\d-\d\d \d\d:\d\d, outside the send window \d\d:\d\d–\d\d:\d\d Asia/Almaty: held until \d{4}-\d\d-\d\d \d\d:\d\d$',
  'the view says why, in the rule''s local time');
select is((select sms_held_until from lead_notification_status where lead_id = '00000000-0000-0000-0000-0000000000a1'),
  now() + interval '1 hour', 'and until when');
update notification_rules set send_window_start = null, send_window_end = null, delay = interval '10 minutes' where channel = 'sms';

-- The gate: the verdicts the worker's claim applies in its own write. Here a
-- claim of the given jobs is played as the claim does it.
create function pg_temp.claim(p_ids bigint[]) returns table (job_id bigint, policy text, reason text)
language sql as $f$
  with v as (select * from public.leadrelay_policy_verdicts(p_ids)),
  u as (
    update public.notification_jobs j
       set status = case when v.job_id is null then 'sending' else 'cancelled' end,
           attempts = case when v.job_id is null then j.attempts + 1 else j.attempts end,
           locked_by = case when v.job_id is null then 'test' end,
           locked_until = case when v.job_id is null then now() + interval '1 minute' end,
           cleared_at = case when v.job_id is null then coalesce(j.cleared_at, now()) end,
           cancelled_by = v.policy, duplicate_of_lead = v.duplicate_of,
           last_error = coalesce(v.reason, j.last_error),
           finished_at = case when v.job_id is null then j.finished_at else now() end
      from unnest(p_ids) as i(id) left join v on v.job_id = i.id
     where j.id = i.id
    returning j.id)
  select v.job_id, v.policy, v.reason from v where (select count(*) from u) >= 0 order by v.job_id
$f$;

update notification_rules set dedupe_window = interval '24 hours', max_per_recipient_per_day = 3;
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000b1', 'First', 'Same@Mail.ru', '8 (705) 222-33-44', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000b2', 'Again', ' same@mail.ru', '+7 705 222 33 44', 'proftest_main');
select results_eq(
  $$select j.lead_id, j.channel, v.policy, v.duplicate_of
      from leadrelay_policy_verdicts((select array_agg(id) from notification_jobs
                                       where lead_id::text like '%b_' and channel <> 'lead_tracking')) v
      join notification_jobs j on j.id = v.job_id order by j.channel$$,
  $$values ('00000000-0000-0000-0000-0000000000b2'::uuid, 'email', 'duplicate', '00000000-0000-0000-0000-0000000000b1'::uuid),
           ('00000000-0000-0000-0000-0000000000b2'::uuid, 'sms', 'duplicate', '00000000-0000-0000-0000-0000000000b1'::uuid)$$,
  'two leads of one person in one claim: the second''s email and SMS are duplicates (the address differs only in case and spaces)');
select is((select count(*)::int from pg_temp.claim((select array_agg(id) from notification_jobs
                                                     where lead_id::text like '%b_' and channel <> 'lead_tracking'))), 2,
  'the claim cancels them');
select results_eq(
  $$select email_status, email_cancelled_by, email_duplicate_of_lead, sms_status, sms_cancelled_by, sms_duplicate_of_lead
      from lead_notification_status where lead_id = '00000000-0000-0000-0000-0000000000b2'$$,
  $$values ('cancelled', 'duplicate', '00000000-0000-0000-0000-0000000000b1'::uuid,
            'cancelled', 'duplicate', '00000000-0000-0000-0000-0000000000b1'::uuid)$$,
  'the view names the policy and the lead that gets the message');
select matches((select sms_error from lead_notification_status where lead_id = '00000000-0000-0000-0000-0000000000b2'),
  '^already being sent to this recipient for lead 00000000-0000-0000-0000-0000000000b1',
  'and why');
select is((select count(*)::int from notification_jobs where lead_id = '00000000-0000-0000-0000-0000000000b1'
            and channel <> 'lead_tracking' and cleared_at is not null and status = 'sending'), 2,
  'the first lead''s messages are cleared and go');
select is((select count(*)::int from leadrelay_policy_verdicts((select array_agg(id) from notification_jobs
                                                                 where lead_id = '00000000-0000-0000-0000-0000000000b1'))), 0,
  'a job already cleared is not judged again (a retry, a look-up)');

-- Sent 25 hours ago is outside the window; sent an hour ago is not.
update notification_jobs set status = 'sent', sent_at = now() - interval '25 hours', finished_at = now(), locked_by = null, locked_until = null
 where lead_id = '00000000-0000-0000-0000-0000000000b1' and channel <> 'lead_tracking';
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000b3', 'Next day', 'same@mail.ru', '87052223344', 'proftest_main');
select is((select count(*)::int from pg_temp.claim((select array_agg(id) from notification_jobs
                                                     where lead_id = '00000000-0000-0000-0000-0000000000b3' and channel <> 'lead_tracking'))), 0,
  'a day later the same person gets the messages again');
update notification_jobs set status = 'sent', sent_at = now() - interval '1 hour', finished_at = now(), locked_by = null, locked_until = null
 where lead_id = '00000000-0000-0000-0000-0000000000b3' and channel <> 'lead_tracking';
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000b4', 'Again', 'same@mail.ru', '87052223344', 'proftest_main');
select matches((select reason from pg_temp.claim((select array_agg(id) from notification_jobs
                                                   where lead_id = '00000000-0000-0000-0000-0000000000b4' and channel = 'sms'))),
  '^already sent to this recipient for lead 00000000-0000-0000-0000-0000000000b3 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$',
  'sent an hour ago: cancelled, naming the lead and the time');

-- The cap, across templates: de-duplication off, five leads of one phone.
update notification_rules set dedupe_window = null, max_per_recipient_per_day = 3;
insert into landing_leads (id, name, email, phone, source)
select ('00000000-0000-0000-0000-0000000000c' || g)::uuid, 'Flood ' || g, 'flood' || g || '@mail.ru', '+7 747 000 00 01', 'proftest_main'
from generate_series(1, 5) g;
select results_eq(
  $$select policy, reason from pg_temp.claim((select array_agg(id) from notification_jobs
                                               where lead_id::text like '00000000-0000-0000-0000-0000000000c%' and channel = 'sms'))$$,
  $$values ('recipient_cap', 'this recipient already got 3 sms message(s) in the last 24 hours (max_per_recipient_per_day = 3)'),
           ('recipient_cap', 'this recipient already got 3 sms message(s) in the last 24 hours (max_per_recipient_per_day = 3)')$$,
  'three go, the fourth and fifth are over the cap');

-- --ignore-policies: an operator who means it.
update notification_rules set dedupe_window = interval '24 hours';
insert into notification_jobs (lead_id, channel, template, rule_id, ignore_policies, recipient, status, due_at)
values ('00000000-0000-0000-0000-0000000000b4', 'email', 'proftest_result_again',
        (select id from notification_rules where channel = 'email'), true, 'same@mail.ru', 'due', now());
select is((select count(*)::int from leadrelay_policy_verdicts((select array_agg(id) from notification_jobs
                                                                 where template = 'proftest_result_again'))), 0,
  'a job backfilled with --ignore-policies is never cancelled');

select * from finish();
rollback;
