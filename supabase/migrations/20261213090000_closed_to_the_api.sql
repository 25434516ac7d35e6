-- The functions and the sequence that the suppressions, unsubscribe links,
-- working days and forgetting added are leadrelay's own, closed to the API
-- roles as the rest are: Supabase's default privileges grant every new
-- function (and, in older projects, every new sequence) in these schemas to
-- anon and authenticated, which revoking from PUBLIC does not undo; through
-- PostgREST anyone with the anon key could otherwise forget a person, read
-- the unsubscribe key or suppress an address. The worker's role gets what it
-- needs in sql/06_worker_role.sql.
--
-- This file does not touch landing_leads.
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function '
                     'public.leadrelay_forget(uuid[], boolean, text, bigint, text), '
                     'public.leadrelay_suppress(text, text, text, uuid, bigint, bigint, text), '
                     'public.leadrelay_suppress_from_event(), '
                     'public.leadrelay_unsubscribe_key(), '
                     'public.leadrelay_next_opening(bigint, timestamptz), '
                     'public.leadrelay_opening(bigint, time, time, text, smallint[], timestamptz), '
                     'leadrelay.recipient_hash(text, text), '
                     'leadrelay.suppression_reason(text, timestamptz, text), '
                     'leadrelay.day_names(smallint[]), '
                     'leadrelay.calendar_hold_reason(timestamptz, time, time, text, smallint[], timestamptz) '
                     'from %I', r);
      execute format('revoke all on sequence public.notification_suppressions_id_seq from %I', r);
    end if;
  end loop;
end
$$;
