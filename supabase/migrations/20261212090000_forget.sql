-- Forgetting a person (`leadrelay forget`, the console's "Forget this
-- person"): the audit takes the action's name. The row it writes says that
-- a person was forgotten, by whom and when, and holds no data of theirs.
--
-- This file does not touch landing_leads; ops_audit is locked for the
-- moment its CHECK is swapped.
alter table public.ops_audit drop constraint if exists ops_audit_action_check;
alter table public.ops_audit add constraint ops_audit_action_check
  check (action in ('retry', 'send_now', 'cancel', 'bulk_retry', 'cancel_rule', 'send_again',
                    'reconcile', 'backfill', 'suppress', 'unsuppress', 'forget'));
