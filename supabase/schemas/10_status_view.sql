-- The view the SQL editor reads: each lead with its messages' states.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

-- ---------------------------------------------------------------------------
-- lead_notification_status with its columns named (a `select *` in a view
-- is fixed to the columns of the day it was created) and the hold read
-- through leadrelay.held_until(). The same columns, in the same order.
-- ---------------------------------------------------------------------------
create or replace view public.lead_notification_status
with (security_invoker = true)
as
select l.id as lead_id,
       l.name,
       l.source,
       l.created_at,
       e.status as email_status,
       e.due_at as email_due_at,
       e.sent_at as email_sent_at,
       e.delivery_status as email_delivery_status,
       e.attempts as email_attempts,
       e.last_error as email_error,
       s.status as sms_status,
       s.due_at as sms_due_at,
       s.sent_at as sms_sent_at,
       s.delivery_status as sms_delivery_status,
       s.attempts as sms_attempts,
       s.last_error as sms_error,
       leadrelay.held_until(e.status, e.held_until, e.due_at) as email_held_until,
       e.hold_reason as email_hold_reason,
       e.cancelled_by as email_cancelled_by,
       e.duplicate_of_lead as email_duplicate_of_lead,
       leadrelay.held_until(s.status, s.held_until, s.due_at) as sms_held_until,
       s.hold_reason as sms_hold_reason,
       s.cancelled_by as sms_cancelled_by,
       s.duplicate_of_lead as sms_duplicate_of_lead
from public.landing_leads l
left join lateral (
  select j.status, j.due_at, j.sent_at, j.delivery_status, j.attempts, j.last_error,
         j.held_until, j.hold_reason, j.cancelled_by, j.duplicate_of_lead
  from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'email'
  order by j.id limit 1) e on true
left join lateral (
  select j.status, j.due_at, j.sent_at, j.delivery_status, j.attempts, j.last_error,
         j.held_until, j.hold_reason, j.cancelled_by, j.duplicate_of_lead
  from public.notification_jobs j
  where j.lead_id = l.id and j.channel = 'sms'
  order by j.id limit 1) s on true;
