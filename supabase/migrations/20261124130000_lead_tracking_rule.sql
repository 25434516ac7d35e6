-- The sales dashboard's lead_tracking row is written by the worker as a job
-- like the others (channel lead_tracking), so a tracking database that is down
-- delays the row but never loses it. Due at once: the dashboard should see the
-- lead as soon as it arrives. The template names the source written there.
insert into public.notification_rules (source_pattern, channel, template, delay)
values ('proftest%', 'lead_tracking', 'proftest', interval '0')
on conflict on constraint notification_rules_pattern_channel_template_key do nothing;
