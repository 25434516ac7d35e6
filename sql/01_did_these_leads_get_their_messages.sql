-- Did these leads get their email and SMS?
-- Paste into the Supabase SQL editor and put the names, emails or phones you
-- are asking about in the list below (any mix; case and phone punctuation do
-- not matter). One row per lead: each channel's job state, when it was sent,
-- what the provider reported afterwards, and why it failed if it did; a
-- message a send window holds says until when, and one cancelled by the
-- delivery policies says why (the error) and which lead got it instead.
with asked(term) as (
  values ('Айгерим'), ('aigerim.test0@gmail.com'), ('+7 (702) 765-43-21')
)
select s.created_at,
       s.name,
       s.email_status,          -- scheduled, due, sending, sent, failed, invalid, cancelled
       s.email_sent_at,
       s.email_delivery_status, -- delivered, bounced, complained, opened, clicked, …
       s.email_error,
       s.sms_status,
       s.sms_sent_at,
       s.sms_delivery_status,   -- delivered, undelivered, rejected, expired, …
       s.sms_error,
       s.email_held_until,      -- set while a send window holds the message
       s.sms_held_until,
       s.email_duplicate_of_lead, -- cancelled as a duplicate: the lead that got it
       s.sms_duplicate_of_lead,
       s.lead_id
from public.lead_notification_status s
join public.landing_leads l on l.id = s.lead_id
where exists (
  select 1 from asked a
  where lower(l.name) = lower(a.term)
     or lower(btrim(l.email)) = lower(btrim(a.term))
     or public.leadrelay_phone_digits(l.phone) = public.leadrelay_phone_digits(a.term)
)
order by s.created_at;
-- A lead with no row in notification_jobs (all states empty) arrived before
-- leadrelay or matched no rule: `leadrelay backfill --since …` sends its messages.
