-- record_notification_events: a group of events stored and applied as a set
-- ends exactly where the same events applied one by one end, and each
-- event's outcome is the one it would have had alone.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(13);

update notification_rules set delay = interval '1 hour', send_window_start = null, send_window_end = null;
-- 30 leads applied one by one ('one-…') and 30 as a group ('set-…'), each
-- with an email and an SMS sent
insert into landing_leads (name, email, phone, source)
select w || '-' || g, w || g || '@mail.ru', '+7 705 ' || lpad(g::text, 7, '0'), 'proftest_main'
  from generate_series(1, 30) g, unnest(array['one', 'set']) w;
update notification_jobs j
   set status = 'sent', sent_at = now(), finished_at = now(),
       provider_message_id = l.name || '-' || j.channel
  from landing_leads l
 where l.id = j.lead_id and j.channel in ('email', 'sms');

-- every state of both providers, in an order that mixes messages, ranks and
-- repeats (an event id is repeated now and then, as a redelivery)
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

create temporary table set_outcomes as
select o.i as n, o.outcome
  from (select record_notification_events(
                 array_agg(e.provider order by e.n),
                 array_agg('set-' || e.g || '-' || e.tag || '-' || e.channel order by e.n),
                 array_agg(e.provider || '.' || e.state order by e.n),
                 array_agg('set-' || e.g || '-' || e.channel order by e.n),
                 array_agg(e.at order by e.n),
                 array_agg(e.payload order by e.n),
                 array_agg(e.state order by e.n)) as outcomes
          from events e) r,
       unnest(r.outcomes) with ordinality as o(outcome, i);

select is((select count(*)::int from set_outcomes), (select count(*)::int from events),
          'one outcome per event');
select results_eq('select n, outcome from set_outcomes order by n', 'select n, outcome from one_outcomes order by n',
                  'each event''s outcome is the one it had alone');
select ok((select count(*) from set_outcomes where outcome = 'duplicate') > 0,
          'the group repeats some events');
select results_eq(
  $$select substr(l.name, 5), j.channel, j.delivery_status, j.delivery_status_at, j.last_error,
           l.email_delivery_status, l.email_error, l.sms_delivery_status, l.sms_error
      from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name like 'set-%' and j.channel in ('email', 'sms') order by 1, 2$$,
  $$select substr(l.name, 5), j.channel, j.delivery_status, j.delivery_status_at, j.last_error,
           l.email_delivery_status, l.email_error, l.sms_delivery_status, l.sms_error
      from notification_jobs j join landing_leads l on l.id = j.lead_id
     where l.name like 'one-%' and j.channel in ('email', 'sms') order by 1, 2$$,
  'every job and lead ends where one-by-one application leaves them');
select results_eq(
  $$select substr(provider_event_id, 5), event_type, delivery_status, applied_at is not null, job_id is not null
      from notification_events where provider_event_id like 'set-%' order by 1$$,
  $$select substr(provider_event_id, 5), event_type, delivery_status, applied_at is not null, job_id is not null
      from notification_events where provider_event_id like 'one-%' order by 1$$,
  'and the events are stored alike');

-- within one group: the first of the highest rank wins, a repeat is stored once
insert into landing_leads (name, email, source) values ('Tie', 'tie@mail.ru', 'proftest_main');
update notification_jobs j set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'tie'
  from landing_leads l where l.id = j.lead_id and l.name = 'Tie' and j.channel = 'email';
select is(record_notification_events(
            array['resend', 'resend', 'resend', 'resend'], array['t1', 't2', 't1', 't3'],
            array['email.delivered', 'email.opened', 'email.delivered', 'email.opened'],
            array['tie', 'tie', 'tie', 'tie'],
            array['2026-12-01 10:00+00', '2026-12-01 10:05+00', '2026-12-01 10:00+00', '2026-12-01 10:09+00']::timestamptz[],
            array['{}', '{}', '{}', '{}']::jsonb[], array['delivered', 'opened', 'delivered', 'opened']),
          array['applied', 'applied', 'duplicate', 'applied'], 'a repeat within the group is a duplicate');
select is((select (delivery_status, delivery_status_at) from notification_jobs where provider_message_id = 'tie'),
          ('opened'::text, '2026-12-01 10:05+00'::timestamptz), 'the first event of the highest rank wins');

-- events of a message not known yet wait; once it is, the next group applies them all
select is(record_notification_events(
            array['mobizon', 'resend'], array['w1', 'w2'], array['mobizon.delivered', 'contact.created'],
            array['later-sms', null], array[now(), now()], array['{}', '{}']::jsonb[], array['delivered', null]),
          array['pending', 'stored'], 'an unknown message waits; an event without a state is stored');
update notification_jobs j set provider_message_id = 'later-sms'
  from landing_leads l where l.id = j.lead_id and l.name = 'Tie' and j.channel = 'sms';
select is(record_notification_events(
            array['mobizon'], array['w3'], array['mobizon.accepted'], array['later-sms'], array[now()],
            array['{}']::jsonb[], array['accepted']),
          array['applied'], 'the next event of that message applies the waiting one with it');
select is((select delivery_status from notification_jobs where provider_message_id = 'later-sms'), 'delivered',
          'the best of them wins');
select is((select sms_delivery_status from landing_leads where name = 'Tie'), 'delivered',
          'and the lead mirrors it beside its email''s state');
select is((select email_delivery_status from landing_leads where name = 'Tie'), 'opened',
          'which is untouched');

select throws_ok($$select record_notification_events(array['resend'], array['x1', 'x2'], array['email.sent'],
                   array['m'], array[now()], array['{}']::jsonb[], array['sent'])$$,
                 '22023', null, 'arrays of different lengths are refused');

select * from finish();
rollback;
