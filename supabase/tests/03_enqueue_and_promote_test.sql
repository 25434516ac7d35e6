-- The trigger and the promotion, with the landing's own role.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(14);

set local role service_role;
insert into public.landing_leads (id, name, email, phone, source, metadata) values
  ('00000000-0000-0000-0000-000000000001', 'Айгерим', 'aigerim.test0@gmail.com', '+7 (705) 123-45-67', 'proftest_main', '{"answers": [3, 1, 4]}'),
  ('00000000-0000-0000-0000-000000000002', 'Нурлан', 'nurlan0000@mail.ru', '+7 (476) 123-45-6', 'proftest_main', '{}'),
  ('00000000-0000-0000-0000-000000000003', 'Other', 'o@mail.ru', '87051234567', 'webinar', null),
  ('00000000-0000-0000-0000-000000000004', null, null, null, null, null);
reset role;

select is((select count(*)::int from landing_leads), 4, 'every row was saved, the empty one too');
select is((select count(*)::int from notification_jobs where channel in ('email', 'sms')), 4, 'two proftest leads, two messages each');
select is((select count(*)::int from notification_jobs where lead_id = '00000000-0000-0000-0000-000000000003'), 0,
  'a source no rule matches gets no job');
select results_eq(
  $$select channel, status from notification_jobs where lead_id = '00000000-0000-0000-0000-000000000002' and channel <> 'lead_tracking' order by channel$$,
  $$values ('email', 'scheduled'), ('sms', 'invalid')$$,
  'the malformed phone is invalid, its email is still scheduled');
select ok(
  (select bool_and(j.due_at = l.created_at + interval '10 minutes')
   from notification_jobs j join landing_leads l on l.id = j.lead_id where j.channel in ('email', 'sms')),
  'due ten minutes after the lead was created');
select is(
  (select email_status || '/' || sms_status from lead_notification_status
   where lead_id = '00000000-0000-0000-0000-000000000002'),
  'scheduled/invalid', 'the view shows one row per lead with both channels');

select is(promote_due_notification_jobs(), 0, 'nothing is due yet');
update notification_jobs set due_at = now() - interval '1 second'
 where lead_id = '00000000-0000-0000-0000-000000000001';
select is(promote_due_notification_jobs(), 2, 'exactly the due jobs are promoted');
select is((select count(*)::int from notification_jobs where status = 'due' and channel <> 'lead_tracking'), 2, 'two due');
select is(promote_due_notification_jobs(), 0, 'a second call promotes nothing');

update notification_rules set delay = interval '1 hour' where channel = 'email';
insert into public.landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-000000000005', 'Later', 'l@mail.ru', '87051234567', 'proftest_b');
select is(
  (select j.due_at - l.created_at from notification_jobs j join landing_leads l on l.id = j.lead_id
   where j.lead_id = '00000000-0000-0000-0000-000000000005' and j.channel = 'email'),
  interval '1 hour', 'one UPDATE of the rule changes the delay of the next lead');

insert into public.landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-000000000001', 'dup', 'd@mail.ru', '87051234567', 'proftest_b')
  on conflict (id) do nothing;
select is((select count(*)::int from notification_jobs where lead_id = '00000000-0000-0000-0000-000000000001'), 3,
  'an insert that does nothing on conflict adds no job');

-- two enabled rules naming the same channel and template for one lead (two
-- patterns that both match): one job, from the rule with the lowest id
insert into notification_rules (source_pattern, channel, template, delay)
values ('proftest_tw%', 'email', 'proftest_result', interval '2 hours');
insert into public.landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-000000000006', 'Twice', 'tw@mail.ru', '87051234567', 'proftest_twice');
select is(
  (select count(*)::int from notification_jobs
   where lead_id = '00000000-0000-0000-0000-000000000006' and channel = 'email'),
  1, 'two rules for the same channel and template make one job');
select is(
  (select j.rule_id from notification_jobs j
   where j.lead_id = '00000000-0000-0000-0000-000000000006' and j.channel = 'email'),
  (select min(r.id) from notification_rules r
   where r.channel = 'email' and r.template = 'proftest_result' and r.enabled
     and 'proftest_twice' like r.source_pattern),
  'the job is the rule with the lowest id');

select * from finish();
rollback;
