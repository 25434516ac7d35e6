-- A database role for `leadrelay serve` with only the rights it needs, instead
-- of the postgres superuser. Run once, as postgres, in the SQL editor, after
-- `leadrelay migrate`; replace the password. Then connect the service as
--   postgres://leadrelay_worker.<project-ref>:<password>@<host>:5432/postgres
-- (Supabase's session-mode pooler names the role with the project suffix; a
-- direct connection uses plain leadrelay_worker).
-- `leadrelay migrate` still runs as postgres: it creates and alters tables.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'leadrelay_worker') then
    create role leadrelay_worker login password 'change-me-to-a-long-random-secret';
  end if;
end
$$;

grant usage on schema public to leadrelay_worker;

-- The queue: claim, record outcomes, store webhook events; the console's
-- "Ask Resend and Mobizon" records what it finds and creates what it sends.
grant select, insert, update on public.notification_jobs to leadrelay_worker;
grant usage on sequence public.notification_jobs_id_seq to leadrelay_worker;
grant select, insert, update on public.notification_events to leadrelay_worker;
-- a busy webhook's events are stored in the inbox, answered, then applied
-- from it (apply_notification_event_inbox runs as its owner)
grant insert on public.notification_event_inbox to leadrelay_worker;
grant usage on sequence public.notification_event_inbox_id_seq to leadrelay_worker;
grant select on public.notification_rules to leadrelay_worker;
-- The messages: read the templates and every kept version.
grant select on public.notification_templates, public.notification_template_versions to leadrelay_worker;
grant usage on sequence public.notification_events_id_seq to leadrelay_worker;

-- The leads: read them, and write only the mirror columns.
grant select on public.landing_leads to leadrelay_worker;
grant update (email_sent, email_sent_at, email_error, sms_sent, sms_sent_at, sms_error,
              email_delivery_status, sms_delivery_status)
  on public.landing_leads to leadrelay_worker;
grant select on public.lead_notification_status to leadrelay_worker;

-- The functions the worker and the webhooks call (they run as their owner).
grant execute on function public.promote_due_notification_jobs(integer, interval) to leadrelay_worker;
-- the promotion of the release before, for its workers during an upgrade
grant execute on function public.promote_due_notification_jobs(integer) to leadrelay_worker;
grant execute on function public.leadrelay_gate(bigint[]) to leadrelay_worker;
-- the gate of the release before, for its workers during an upgrade
grant execute on function public.leadrelay_policy_verdicts(bigint[]) to leadrelay_worker;
grant execute on function public.record_notification_event(text, text, text, text, timestamptz, jsonb, text) to leadrelay_worker;
grant execute on function public.record_notification_events(text[], text[], text[], text[], timestamptz[], jsonb[], text[]) to leadrelay_worker;
grant execute on function public.apply_notification_event_inbox(integer) to leadrelay_worker;
grant execute on function public.apply_pending_notification_events(text, text) to leadrelay_worker;
grant execute on function public.apply_all_pending_notification_events(integer) to leadrelay_worker;
grant execute on function public.leadrelay_delivery_rank(text) to leadrelay_worker;
grant execute on function public.leadrelay_phone_digits(text) to leadrelay_worker;
grant execute on function public.leadrelay_email_problem(text) to leadrelay_worker;
grant execute on function public.leadrelay_phone_problem(text) to leadrelay_worker;
-- what those three call: `leadrelay retry` and the console's search and
-- retry run them as this role
grant execute on function public.leadrelay_trim(text), public.leadrelay_national_digits(text),
  public.leadrelay_is_mobile(text) to leadrelay_worker;
grant execute on function leadrelay.recipient(text, text, text) to leadrelay_worker;
grant execute on function public.prune_leadrelay_history(integer) to leadrelay_worker;

-- The suppression list: the console shows and lifts suppressions, the
-- unsubscribe page and operators add them (leadrelay_suppress); serve reads
-- the unsubscribe links' key at start.
grant select on public.notification_suppressions to leadrelay_worker;
grant update (lifted_at, lifted_by, lift_reason) on public.notification_suppressions to leadrelay_worker;
grant execute on function public.leadrelay_suppress(text, text, text, uuid, bigint, bigint, text),
  public.leadrelay_unsubscribe_key() to leadrelay_worker;
-- the console's "Forget this person" (it runs as its owner: this role may
-- not change what people typed)
grant execute on function public.leadrelay_forget(uuid[], boolean, text, bigint, text) to leadrelay_worker;
grant execute on function leadrelay.recipient_key(text, text), leadrelay.recipient_hash(text, text),
  leadrelay.suppression_reason(text, timestamptz, text) to leadrelay_worker;

-- The ops console: its sessions, and the audit of every action.
grant select, insert, update, delete on public.ops_sessions to leadrelay_worker;
grant select, insert on public.ops_audit to leadrelay_worker;
grant usage on sequence public.ops_sessions_id_seq, public.ops_audit_id_seq to leadrelay_worker;

-- `serve` checks at start that the migrations are applied.
grant usage on schema leadrelay to leadrelay_worker;
grant select on leadrelay.schema_migrations to leadrelay_worker;

-- RLS is on for leadrelay's tables (and may be on landing_leads): these
-- policies let this one role through, and nobody else.
drop policy if exists leadrelay_worker_jobs on public.notification_jobs;
create policy leadrelay_worker_jobs on public.notification_jobs
  for all to leadrelay_worker using (true) with check (true);
drop policy if exists leadrelay_worker_events on public.notification_events;
create policy leadrelay_worker_events on public.notification_events
  for all to leadrelay_worker using (true) with check (true);
drop policy if exists leadrelay_worker_event_inbox on public.notification_event_inbox;
create policy leadrelay_worker_event_inbox on public.notification_event_inbox
  for insert to leadrelay_worker with check (true);
drop policy if exists leadrelay_worker_rules on public.notification_rules;
create policy leadrelay_worker_rules on public.notification_rules
  for select to leadrelay_worker using (true);
drop policy if exists leadrelay_worker_templates on public.notification_templates;
create policy leadrelay_worker_templates on public.notification_templates
  for select to leadrelay_worker using (true);
drop policy if exists leadrelay_worker_template_versions on public.notification_template_versions;
create policy leadrelay_worker_template_versions on public.notification_template_versions
  for select to leadrelay_worker using (true);
drop policy if exists leadrelay_worker_sessions on public.ops_sessions;
create policy leadrelay_worker_sessions on public.ops_sessions
  for all to leadrelay_worker using (true) with check (true);
drop policy if exists leadrelay_worker_audit on public.ops_audit;
create policy leadrelay_worker_audit on public.ops_audit
  for all to leadrelay_worker using (true) with check (true);
drop policy if exists leadrelay_worker_suppressions on public.notification_suppressions;
create policy leadrelay_worker_suppressions on public.notification_suppressions
  for all to leadrelay_worker using (true) with check (true);
drop policy if exists leadrelay_worker_closed_dates on public.notification_closed_dates;
create policy leadrelay_worker_closed_dates on public.notification_closed_dates
  for select to leadrelay_worker using (true);
grant select on public.notification_closed_dates to leadrelay_worker;
drop policy if exists leadrelay_worker_leads on public.landing_leads;
create policy leadrelay_worker_leads on public.landing_leads
  for all to leadrelay_worker using (true) with check (true);

-- lead_tracking, when it is in this database (otherwise run these two lines in
-- the tracking project, for the role LEAD_TRACKING_DATABASE_URL uses):
--   grant select, insert, update on public.lead_tracking to leadrelay_worker;
--   create policy leadrelay_worker_tracking on public.lead_tracking for all to leadrelay_worker using (true) with check (true);
