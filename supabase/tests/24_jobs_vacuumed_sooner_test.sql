-- notification_jobs is vacuumed and analysed after a fiftieth of it changed
-- (20261221090000): the dead index entries of jobs gone from a state are
-- walked by every scan for work until a vacuum removes them.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(3);

select ok(
  (select 'autovacuum_vacuum_scale_factor=0.02' = any(reloptions) from pg_class
    where oid = 'public.notification_jobs'::regclass),
  'notification_jobs is vacuumed after 2 % of it changed');
select ok(
  (select 'autovacuum_analyze_scale_factor=0.02' = any(reloptions) from pg_class
    where oid = 'public.notification_jobs'::regclass),
  'and analysed after 2 % of it changed');
select ok(
  (select not exists (select 1 from unnest(coalesce(reloptions, '{}')) o where o like 'autovacuum%')
     from pg_class where oid = 'public.landing_leads'::regclass),
  'the landing''s table keeps the autovacuum settings its owner gave it');

select * from finish();
rollback;
