-- An SMS attempt whose worker vanished (its lease expired) may have been
-- taken by Mobizon: the rescue marks the job with the moment that attempt
-- began, so the next attempt looks the message up before sending. An email
-- needs no mark (Resend's idempotency key answers for it).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(9);

select has_column('public', 'notification_jobs', 'outcome_unknown_since', 'jobs carry the unknown attempt''s start');
select has_column('public', 'notification_jobs', 'recovered_at', 'and when a look-up found the message');
select has_column('public', 'notification_jobs', 'provider_campaign_id', 'and Mobizon''s campaign');

insert into public.landing_leads (name, email, phone, source) values ('A', 'a@mail.ru', '87051234567', 'proftest_main');
-- both claimed 10 minutes ago, their leases long over
update public.notification_jobs
   set status = 'sending', attempts = 1, locked_by = 'w:1',
       locked_until = now() - interval '1 minute', updated_at = now() - interval '10 minutes'
 where channel in ('email', 'sms');

select public.promote_due_notification_jobs();
select is((select outcome_unknown_since from public.notification_jobs where channel = 'sms'),
          now() - interval '10 minutes', 'the rescued SMS is in doubt since its claim');
select is((select status from public.notification_jobs where channel = 'sms'), 'due', 'and due again');
select is((select outcome_unknown_since from public.notification_jobs where channel = 'email'), null,
          'a rescued email is not marked');

-- a second rescue keeps the first attempt's start: the look-up must cover both
update public.notification_jobs
   set status = 'sending', attempts = 2, locked_by = 'w:2',
       locked_until = now() - interval '1 second', updated_at = now() - interval '2 minutes'
 where channel = 'sms';
select public.promote_due_notification_jobs();
select is((select outcome_unknown_since from public.notification_jobs where channel = 'sms'),
          now() - interval '10 minutes', 'the earliest unanswered attempt stays the start');

-- out of attempts: failed, still in doubt, so that `leadrelay retry` looks it up first
update public.notification_jobs
   set status = 'sending', attempts = max_attempts, locked_by = 'w:3',
       locked_until = now() - interval '1 second'
 where channel = 'sms';
select public.promote_due_notification_jobs();
select is((select status from public.notification_jobs where channel = 'sms'), 'failed', 'out of attempts it fails');
select isnt((select outcome_unknown_since from public.notification_jobs where channel = 'sms'), null,
            'and stays in doubt');

select * from finish();
rollback;
