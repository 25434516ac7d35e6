-- What a lead's email and phone must look like to be sent to, and how
-- recipients are compared: the checks the trigger writes out, the helpers
-- the operator statements call, and the key the delivery policies compare.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

-- Trims every kind of white space, not only the ASCII space btrim removes:
-- an address pasted with a newline or a no-break space is still an address.
create or replace function public.leadrelay_trim(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  -- Unicode's White_Space characters (what Rust's char::is_whitespace
  -- means) and the byte-order mark; btrim with a set is much cheaper than a
  -- regular expression on every landing insert.
  select btrim(p_text, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff')
$$;

-- The digits of a typed phone, with the country code added to ten digits
-- of a Kazakh mobile number typed without it ('705 123 45 67'). A number
-- typed with '+' keeps the digits it has: '+7 (476) 123-45-6' is short.
create or replace function public.leadrelay_national_digits(p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when length(d) = 10 and left(d, 1) = '7' and left(public.leadrelay_trim(p_phone), 1) <> '+' then '7' || d
    else d
  end
  from (select regexp_replace(p_phone, '[^0-9]', '', 'g') as d) digits
$$;

-- Whether 11 digits starting with 7 are a mobile number: in Kazakhstan the
-- operator codes 70x, 747, 75x, 76x and 77x (71x and 72x are city landlines:
-- 727 Almaty, 717 Astana); in Russia 9xx. libphonenumber's metadata, which
-- the worker checks again before the request, says the same for these ranges.
create or replace function public.leadrelay_is_mobile(p_digits text)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select p_digits ~ '^7(7[04567]|9)'
$$;

-- People type '+7 (705) 123-45-67', '8 705 123 4567', '87051234567' or, without
-- the country code, '705 123 45 67': keep the digits, add the country code to
-- ten digits of a Kazakh mobile number typed without '+', turn a leading 8
-- into 7, and accept only 11 digits.
create or replace function public.leadrelay_phone_digits(p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_phone is null or length(p_phone) > 64 then null
    else (
      select case
        when length(d) = 11 and left(d, 1) = '8' then '7' || substr(d, 2)
        when length(d) = 11 and left(d, 1) = '7' then d
        else null
      end
      from (select public.leadrelay_national_digits(p_phone) as d) digits
    )
  end
$$;

create or replace function public.leadrelay_email_problem(p_email text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when e is null or e = '' then 'email is missing'
    when length(p_email) > 254 then 'email is longer than 254 characters'
    when e ~ '[\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]'
      then 'email contains invisible formatting characters (zero-width or direction marks)'
    when e !~ '^[^@[:space:]<>(),;:"]+@[^@[:space:]<>(),;:"]+\.[^@[:space:]<>(),;:".]{2,}$'
      then 'email is not an address of the form name@domain.tld'
    when e ~ '\.\.' then 'email has two dots in a row'
    else null
  end
  from (select public.leadrelay_trim(p_email) as e) trimmed
$$;

create or replace function public.leadrelay_phone_problem(p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_phone is null or public.leadrelay_trim(p_phone) = '' then 'phone is missing'
    when length(p_phone) > 64 then 'phone is longer than 64 characters'
    when public.leadrelay_trim(p_phone) ~ '[^0-9[:space:]()+.\-]' then 'phone contains characters other than digits, spaces, +, -, ( and )'
    else (
      select case
        when length(d) = 0 then 'phone has no digits'
        when length(d) <> 11 then format(
          'phone has %s digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)',
          length(d))
        when left(d, 1) not in ('7', '8') then 'phone does not start with the country code 7 (or 8)'
        when not public.leadrelay_is_mobile('7' || substr(d, 2))
          then 'phone is not a mobile number (a landline cannot receive an SMS)'
        else null
      end
      from (select public.leadrelay_national_digits(p_phone) as d) digits
    )
  end
$$;

create or replace function leadrelay.recipient(p_channel text, p_email text, p_phone text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case p_channel
    when 'email' then case when public.leadrelay_email_problem(p_email) is null
                           then public.leadrelay_trim(p_email) end
    when 'sms' then case when public.leadrelay_phone_problem(p_phone) is null
                         then public.leadrelay_phone_digits(p_phone) end
  end
$$;

create or replace function leadrelay.recipient_key(p_channel text, p_recipient text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_recipient is null then null
    when p_channel <> 'email' or position('@' in p_recipient) = 0 then lower(p_recipient)
    else (
      select case when domain in ('gmail.com', 'googlemail.com')
                  then replace(untagged, '.', '') || '@gmail.com'
                  else untagged || '@' || domain end
      from (select lower(pg_catalog.btrim(substr(p_recipient, 1, length(p_recipient) - strpos(reverse(p_recipient), '@')))) as local,
                   lower(pg_catalog.btrim(substr(p_recipient, length(p_recipient) - strpos(reverse(p_recipient), '@') + 2))) as domain) parts,
      lateral (select coalesce(nullif(split_part(parts.local, '+', 1), ''), parts.local) as untagged) tag
    )
  end
$$;
