-- "Send again": an email that reached a final failure after it was sent
-- (bounced, suppressed by the provider, undelivered) goes again, to the
-- lead's current address, behind the same confirmation, gate and audit as a
-- retry. The audit takes the new action's name.
--
-- This file does not touch landing_leads; ops_audit is locked for the
-- moment its CHECK is swapped (`leadrelay migrate` gives way if it must
-- wait).
alter table public.ops_audit drop constraint if exists ops_audit_action_check;
alter table public.ops_audit add constraint ops_audit_action_check
  check (action in ('retry', 'send_now', 'cancel', 'bulk_retry', 'cancel_rule', 'send_again'));
