-- Send windows on working days: leadrelay_next_opening skips the days a
-- rule is closed (its send_days, its closed dates), in the rule's zone,
-- across a daylight-saving change in a zone that has one.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(12);

-- Kazakhstan's operator rule on the SMS: Monday to Friday, 09:00–21:00 Almaty.
update notification_rules set send_window_start = '09:00', send_window_end = '21:00',
       time_zone = 'Asia/Almaty', send_days = '{1,2,3,4,5}'
 where channel = 'sms';
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-04 21:30+05'),
          '2026-12-07 09:00+05'::timestamptz, 'Friday 21:30 → Monday 09:00');
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-05 12:00+05'),
          '2026-12-07 09:00+05'::timestamptz, 'Saturday noon → Monday 09:00');
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-03 08:15+05'),
          '2026-12-03 09:00+05'::timestamptz, 'a Thursday morning → the same day''s opening');
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-03 12:00+05'),
          '2026-12-03 12:00+05'::timestamptz, 'inside the window: at once');

-- a public holiday on that Monday
insert into notification_closed_dates (rule_id, day, note)
select id, '2026-12-07', 'a holiday' from notification_rules where channel = 'sms';
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-04 21:30+05'),
          '2026-12-08 09:00+05'::timestamptz, 'a holiday on the Monday → Tuesday 09:00');
select is(leadrelay_next_opening((select id from notification_rules where channel = 'sms' limit 1),
                                 '2026-12-07 10:00+05'),
          '2026-12-08 09:00+05'::timestamptz, 'during the holiday → the next working day');

-- A zone with daylight saving: Berlin moved to summer time on Sunday 29 March 2026.
update notification_rules set send_window_start = '09:00', send_window_end = '18:00',
       time_zone = 'Europe/Berlin', send_days = '{1,2,3,4,5}'
 where channel = 'email';
select is(leadrelay_next_opening((select id from notification_rules where channel = 'email' limit 1),
                                 '2026-03-27 18:30+01'),
          '2026-03-30 09:00+02'::timestamptz, 'Friday evening in winter time → Monday 09:00 summer time');

-- an overnight window belongs to the evening it opens on
update notification_rules set send_window_start = '22:00', send_window_end = '06:00',
       time_zone = 'Asia/Almaty', send_days = '{5}'
 where channel = 'email';
select is(leadrelay_next_opening((select id from notification_rules where channel = 'email' limit 1),
                                 '2026-12-05 02:00+05'),
          '2026-12-05 02:00+05'::timestamptz, 'Saturday 02:00 is inside Friday night''s window');
select is(leadrelay_next_opening((select id from notification_rules where channel = 'email' limit 1),
                                 '2026-12-05 07:00+05'),
          '2026-12-11 22:00+05'::timestamptz, 'after it closes: the next Friday evening');

-- a rule without a calendar: at once; the hold names the days
select is(leadrelay_next_opening((select id from notification_rules where channel = 'lead_tracking' limit 1),
                                 '2026-12-05 12:00+05'),
          '2026-12-05 12:00+05'::timestamptz, 'a rule without a window is always open');
select matches(leadrelay.calendar_hold_reason('2026-12-05 12:00+05', '09:00', '21:00', 'Asia/Almaty',
                                              '{1,2,3,4,5}', '2026-12-07 09:00+05'),
  'outside the send window 09:00–21:00 Asia/Almaty on Mon–Fri: held until 2026-12-07 09:00',
  'the hold says which days');
select throws_ok($$update notification_rules set send_days = '{0,8}' where channel = 'sms'$$,
  '23514', null, 'days are ISO numbers 1 to 7');

select * from finish();
rollback;
