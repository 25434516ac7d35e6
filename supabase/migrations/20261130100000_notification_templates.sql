-- Messages as data. The email and SMS a rule sends are rows of
-- notification_templates (key = the rule's `template`, and the channel),
-- edited in the SQL editor or the dashboard; every edit bumps `version`, and
-- every version is kept in notification_template_versions. A job fixes the
-- version it was first rendered with (and the values it was rendered from,
-- `sent_params`), so a retry, or a Resend batch sent again, is byte-identical
-- while an edit applies to the messages not yet tried.
--
-- Templates are MiniJinja (Jinja2) text: `{{ name }}`, `{% if name %}…{% endif %}`.
-- Variables: the lead's name (cleaned: no control characters, at most 60),
-- email, phone, source and created_at, the keys of its metadata, and the
-- rule's params (`product_url` defaults to PRODUCT_URL). A variable that does
-- not exist is an error, never an empty hole. HTML is escaped in `html`, not
-- in `subject`, `text` or `body`.

create table if not exists public.notification_templates (
  key text not null check (key ~ '^[a-z0-9_]{1,64}$'),
  channel text not null check (channel in ('email', 'sms')),
  locale text not null default 'ru' check (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$'),
  subject text check (length(subject) <= 998),
  html text check (length(html) <= 500000),
  text text check (length(text) <= 100000),
  body text check (length(body) <= 5000),
  -- the id or alias of a template hosted in Resend: the email is then sent as
  -- template {id, variables}, and html/text are not used
  resend_template text check (length(resend_template) between 1 and 256),
  version integer not null default 1 check (version >= 1),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (key, channel),
  constraint notification_templates_email_content check (
    channel <> 'email' or resend_template is not null or (subject is not null and html is not null)),
  constraint notification_templates_sms_content check (channel <> 'sms' or body is not null)
);

comment on table public.notification_templates is
  'The email and SMS each rule''s template key sends (MiniJinja text). Every edit bumps version; old versions stay in notification_template_versions for jobs already rendered with them.';

create table if not exists public.notification_template_versions (
  key text not null,
  channel text not null,
  version integer not null,
  locale text not null,
  subject text,
  html text,
  text text,
  body text,
  resend_template text,
  created_at timestamptz not null default now(),
  primary key (key, channel, version)
);

comment on table public.notification_template_versions is
  'Every version of every template, so a job retried after an edit sends what its first attempt sent.';

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

drop trigger if exists notification_templates_version on public.notification_templates;
create trigger notification_templates_version
  before insert or update on public.notification_templates
  for each row execute function public.notification_templates_version();
drop trigger if exists notification_templates_keep_version on public.notification_templates;
create trigger notification_templates_keep_version
  after insert or update on public.notification_templates
  for each row execute function public.notification_templates_keep_version();

-- Today's proftest email and SMS, word for word.
insert into public.notification_templates (key, channel, locale, subject, html, text)
values ('proftest_result', 'email', 'ru', 'Тест пройден. Получить продукт',
$html$<!doctype html><html lang="ru"><body style="font-family:Arial,sans-serif;line-height:1.5"><p>{% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}</p><p>Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:</p><p><a href="{{ product_url }}" style="display:inline-block;padding:12px 20px;background:#2f6fed;color:#fff;text-decoration:none;border-radius:6px">Получить продукт</a></p><p style="color:#666;font-size:13px">Если вы не проходили тест, просто проигнорируйте это письмо.</p></body></html>$html$,
$text${% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}

Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:
{{ product_url }}

Если вы не проходили тест, просто проигнорируйте это письмо.
$text$)
on conflict (key, channel) do nothing;
insert into public.notification_templates (key, channel, locale, body)
values ('proftest_result', 'sms', 'ru', $sms$Тест пройден! Получите ваш продукт: {{ product_url }}$sms$)
on conflict (key, channel) do nothing;

-- Per-rule values (`{"product_url": "…"}`), and the longest SMS a rule sends.
alter table public.notification_rules
  add column if not exists params jsonb not null default '{}'::jsonb,
  add column if not exists max_sms_segments integer not null default 3;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'notification_rules_params_object') then
    alter table public.notification_rules
      add constraint notification_rules_params_object check (jsonb_typeof(params) = 'object' and pg_column_size(params) <= 16384),
      add constraint notification_rules_max_sms_segments check (max_sms_segments between 1 and 10);
  end if;
end
$$;

-- The version a job was first rendered with.
alter table public.notification_jobs add column if not exists template_version integer;
comment on column public.notification_jobs.template_version is
  'The notification_templates version the job''s first claim fixed; every attempt renders it.';

alter table public.notification_templates enable row level security;
alter table public.notification_template_versions enable row level security;
revoke all on function public.notification_templates_version() from public;
revoke all on function public.notification_templates_keep_version() from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on table public.notification_templates, '
                     'public.notification_template_versions from %I', r);
      execute format('revoke all on function public.notification_templates_version(), '
                     'public.notification_templates_keep_version() from %I', r);
    end if;
  end loop;
end
$$;
