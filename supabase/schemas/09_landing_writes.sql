-- What a write of landing_leads evaluates, for the check that the landing's
-- role may run all of it.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

create or replace function leadrelay.landing_write_functions()
returns table (evaluated_by text, fn regprocedure)
language sql
stable
set search_path = ''
as $$
  with deps as (
    select 'index ' || i.indexrelid::regclass::text as what, d.refclassid, d.refobjid
      from pg_catalog.pg_index i
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_class'::regclass and d.objid = i.indexrelid
     where i.indrelid = 'public.landing_leads'::regclass
    union all
    select 'constraint ' || c.conname, d.refclassid, d.refobjid
      from pg_catalog.pg_constraint c
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_constraint'::regclass and d.objid = c.oid
     where c.conrelid = 'public.landing_leads'::regclass
    union all
    select 'default of ' || a.attname, d.refclassid, d.refobjid
      from pg_catalog.pg_attrdef ad
      join pg_catalog.pg_attribute a on a.attrelid = ad.adrelid and a.attnum = ad.adnum
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_attrdef'::regclass and d.objid = ad.oid
     where ad.adrelid = 'public.landing_leads'::regclass
    union all
    select 'policy ' || p.polname, d.refclassid, d.refobjid
      from pg_catalog.pg_policy p
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_policy'::regclass and d.objid = p.oid
     where p.polrelid = 'public.landing_leads'::regclass
    union all
    -- a trigger's own function is checked when the trigger is created, not
    -- when it fires; only its WHEN condition is evaluated as the writer
    select 'trigger ' || t.tgname, d.refclassid, d.refobjid
      from pg_catalog.pg_trigger t
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_trigger'::regclass and d.objid = t.oid
     where t.tgrelid = 'public.landing_leads'::regclass and not t.tgisinternal
       and not (d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = t.tgfoid)
  )
  select deps.what, f.oid::regprocedure
    from deps
    join pg_catalog.pg_proc f
      on (deps.refclassid = 'pg_catalog.pg_proc'::regclass and f.oid = deps.refobjid)
      or (deps.refclassid = 'pg_catalog.pg_operator'::regclass
          and f.oid = (select o.oprcode::oid from pg_catalog.pg_operator o where o.oid = deps.refobjid))
   order by 1, 2
$$;
