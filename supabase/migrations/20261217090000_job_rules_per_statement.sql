-- A job's rules, checked once per statement instead of by CHECK constraints.
--
-- The fifteen CHECK constraints of notification_jobs held a job's rules (a
-- known status and channel, a lease while sending, a reason when failed, a
-- finish time when final, bounded texts). PostgreSQL keeps a constraint as
-- the stored text of its expression and, at every statement that writes the
-- table, reads that text back, plans and compiles it again: about 514,000
-- instructions a statement for these fifteen (13.6 kB of text), a third of
-- all the work of the landing's INSERT, which writes its three jobs in one
-- statement, and as much again in every claim and outcome of the worker
-- (callgrind, docs/benchmarks.md, 2026-12-03). The cost is paid per
-- statement, not per row, so fewer or shorter constraints barely help, and
-- one PL/pgSQL function called per row paid it back in the worker's
-- statements of a hundred rows.
--
-- Here the same rules are one query over the statement's new rows (a
-- transition table), in a trigger after each INSERT and UPDATE: its plan is
-- made once per session and kept, so a statement pays only to run it. A row
-- that breaks a rule fails its statement as the constraint did, with
-- SQLSTATE 23514, the message PostgreSQL writes and the constraint's name
-- (the name a caller or operator matched on, kept): nothing of it is
-- written. The only difference is when: at the end of the statement instead
-- of at the row, inside the same statement. NOT NULL stays in the columns.
--
-- The rules are listed once, below; the function is written from that list
-- (the common case asks one OR of the rules; only a statement that breaks
-- one asks which). The triggers are created before the constraints are
-- dropped, in the one transaction of this file, so no write goes unchecked.
-- The file takes one lock on the jobs, the strongest it needs, first, and
-- holds it for a moment; `leadrelay migrate` gives way to the landing's
-- writes while it waits (lock_timeout). Running it twice replaces the same
-- function and triggers and finds the constraints gone.

do $migration$
declare
  -- (the constraint's name, the rule as the CHECK wrote it), in the order
  -- PostgreSQL checked them (by name)
  v_rules constant text[][] := array[
    ['notification_jobs_attempts_check', 'j.attempts >= 0'],
    ['notification_jobs_batch_key_length', 'length(j.batch_key) <= 256'],
    ['notification_jobs_cancelled_by_policy',
     'j.cancelled_by is null or (j.cancelled_by in (''duplicate'', ''recipient_cap'', ''suppressed'') and j.status = ''cancelled'')'],
    ['notification_jobs_channel_check', 'j.channel in (''email'', ''sms'', ''lead_tracking'')'],
    ['notification_jobs_failed_because_check',
     'j.failed_because in (''contact'', ''content'', ''provider'', ''attempts'', ''in_doubt'')'],
    ['notification_jobs_failure_has_reason', 'j.status not in (''failed'', ''invalid'') or j.last_error is not null'],
    ['notification_jobs_final_has_finished_at',
     'j.status not in (''sent'', ''failed'', ''invalid'', ''cancelled'') or j.finished_at is not null'],
    ['notification_jobs_hold_reason_length', 'length(j.hold_reason) <= 500'],
    ['notification_jobs_last_error_length', 'length(j.last_error) <= 2000'],
    ['notification_jobs_max_attempts_check', 'j.max_attempts between 1 and 100'],
    ['notification_jobs_recipient_length', 'length(j.recipient) <= 320'],
    ['notification_jobs_sending_has_lease',
     'j.status <> ''sending'' or (j.locked_by is not null and j.locked_until is not null)'],
    ['notification_jobs_sent_has_sent_at', 'j.status <> ''sent'' or j.sent_at is not null'],
    ['notification_jobs_sent_unconfirmed_check',
     'j.sent_unconfirmed is null or (j.status = ''sent'' and length(j.sent_unconfirmed) <= 2000)'],
    ['notification_jobs_status_check',
     'j.status in (''scheduled'', ''due'', ''sending'', ''sent'', ''failed'', ''invalid'', ''cancelled'')']
  ];
  v_any_broken text;
  v_which text;
  v_role text;
  i integer;
begin
  -- the strongest lock of the file first, and once: creating the triggers
  -- and then dropping the constraints would take a lock that stops the
  -- landing's writes and then wait, holding it, for a stronger one (each
  -- wait up to lock_timeout, and a lock upgrade can deadlock); this way the
  -- landing waits at most one lock_timeout, then a moment
  lock table public.notification_jobs in access exclusive mode;

  -- a CHECK passes a rule that is NULL: only FALSE breaks it
  select string_agg(format('(%s) is false', v_rules[n][2]), E'\n      or ' order by n),
         string_agg(format('when (%s) is false then %L', v_rules[n][2], v_rules[n][1]), E'\n      ' order by n)
    into v_any_broken, v_which
    from generate_subscripts(v_rules, 1) n;

  execute format($fn$
create or replace function leadrelay.notification_jobs_check_rules()
returns trigger
language plpgsql
set search_path = ''
as $body$
-- Written by supabase/migrations/20261217090000_job_rules_per_statement.sql
-- from its list of the rules; the triggers notification_jobs_rules_insert
-- and notification_jobs_rules_update call it after each statement.
declare
  v_broken text;
begin
  perform from new_jobs j
    where %1$s
    limit 1;
  if not found then
    return null;
  end if;
  select case
      %2$s
    end
    into v_broken
    from new_jobs j
    where %1$s
    limit 1;
  raise exception using
    errcode = 'check_violation',
    message = format('new row for relation "notification_jobs" violates check constraint "%%s"', v_broken),
    constraint = v_broken,
    schema = 'public',
    table = 'notification_jobs';
end
$body$
$fn$, v_any_broken, v_which);

  -- a trigger's function is not called through the API, and firing it needs
  -- no EXECUTE: closed as the rest of leadrelay's functions are
  revoke all on function leadrelay.notification_jobs_check_rules() from public;
  foreach v_role in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
      execute format('revoke all on function leadrelay.notification_jobs_check_rules() from %I', v_role);
    end if;
  end loop;

  create or replace trigger notification_jobs_rules_insert
    after insert on public.notification_jobs
    referencing new table as new_jobs
    for each statement execute function leadrelay.notification_jobs_check_rules();
  create or replace trigger notification_jobs_rules_update
    after update on public.notification_jobs
    referencing new table as new_jobs
    for each statement execute function leadrelay.notification_jobs_check_rules();

  for i in 1 .. array_length(v_rules, 1) loop
    execute format('alter table public.notification_jobs drop constraint if exists %I', v_rules[i][1]);
  end loop;
end
$migration$;

comment on function leadrelay.notification_jobs_check_rules() is
  'The rules of a job (the former CHECK constraints of notification_jobs, by their names), checked over each statement''s new rows: SQLSTATE 23514 with the broken rule''s name.';
