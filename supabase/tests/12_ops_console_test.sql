-- The ops console's tables: sessions stored as digests with their CSRF
-- token, an audit that only takes known actions, both closed to the
-- browser-facing roles; and the indexes its pages read through.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(23);

select has_table('public', 'ops_sessions', 'sessions are kept in the database');
select has_table('public', 'ops_audit', 'actions are recorded');
select ok((select relrowsecurity from pg_class where oid = 'public.ops_sessions'::regclass), 'ops_sessions has row level security');
select ok((select relrowsecurity from pg_class where oid = 'public.ops_audit'::regclass), 'ops_audit has row level security');

-- What a session row must be.
select throws_ok(
  $$insert into ops_sessions (token_hash, csrf_token, expires_at) values ('\x00', repeat('c', 43), now() + interval '1 hour')$$,
  '23514', null, 'a token hash is a SHA-256 (32 bytes), never the token');
select throws_ok(
  $$insert into ops_sessions (token_hash, csrf_token, expires_at) values (sha256('x'), 'short', now() + interval '1 hour')$$,
  '23514', null, 'a CSRF token is long enough to guess never');
select lives_ok(
  $$insert into ops_sessions (token_hash, csrf_token, client_addr, expires_at) values (sha256('a session'), repeat('c', 43), '203.0.113.7', now() + interval '12 hours')$$,
  'a session is stored');
select throws_ok(
  $$insert into ops_sessions (token_hash, csrf_token, expires_at) values (sha256('a session'), repeat('d', 43), now() + interval '1 hour')$$,
  '23505', null, 'one row per cookie value');
select throws_ok(
  $$insert into ops_sessions (token_hash, csrf_token, user_agent, expires_at) values (sha256('ua'), repeat('c', 43), repeat('u', 600), now())$$,
  '23514', null, 'an oversized user agent is refused, not stored');

-- What an audit row must be.
select throws_ok(
  $$insert into ops_audit (actor, action, job_ids, changed_job_ids, lead_ids) values ('console', 'delete_everything', '{}', '{}', '{}')$$,
  '23514', null, 'only known actions are recorded');
select throws_ok(
  $$insert into ops_audit (actor, action, job_ids, changed_job_ids, lead_ids, reason) values ('console', 'cancel', '{1}', '{1}', '{}', repeat('r', 501))$$,
  '23514', null, 'a reason is at most 500 characters');
select lives_ok(
  $$insert into ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason) values (1, 'console', 'cancel', '{1}', '{1}', array['00000000-0000-0000-0000-000000000001'::uuid], 'asked not to be contacted')$$,
  'an action is recorded');

-- Closed to the browser's roles: they read nothing and write nothing.
select ok(not has_table_privilege('anon', 'public.ops_sessions', 'SELECT, INSERT, UPDATE, DELETE'), 'anon reaches no session');
select ok(not has_table_privilege('authenticated', 'public.ops_sessions', 'SELECT, INSERT, UPDATE, DELETE'), 'nor does authenticated');
select ok(not has_table_privilege('anon', 'public.ops_audit', 'SELECT, INSERT, UPDATE, DELETE')
          and not has_table_privilege('authenticated', 'public.ops_audit', 'SELECT, INSERT, UPDATE, DELETE'),
          'nobody from the browser reaches the audit');

-- The indexes the console and /metrics read through.
select has_index('public', 'landing_leads', 'landing_leads_created_at_idx', 'leads by arrival');
select has_index('public', 'landing_leads', 'landing_leads_email_lookup_idx', 'leads by email');
select has_index('public', 'landing_leads', 'landing_leads_phone_digits_idx', 'leads by phone digits');
select has_index('public', 'landing_leads', 'landing_leads_name_trgm_idx', 'leads by a name fragment');
select has_index('public', 'notification_jobs', 'notification_jobs_failed_idx', 'failed jobs by channel');
select has_index('public', 'notification_jobs', 'notification_jobs_sent_at_idx', 'sends by time');

-- The phone index holds the digits as typed: each way one number is typed
-- lands on one of the three forms the search looks up.
select is(
  (select array_agg(distinct translate(p, translate(p, '0123456789', ''), '') = any(array[d, '8' || substr(d, 2), substr(d, 2)]))
     from unnest(array['+7 (705) 904-44-67', '8 705 904 44 67', '87059044467', '705 904 44 67', '+77059044467']) p,
          (select public.leadrelay_phone_digits('8 705 904 44 67') as d) n),
  array[true],
  'every typed form of a number is one the phone search looks up');

-- The index's translate() keeps what regexp_replace(p, '[^0-9]', '', 'g')
-- keeps, for every kind of text a phone column may hold.
select is(
  (select count(*)::int from unnest(array[
     '+7 (705) 904-44-67', '', '   ', 'abc', '٣٤٥ 705', '８７０５', '7\u0000'::text, '+7-705-904-44-67 ext. 12',
     E'\u00a0705\t904\n4467', '🙂 8705 9044467', '0123456789', null]) p
   where translate(p, translate(p, '0123456789', ''), '') is distinct from regexp_replace(p, '[^0-9]', '', 'g')),
  0,
  'the phone index''s digits are regexp_replace''s, on any text');

select * from finish();
rollback;
