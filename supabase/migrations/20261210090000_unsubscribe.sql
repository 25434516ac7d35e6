-- One-click unsubscribe (RFC 8058), which Gmail's and Yahoo's sender rules
-- require of promotional mail: every email carries `List-Unsubscribe` (an
-- https link under PUBLIC_URL) and `List-Unsubscribe-Post:
-- List-Unsubscribe=One-Click`, and templates get `unsubscribe_url` for the
-- link in the body. The link's token is an HMAC under UNSUBSCRIBE_SECRET
-- when it is set, else under the key below, generated once here: changing
-- either makes every link already sent stop working.
--
-- The seeded proftest email gets the link at its end, unless a marketer
-- edited it (its text is then left alone: add the link yourself). An email
-- rendered without a link (no PUBLIC_URL, a rule marked transactional) is
-- today's byte for byte.
--
-- This file does not touch landing_leads.
alter table public.leadrelay_settings add column if not exists unsubscribe_key text;
update public.leadrelay_settings
   set unsubscribe_key = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
 where unsubscribe_key is null;
comment on column public.leadrelay_settings.unsubscribe_key is
  'The key unsubscribe links are signed with when UNSUBSCRIBE_SECRET is not set; changing it breaks every link already sent.';

-- The key, made when missing, for `serve` (the worker's role reads no
-- settings itself). Closed to everyone else.
create or replace function public.leadrelay_unsubscribe_key()
returns text
language sql
volatile
security definer
set search_path = ''
as $$
  update public.leadrelay_settings
     set unsubscribe_key = coalesce(unsubscribe_key,
                                    replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
   where id
  returning unsubscribe_key
$$;
revoke all on function public.leadrelay_unsubscribe_key() from public;

update public.notification_templates
   set html = $html$<!doctype html><html lang="ru"><body style="font-family:Arial,sans-serif;line-height:1.5"><p>{% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}</p><p>Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:</p><p><a href="{{ product_url }}" style="display:inline-block;padding:12px 20px;background:#2f6fed;color:#fff;text-decoration:none;border-radius:6px">Получить продукт</a></p><p style="color:#666;font-size:13px">Если вы не проходили тест, просто проигнорируйте это письмо.</p>{% if unsubscribe_url %}<p style="color:#666;font-size:13px"><a href="{{ unsubscribe_url }}" style="color:#666">Отписаться от писем</a></p>{% endif %}</body></html>$html$,
       text = $text${% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}

Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:
{{ product_url }}

Если вы не проходили тест, просто проигнорируйте это письмо.{% if unsubscribe_url %}

Отписаться от писем: {{ unsubscribe_url }}{% endif %}
$text$
 where key = 'proftest_result' and channel = 'email'
   and html = $html$<!doctype html><html lang="ru"><body style="font-family:Arial,sans-serif;line-height:1.5"><p>{% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}</p><p>Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:</p><p><a href="{{ product_url }}" style="display:inline-block;padding:12px 20px;background:#2f6fed;color:#fff;text-decoration:none;border-radius:6px">Получить продукт</a></p><p style="color:#666;font-size:13px">Если вы не проходили тест, просто проигнорируйте это письмо.</p></body></html>$html$
   and text = $text${% if name %}{{ name }}, здравствуйте!{% else %}Здравствуйте!{% endif %}

Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:
{{ product_url }}

Если вы не проходили тест, просто проигнорируйте это письмо.
$text$;

-- The trigger function and the list's helpers are leadrelay's own: closed
-- to the API roles like the rest (the worker's role gets what it needs in
-- sql/06_worker_role.sql).
revoke all on function public.leadrelay_suppress_from_event() from public;
revoke all on function leadrelay.recipient_hash(text, text) from public;
revoke all on function leadrelay.suppression_reason(text, timestamptz, text) from public;
