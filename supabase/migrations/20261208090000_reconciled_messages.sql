-- Messages found at the provider: `leadrelay reconcile` (and `backfill`,
-- which asks the providers first by default) records an email or SMS the
-- system before leadrelay sent as a job of leadrelay's own, `sent` at the
-- provider's time, with the provider's id, so later webhooks and the status
-- poll apply to it. `reconciled_at` says when it was found; it stays null on
-- every job leadrelay sent itself, which is how the console, `leadrelay
-- status` and an SQL query tell the two apart.
--
-- The audit takes the two commands' names: every job they write carries an
-- ops_audit row.
--
-- This file does not touch landing_leads. notification_jobs is locked for
-- the moment a nullable column without a default is added (no rewrite);
-- ops_audit for the moment its CHECK is swapped (`leadrelay migrate` gives
-- way if it must wait).
alter table public.notification_jobs add column if not exists reconciled_at timestamptz;

comment on column public.notification_jobs.reconciled_at is
  'When leadrelay reconcile found this message at the provider (sent by the system before leadrelay); null for every message leadrelay sent itself.';

alter table public.ops_audit drop constraint if exists ops_audit_action_check;
alter table public.ops_audit add constraint ops_audit_action_check
  check (action in ('retry', 'send_now', 'cancel', 'bulk_retry', 'cancel_rule', 'send_again',
                    'reconcile', 'backfill'));
