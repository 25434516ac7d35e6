-- Messages as data: every edit of a template bumps its version, every
-- version is kept (a job retried after an edit renders the one it started
-- with), and version numbers are never reused.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(14);

-- seeded as version 1; 20261210090000 added the unsubscribe link (version 2)
select is((select version from public.notification_templates where key = 'proftest_result' and channel = 'email'), 2,
  'the proftest email is at version 2: seeded, then given its unsubscribe link');
select is((select body from public.notification_templates where key = 'proftest_result' and channel = 'sms'),
  'Тест пройден! Получите ваш продукт: {{ product_url }}', 'and the SMS word for word');

update public.notification_templates set subject = 'Новая тема' where key = 'proftest_result' and channel = 'email';
select is((select version from public.notification_templates where key = 'proftest_result' and channel = 'email'), 3,
  'an edit bumps the version');
select is((select array_agg(version order by version) from public.notification_template_versions
            where key = 'proftest_result' and channel = 'email'), array[1, 2, 3],
  'and every version is kept');
select is((select subject from public.notification_template_versions
            where key = 'proftest_result' and channel = 'email' and version = 1), 'Тест пройден. Получить продукт',
  'version 1 keeps its words');

update public.notification_templates set subject = 'Новая тема' where key = 'proftest_result' and channel = 'email';
select is((select version from public.notification_templates where key = 'proftest_result' and channel = 'email'), 3,
  'an update that changes nothing keeps the version');
update public.notification_templates set version = 1 where key = 'proftest_result' and channel = 'email';
select is((select version from public.notification_templates where key = 'proftest_result' and channel = 'email'), 3,
  'the version cannot be set back by hand');

delete from public.notification_templates where key = 'proftest_result' and channel = 'email';
insert into public.notification_templates (key, channel, subject, html) values ('proftest_result', 'email', 'S', '<p>H</p>');
select is((select version from public.notification_templates where key = 'proftest_result' and channel = 'email'), 4,
  'a template made again does not reuse an old number');

select throws_ok($$insert into public.notification_templates (key, channel, html) values ('x', 'email', '<p>')$$,
  '23514', null, 'an email needs a subject and html (or a Resend template)');
select lives_ok($$insert into public.notification_templates (key, channel, resend_template) values ('y', 'email', 'hosted-y')$$,
  'a Resend-hosted email needs neither');
select throws_ok($$insert into public.notification_templates (key, channel) values ('z', 'sms')$$,
  '23514', null, 'an SMS needs a body');

select is((select params from public.notification_rules order by id limit 1), '{}'::jsonb, 'rules have params, empty by default');
select throws_ok($$update public.notification_rules set params = '[1]'$$, '23514', null, 'params are an object');
select throws_ok($$update public.notification_rules set max_sms_segments = 0$$, '23514', null,
  'max_sms_segments is between 1 and 10');

select * from finish();
rollback;
