-- The funnel the ops page draws, for any window: leads → email sent →
-- delivered; SMS sent → delivered. Change the interval to taste.
select count(distinct l.id) as leads,
       count(distinct l.id) filter (where j.channel = 'email' and j.status = 'sent') as email_sent,
       count(distinct l.id) filter (where j.channel = 'email' and j.delivery_status in ('delivered', 'opened', 'clicked')) as email_delivered,
       count(distinct l.id) filter (where j.channel = 'sms' and j.status = 'sent') as sms_sent,
       count(distinct l.id) filter (where j.channel = 'sms' and j.delivery_status = 'delivered') as sms_delivered
from public.landing_leads l
left join public.notification_jobs j on j.lead_id = l.id
where l.created_at > now() - interval '7 days';
