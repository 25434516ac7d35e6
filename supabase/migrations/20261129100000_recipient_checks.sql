-- Recipient checks as people really type, and as SMS really needs.
--
-- * White space of every kind is trimmed (a newline or a no-break space
--   pasted after an address made it invalid: btrim strips only spaces).
-- * An address holding invisible formatting characters (zero-width, bidi
--   marks) is refused: it would look like another address to a person.
-- * A ten-digit Kazakh mobile number typed without the country code
--   ('705 123 45 67') is accepted.
-- * An SMS needs a mobile number: landlines ('+7 727 …', '+7 495 …') are
--   refused with a reason instead of being sent an SMS they cannot receive.
--
-- The trigger still writes its checks out, the three new helpers included:
-- a call to a function with a pinned search_path costs a configuration save
-- and restore on every landing insert.
-- supabase/tests/04_… checks that trigger and helpers agree, and
-- tests/it/sql_checks.rs that the helpers and the worker's own checks agree.

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

create or replace function public.enqueue_lead_notifications()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- leadrelay_trim(), written out (see below)
  v_email text := btrim(new.email, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff');
  v_phone text := btrim(new.phone, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff');
  v_digits text;
  v_email_problem text;
  v_phone_problem text;
  v_inserted bigint;
begin
  begin
    -- The checks of leadrelay_email_problem() and leadrelay_phone_problem(),
    -- written out here: a call to a function with its own SET search_path
    -- costs a configuration save and restore, which on every landing insert
    -- was most of this trigger's cost. supabase/tests/ checks both agree.
    v_email_problem := case
      when v_email is null or v_email = '' then 'email is missing'
      when length(new.email) > 254 then 'email is longer than 254 characters'
      -- one expression in the common case: the format characters are
      -- refused by the shape, and named only when the shape fails
      when v_email !~ '^[^@[:space:]<>(),;:"\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]+@[^@[:space:]<>(),;:"\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]+\.[^@[:space:]<>(),;:".\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]{2,}$'
        then case when v_email ~ '[\u00AD\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]'
                  then 'email contains invisible formatting characters (zero-width or direction marks)'
                  else 'email is not an address of the form name@domain.tld' end
      when v_email ~ '\.\.' then 'email has two dots in a row'
    end;
    if v_phone is null or v_phone = '' then
      v_phone_problem := 'phone is missing';
    elsif length(new.phone) > 64 then
      v_phone_problem := 'phone is longer than 64 characters';
    elsif v_phone ~ '[^0-9[:space:]()+.\-]' then
      v_phone_problem := 'phone contains characters other than digits, spaces, +, -, ( and )';
    else
      -- leadrelay_national_digits(), written out
      v_digits := regexp_replace(v_phone, '[^0-9]', '', 'g');
      if length(v_digits) = 10 and left(v_digits, 1) = '7' and left(v_phone, 1) <> '+' then
        v_digits := '7' || v_digits;
      end if;
      v_phone_problem := case
        when length(v_digits) = 0 then 'phone has no digits'
        when length(v_digits) <> 11 then format(
          'phone has %s digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)',
          length(v_digits))
        when left(v_digits, 1) not in ('7', '8') then 'phone does not start with the country code 7 (or 8)'
        -- leadrelay_is_mobile(), written out
        when not (substr(v_digits, 2, 1) = '9'
                  or (substr(v_digits, 2, 1) = '7' and substr(v_digits, 3, 1) in ('0', '4', '5', '6', '7')))
          then 'phone is not a mobile number (a landline cannot receive an SMS)'
      end;
      if v_phone_problem is null then
        v_digits := '7' || substr(v_digits, 2);
      end if;
    end if;

    with rules as (
      select r.channel, r.template, r.delay,
             case r.channel
               when 'email' then v_email_problem
               when 'sms' then v_phone_problem
             end as problem
      from public.notification_rules r
      where r.enabled and new.source like r.source_pattern
    ), inserted as (
      insert into public.notification_jobs
        (lead_id, channel, template, recipient, status, due_at, last_error, finished_at)
      select new.id, rules.channel, rules.template,
             case
               when rules.problem is not null then null
               when rules.channel = 'email' then v_email
               when rules.channel = 'sms' then v_digits
             end,
             case
               when rules.problem is not null then 'invalid'
               when rules.delay = interval '0' then 'due'
               else 'scheduled'
             end,
             coalesce(new.created_at, now()) + rules.delay,
             rules.problem,
             case when rules.problem is not null then now() end
      from rules
      on conflict on constraint notification_jobs_lead_channel_template_key do nothing
      returning id
    )
    select count(*) from inserted into strict v_inserted;
    -- No NOTIFY here, even for jobs due at once: PostgreSQL serialises the
    -- commits of all transactions that notify, which would make concurrent
    -- landing inserts wait for each other. Those jobs are found by the
    -- worker's next sweep (SWEEP_INTERVAL, 30 s by default).

    -- Show an unusable address where the dashboard looks. Rare, so the extra
    -- update of the new row costs nothing in the common case.
    if v_inserted > 0 and (v_email_problem is not null or v_phone_problem is not null) then
      update public.landing_leads l
         set email_error = case when exists (
               select 1 from public.notification_jobs j
               where j.lead_id = new.id and j.channel = 'email' and j.status = 'invalid')
             then v_email_problem else l.email_error end,
             sms_error = case when exists (
               select 1 from public.notification_jobs j
               where j.lead_id = new.id and j.channel = 'sms' and j.status = 'invalid')
             then v_phone_problem else l.sms_error end
       where l.id = new.id;
    end if;
  exception when others then
    raise warning 'leadrelay: lead % was saved but its notifications were not enqueued: % (SQLSTATE %)',
      new.id, sqlerrm, sqlstate;
  end;
  return null;
end
$$;


revoke all on function public.leadrelay_trim(text), public.leadrelay_national_digits(text),
  public.leadrelay_is_mobile(text) from public;
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on function public.leadrelay_trim(text), public.leadrelay_national_digits(text), '
                     'public.leadrelay_is_mobile(text) from %I', r);
    end if;
  end loop;
end
$$;
