-- The policies' look-up writes leadrelay.recipient_key() out with built-in
-- functions (an SQL function with its own search_path is not inlined, and
-- every job written through the index called it). The index's expression,
-- read from the catalog and evaluated here, must give what the function
-- gives for every kind of recipient; the gate compares by the same
-- expression, so it must find the jobs through that index.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(5);

create temporary table samples (channel text, recipient text);
insert into samples values
  ('email', 'Victim+1@Gmail.com'), ('email', 'v.i.c.t.i.m+promo@googlemail.com'),
  ('email', 'victim@gmail.com'), ('email', 'a.b+x@mail.ru'), ('email', 'A.B@Mail.RU'),
  ('email', '+only@mail.ru'), ('email', 'no-at-sign'), ('email', null), ('email', ''),
  ('email', 'two@at@signs.kz'), ('email', ' spaced @ mail.ru '), ('email', '@'),
  ('email', 'trailing@'), ('email', '@leading.kz'), ('email', 'Айгерим+тег@Почта.КЗ'),
  ('email', 'dots.in.local+tag+more@gmail.com'), ('email', '+@gmail.com'),
  ('sms', '77051234567'), ('sms', 'ABC'), ('sms', null), ('lead_tracking', 'X@Y.kz');

create function pg_temp.lookup_key(p_channel text, p_recipient text) returns text
language plpgsql as $$
declare
  v_expr text := (select pg_get_expr(i.indexprs, i.indrelid)
                  from pg_index i where i.indexrelid = 'public.notification_jobs_recipient_lookup_idx'::regclass);
  v_key text;
begin
  execute format('select %s from (select $1 as channel, $2 as recipient) s', v_expr)
    into v_key using p_channel, p_recipient;
  return v_key;
end
$$;

select is(
  (select count(*)::int from samples s
   where pg_temp.lookup_key(s.channel, s.recipient)
         is distinct from leadrelay.recipient_key(s.channel, s.recipient)),
  0, 'the look-up index''s expression is leadrelay.recipient_key() for every kind of recipient');

select is(
  (select count(*)::int from pg_index i
   where i.indrelid = 'public.notification_jobs'::regclass
     and pg_get_indexdef(i.indexrelid) ~ 'recipient_key\('),
  0, 'no index of notification_jobs calls an SQL function per written job');

-- The gate's look-ups use the index (the expression is the same). With
-- sequential scans off from the gate's first call: its plans are made then
-- and kept for the session (force_generic_plan), so a setting changed after
-- it would not reach them unless something made them again (an autovacuum's
-- ANALYZE of the jobs, or not: the test then depended on the timing).
set local enable_seqscan = off;
update notification_rules set delay = interval '0', dedupe_window = interval '24 hours',
       max_per_recipient_per_day = 5, send_window_start = null, send_window_end = null;
insert into landing_leads (id, name, email, phone, source) values
  ('00000000-0000-0000-0000-0000000000e1', 'One', 'Dup.Licate+a@gmail.com', '+7 705 111 22 33', 'proftest_main'),
  ('00000000-0000-0000-0000-0000000000e2', 'Two', 'duplicate+b@googlemail.com', '+7 705 111 22 34', 'proftest_main');
update notification_jobs set status = 'sending', cleared_at = now(), locked_by = 'w', locked_until = now() + interval '1 minute'
 where lead_id = '00000000-0000-0000-0000-0000000000e1' and channel = 'email';
select results_eq(
  $$select g.verdict, g.duplicate_of from leadrelay_gate(array(select id from notification_jobs
      where lead_id = '00000000-0000-0000-0000-0000000000e2' and channel = 'email')) g$$,
  $$values ('duplicate'::text, '00000000-0000-0000-0000-0000000000e1'::uuid)$$,
  'the gate finds the same person behind a dotted, tagged Gmail address');

-- The gate's look-ups go through the index: its expression is the one the
-- gate compares by (with sequential scans off, a look-up that did not match
-- the index's expression would scan the table instead).
create temporary table scans_before as
  select pg_stat_get_xact_numscans('public.notification_jobs_recipient_lookup_idx'::regclass) as n;
create temporary table gate_run as
  select * from leadrelay_gate(array(select id from notification_jobs
    where lead_id = '00000000-0000-0000-0000-0000000000e2' and channel in ('email', 'sms')));
select cmp_ok(
  pg_stat_get_xact_numscans('public.notification_jobs_recipient_lookup_idx'::regclass),
  '>=', (select n from scans_before) + 2,
  'the gate''s de-duplication and cap look-ups use the recipient look-up index');
select results_eq(
  $$select verdict from gate_run$$, $$values ('duplicate'::text)$$,
  'through the index, the same verdicts: the email is a duplicate, the SMS to another phone goes');

select * from finish();
rollback;
