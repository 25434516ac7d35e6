-- The landing's INSERT, lighter: the trigger that makes a lead's jobs.
--
-- Measured with callgrind (3,000 of the benchmark's landing INSERTs in
-- `postgres --single`, docs/benchmarks.md, 2026-12-03), two parts of the
-- trigger's work bought nothing:
--
-- - ON CONFLICT DO NOTHING on the jobs' unique key made every job a
--   speculative insertion (a look-up of the key, a token, a confirmation):
--   27,000 instructions a lead. A lead inserted now has no jobs yet (the
--   delete trigger removes a deleted lead's), so the only conflict left was
--   two enabled rules naming the same channel and template, which DISTINCT
--   ON now settles before the INSERT: the rule with the lowest id, one job.
--   The data-modifying CTE and its count go too (GET DIAGNOSTICS).
-- - regexp_replace(v_phone, '[^0-9]', '', 'g') ran a regular expression
--   for each phone: translate(v, translate(v, '0123456789', ''), '') keeps
--   the same digits (every other character is removed) for a tenth of it.
--
-- Together 5 % of the landing's INSERT. Nothing else changes: the same
-- checks, reasons, statuses and warnings. CREATE OR REPLACE keeps the
-- function's owner and grants and takes no lock on landing_leads.

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
      -- leadrelay_national_digits(), written out; the characters that are
      -- not digits removed with translate(), which returns what
      -- regexp_replace(v_phone, '[^0-9]', '', 'g') does without running a
      -- regular expression
      v_digits := translate(v_phone, translate(v_phone, '0123456789', ''), '');
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

    -- One job per channel and template: rules naming the same pair give
    -- the one with the lowest id (the unique key would refuse the second).
    -- A plain INSERT: ON CONFLICT's speculative insertion cost a fortieth of
    -- the landing's INSERT, and a lead inserted now has no jobs yet (its
    -- delete trigger removes a deleted lead's jobs).
    insert into public.notification_jobs
      (lead_id, channel, template, rule_id, recipient, status, due_at, last_error, finished_at)
    with rules as (
      select distinct on (r.channel, r.template) r.id, r.channel, r.template, r.delay, r.send_window_start is not null as has_window,
             case r.channel
               when 'email' then v_email_problem
               when 'sms' then v_phone_problem
             end as problem
      from public.notification_rules r
      where r.enabled and new.source like r.source_pattern
      order by r.channel, r.template, r.id
    )
    select new.id, rules.channel, rules.template, rules.id,
           case
             when rules.problem is not null then null
             when rules.channel = 'email' then v_email
             when rules.channel = 'sms' then v_digits
           end,
           case
             when rules.problem is not null then 'invalid'
             -- a window is applied by the promotion, so such a job waits for it
             when rules.delay = interval '0' and not rules.has_window then 'due'
             else 'scheduled'
           end,
           coalesce(new.created_at, now()) + rules.delay,
           rules.problem,
           case when rules.problem is not null then now() end
    from rules;
    get diagnostics v_inserted = row_count;
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
