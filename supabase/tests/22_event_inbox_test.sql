-- apply_notification_event_inbox: events answered once stored in the inbox
-- and applied from there, a few at a time, end exactly where the same
-- events applied one by one end; the inbox keeps their received time, is
-- emptied as it is applied, and is closed to the API roles.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(23);

update notification_rules set delay = interval '1 hour', send_window_start = null, send_window_end = null;
-- 30 leads applied one by one ('one-…') and 30 through the inbox ('inb-…'),
-- each with an email and an SMS sent
insert into landing_leads (name, email, phone, source)
select w || '-' || g, w || g || '@mail.ru', '+7 705 ' || lpad(g::text, 7, '0'), 'proftest_main'
  from generate_series(1, 30) g, unnest(array['one', 'inb']) w;
update notification_jobs j
   set status = 'sent', sent_at = now(), finished_at = now(),
       provider_message_id = l.name || '-' || j.channel
  from landing_leads l
 where l.id = j.lead_id and l.name not like 'inb-3_' and j.channel in ('email', 'sms');
-- (inb-30's messages are not recorded yet: its events will wait)
-- every state of both providers, messages, ranks and redeliveries mixed
create temporary table events as
select row_number() over (order by md5(g::text || s.state)) as n,
       g, s.provider, s.state, s.channel,
       case when (row_number() over (order by md5(g::text || s.state))) % 7 = 0 then 'again' else s.state end as tag,
       now() - make_interval(secs => (row_number() over (order by md5(s.state || g::text)))) as at,
       case when s.state in ('bounced') then '{"data": {"bounce": {"message": "Mailbox full", "type": "Transient"}}}'::jsonb
            else '{}'::jsonb end as payload
  from generate_series(1, 30) g,
       (values ('resend', 'sent', 'email'), ('resend', 'delivered', 'email'), ('resend', 'opened', 'email'),
               ('resend', 'bounced', 'email'), ('resend', 'clicked', 'email'),
               ('mobizon', 'accepted', 'sms'), ('mobizon', 'delivered', 'sms'),
               ('mobizon', 'undelivered', 'sms')) s(provider, state, channel)
 where (g + length(s.state)) % 4 <> 0;

create temporary table one_outcomes as
select e.n, record_notification_event(e.provider, 'one-' || e.g || '-' || e.tag || '-' || e.channel,
                                      e.provider || '.' || e.state, 'one-' || e.g || '-' || e.channel,
                                      e.at, e.payload, e.state) as outcome
  from (select * from events order by n) e;

-- as the webhook's groups write them: in arrival order, received an hour ago
insert into notification_event_inbox
  (provider, provider_event_id, event_type, provider_message_id, occurred_at, payload, delivery_status, received_at)
select e.provider, 'inb-' || e.g || '-' || e.tag || '-' || e.channel, e.provider || '.' || e.state,
       'inb-' || e.g || '-' || e.channel, e.at, e.payload, e.state, now() - interval '1 hour'
  from events e order by e.n;

select is(apply_notification_event_inbox(7), 7, 'a call takes as many as its limit');
do $$
begin
  while public.apply_notification_event_inbox(7) > 0 loop
  end loop;
end
$$;
select is((select count(*)::int from notification_event_inbox), 0, 'calls until one takes nothing empty the inbox');
select is(apply_notification_event_inbox(), 0, 'and an empty inbox takes nothing');
select is((select count(*)::int from notification_events where provider_event_id like 'inb-%'),
          (select count(*)::int from notification_events where provider_event_id like 'one-%'),
          'every event is stored once, repeats too');

select results_eq(
  $$select substr(l.name, 5), j.channel, j.delivery_status, j.delivery_status_at, j.last_error,
           l.email_delivery_status, l.email_error, l.sms_delivery_status, l.sms_error
      from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name like 'inb-%' and l.name not like 'inb-3_' and j.channel in ('email', 'sms') order by 1, 2$$,
  $$select substr(l.name, 5), j.channel, j.delivery_status, j.delivery_status_at, j.last_error,
           l.email_delivery_status, l.email_error, l.sms_delivery_status, l.sms_error
      from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name like 'one-%' and l.name not like 'one-3_' and j.channel in ('email', 'sms') order by 1, 2$$,
  'every job and lead ends where one-by-one application leaves them, though a message''s events span calls');
select results_eq(
  $$select substr(provider_event_id, 5), event_type, delivery_status, applied_at is not null, job_id is not null
      from notification_events where provider_event_id like 'inb-%' and provider_event_id not like 'inb-3_-%' order by 1$$,
  $$select substr(provider_event_id, 5), event_type, delivery_status, applied_at is not null, job_id is not null
      from notification_events where provider_event_id like 'one-%' and provider_event_id not like 'one-3_-%' order by 1$$,
  'and the events are stored alike');
select is((select count(*)::int from notification_events
            where provider_event_id like 'inb-%' and received_at > now() - interval '59 minutes'), 0,
          'each keeps the time it was received, not the time it was applied');

-- a message not known yet: its events wait in notification_events, as an
-- event answered at once would
select ok((select count(*) from notification_events where provider_event_id like 'inb-30-%') > 0,
          'the events of a message not recorded yet are stored');
select is((select count(*)::int from notification_events
            where provider_event_id like 'inb-30-%' and (applied_at is not null or job_id is not null)), 0,
          'and wait for it');
update notification_jobs j set provider_message_id = 'inb-30-' || j.channel
  from landing_leads l where l.id = j.lead_id and l.name = 'inb-30' and j.channel in ('email', 'sms');
select ok(apply_all_pending_notification_events() > 0, 'the sweep applies them once it is');
select results_eq(
  $$select j.channel, j.delivery_status from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name = 'inb-30' and j.channel in ('email', 'sms') order by 1$$,
  $$select j.channel, j.delivery_status from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name = 'one-30' and j.channel in ('email', 'sms') order by 1$$,
  'to the state one-by-one application reached');

-- forgetting a person reaches their events still in the inbox
insert into notification_event_inbox (provider, provider_event_id, event_type, provider_message_id, payload, delivery_status)
values ('resend', 'inb-forget', 'email.bounced', 'inb-1-email',
        '{"data": {"to": ["inb1@mail.ru"], "bounce": {"message": "no such user inb1@mail.ru"}}}', 'bounced');
select ok((select events from leadrelay_forget(array[(select id from landing_leads where name = 'inb-1')],
                                               false, 'pgtap', null, null)) > 0,
          'forget counts the events it erased');
select is((select payload from notification_event_inbox where provider_event_id = 'inb-forget'),
          '{"erased": true}'::jsonb, 'including one still in the inbox');
delete from notification_event_inbox;

-- an event that cannot be applied even on its own stays, with its error,
-- and does not hold the others back
alter table notification_events add constraint pgtap_refuse check (provider_event_id <> 'inb-poison');
insert into notification_event_inbox (provider, provider_event_id, event_type, provider_message_id, payload, delivery_status)
values ('resend', 'inb-before', 'email.clicked', 'inb-2-email', '{}', 'clicked'),
       ('resend', 'inb-poison', 'email.clicked', 'inb-2-email', '{}', 'clicked'),
       ('resend', 'inb-after', 'email.sent', 'inb-3-email', '{}', 'sent');
select is(apply_notification_event_inbox(), 3, 'a call holding an event that cannot be applied takes all three');
select is((select count(*)::int from notification_events where provider_event_id in ('inb-before', 'inb-after')), 2,
          'the others are applied');
select ok((select failed_at is not null and last_error like '%pgtap_refuse%(SQLSTATE 23514)'
             from notification_event_inbox where provider_event_id = 'inb-poison'),
          'the one that cannot is kept with its error');
select is(apply_notification_event_inbox(), 0, 'and skipped from then on');
alter table notification_events drop constraint pgtap_refuse;
update notification_event_inbox set failed_at = null, last_error = null;
select is(apply_notification_event_inbox(), 1, 'until its error is cleared: then it is applied');

select throws_ok('select apply_notification_event_inbox(0)', '22023', null, 'a limit under 1 is refused');
select throws_ok($$insert into notification_event_inbox (provider, provider_event_id, event_type, payload)
                   values ('sendgrid', 'x', 'y', '{}')$$, '23514', null,
                 'the inbox refuses what notification_events would refuse');

select ok(not coalesce(bool_or(has_table_privilege(r, 'public.notification_event_inbox', 'select, insert, update, delete')), false),
          'the API roles may not read or write the inbox')
  from unnest(array['anon', 'authenticated']) r
 where exists (select 1 from pg_roles where rolname = r);
select ok(not coalesce(bool_or(has_sequence_privilege(r, 'public.notification_event_inbox_id_seq', 'usage, select, update')), false),
          'nor use its sequence')
  from unnest(array['anon', 'authenticated']) r
 where exists (select 1 from pg_roles where rolname = r);
select ok(not coalesce(bool_or(has_function_privilege(r, f, 'execute')), false),
          'nor call what stores and applies it')
  from unnest(array['anon', 'authenticated']) r,
       unnest(array['public.apply_notification_event_inbox(integer)',
                    'public.record_notification_events(text[],text[],text[],text[],timestamptz[],jsonb[],text[],timestamptz[])']) f
 where exists (select 1 from pg_roles where rolname = r);

select * from finish();
rollback;
