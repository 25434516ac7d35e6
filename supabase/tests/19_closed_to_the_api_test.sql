-- What the consent and reconciliation work added (and the webhooks' grouped
-- store) is leadrelay's own: the
-- API roles (anon, authenticated) may not call its functions or use its
-- sequences, under today's Supabase privileges and the old defaults, which
-- grant every new function and sequence to them.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(24);

select ok(not has_function_privilege(r, f, 'execute'), format('%s may not call %s', r, f))
from unnest(array['anon', 'authenticated']) r,
     unnest(array['public.leadrelay_forget(uuid[],boolean,text,bigint,text)',
                  'public.leadrelay_suppress(text,text,text,uuid,bigint,bigint,text)',
                  'public.leadrelay_suppress_from_event()',
                  'public.leadrelay_unsubscribe_key()',
                  'public.record_notification_events(text[],text[],text[],text[],timestamptz[],jsonb[],text[])',
                  'public.leadrelay_next_opening(bigint,timestamptz)',
                  'public.leadrelay_opening(bigint,time,time,text,smallint[],timestamptz)',
                  'leadrelay.recipient_hash(text,text)',
                  'leadrelay.suppression_reason(text,timestamptz,text)',
                  'leadrelay.day_names(smallint[])',
                  'leadrelay.calendar_hold_reason(timestamptz,time,time,text,smallint[],timestamptz)']) f
where exists (select 1 from pg_roles where rolname = r);

select ok(not has_sequence_privilege(r, 'public.notification_suppressions_id_seq', 'usage'),
          format('%s may not use the suppressions'' sequence', r))
from unnest(array['anon', 'authenticated']) r
where exists (select 1 from pg_roles where rolname = r);

select * from finish();
rollback;
