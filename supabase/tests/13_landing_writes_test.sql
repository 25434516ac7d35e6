-- The landing's writes: nothing leadrelay adds to landing_leads needs a
-- privilege the writing role might lack. PostgreSQL evaluates index
-- expressions and predicates, constraints, defaults, generated columns,
-- policies and triggers' WHEN conditions with the writer's privileges (a
-- trigger's own function is checked only when the trigger is created).
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(5);

create temporary view landing_write_functions as
select evaluated_by as what, fn::oid as fn from leadrelay.landing_write_functions();

-- The check can fail: the released console's index is found.
savepoint released_console;
create index landing_leads_as_released_idx on public.landing_leads (lower(public.leadrelay_trim(email)));
select is(
  array(select what || ': ' || fn::regprocedure::text from landing_write_functions
         where not has_function_privilege('public', fn, 'execute')),
  array['index public.landing_leads_as_released_idx: leadrelay_trim(text)'],
  'the check finds an index that calls a function the writer may not execute');
rollback to savepoint released_console;

select is(
  array(select what || ': ' || fn::regprocedure::text from landing_write_functions
         where not has_function_privilege('public', fn, 'execute') order by 1),
  '{}'::text[],
  'every function a write of landing_leads evaluates is executable by every role');

select is(
  array(select what || ': ' || fn::regprocedure::text from landing_write_functions
         where fn in (select p.oid from pg_proc p
                       where p.pronamespace = 'public'::regnamespace and p.proname like 'leadrelay%')
         order by 1),
  '{}'::text[],
  'no index, constraint, default or policy of landing_leads calls a function of leadrelay''s');

-- The email index's expression trims exactly what leadrelay_trim() trims:
-- each Unicode White_Space character and the byte-order mark, and nothing
-- else (a zero-width space is not white space).
create temporary table odd_spaces on commit drop as
select chr(c) as ch
  from unnest(array[9, 10, 11, 12, 13, 32, 133, 160, 5760, 8192, 8193, 8194, 8195, 8196, 8197,
                    8198, 8199, 8200, 8201, 8202, 8232, 8233, 8239, 8287, 12288, 65279,
                    8203, 8204, 8205, 8206, 65, 95]) as c;

create function pg_temp.email_key(p_email text) returns text language plpgsql as $$
declare
  v_expr text;
  v_key text;
begin
  v_expr := substring(pg_get_indexdef('public.landing_leads_email_lookup_idx'::regclass)
                      from '\((lower\(.*\))\)$');
  execute format('select %s from (select $1::text as email) s', v_expr) into v_key using p_email;
  return v_key;
end
$$;

select is(
  (select count(*) from odd_spaces
    where pg_temp.email_key(ch || ch || 'Trim.Me@Example.KZ' || ch)
          is distinct from lower(public.leadrelay_trim(ch || ch || 'Trim.Me@Example.KZ' || ch))),
  0::bigint,
  'the email index trims as leadrelay_trim() does');

-- The landing's role writes, and its lead gets its jobs.
set local role service_role;
insert into public.landing_leads (name, email, phone, source)
values ('Тест', ' writes@example.kz ', '+7 (705) 904-44-67', 'proftest_main');
update public.landing_leads set email = 'writes2@example.kz' where email = ' writes@example.kz ';
reset role;

select is(
  (select count(*) from notification_jobs j join landing_leads l on l.id = j.lead_id
    where l.email = 'writes2@example.kz'),
  3::bigint,
  'a lead written as service_role has its email, SMS and dashboard jobs');

select * from finish();
rollback;
