-- Templates as data: every edit is a new version, and a version once used
-- is kept.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

create or replace function public.notification_templates_version()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'UPDATE'
     and (new.key, new.channel, new.locale, new.subject, new.html, new.text, new.body, new.resend_template)
         is not distinct from
         (old.key, old.channel, old.locale, old.subject, old.html, old.text, old.body, old.resend_template) then
    new.version := old.version;
    return new;
  end if;
  -- A new content gets the next number never used for this key and channel
  -- (a template deleted and made again does not reuse its old numbers).
  new.version := coalesce((select max(v.version) from public.notification_template_versions v
                            where v.key = new.key and v.channel = new.channel), 0) + 1;
  new.updated_at := now();
  return new;
end
$$;

create or replace function public.notification_templates_keep_version()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.notification_template_versions
    (key, channel, version, locale, subject, html, text, body, resend_template)
  values (new.key, new.channel, new.version, new.locale, new.subject, new.html, new.text,
          new.body, new.resend_template)
  on conflict (key, channel, version) do nothing;
  return null;
end
$$;

create or replace trigger notification_templates_version
  before insert or update on public.notification_templates
  for each row execute function public.notification_templates_version();

create or replace trigger notification_templates_keep_version
  after insert or update on public.notification_templates
  for each row execute function public.notification_templates_keep_version();
