-- The trigger writes its recipient checks out for speed; they must give the
-- same answers as leadrelay_email_problem(), leadrelay_phone_problem() and
-- leadrelay.recipient(), which backfill, retry and send-again use.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(3);

create temporary table samples (email text, phone text) on commit drop;
insert into samples values
  ('aigerim.test0@gmail.com', '+7 (705) 123-45-67'),
  ('  Aliya.Test1@gmail.com ', '8 702 765 43 21'),
  (null, null),
  ('', '   '),
  ('no-at-sign', '+7 (476) 123-45-6'),
  ('a..b@mail.ru', 'call me'),
  ('a@b', '+1 (555) 123-4567'),
  (repeat('a', 250) || '@x.kz', repeat('7', 70)),
  ('emoji😀@x', '()--'),
  ('x@y.kz''); drop table t; --', '7'' or ''1''=''1'),
  ('ok@mail.ru', '87051234567'),
  (E'a@b.kz\n', '705 123 45 67'),
  (E'\u00a0spaced@b.kz\u3000', E'\n+7 705 123 45 67\t'),
  (E'zero\u200bwidth@b.kz', '+7 727 250 00 00'),
  (E'a@b\u202ezk.kz', '+7 495 123 45 67'),
  ('landline@b.kz', '8 7172 55 55 55'),
  ('russian@b.ru', '+7 916 123 45 67');

-- every character leadrelay_trim() trims, around an address and a phone
insert into samples
select ch || 'Odd.Space@Example.KZ' || ch, ch || '+7 705 123 45 67' || ch
from unnest(string_to_array(E'\t|\n|\u000b|\f|\r| |\u0085|\u00a0|\u1680|\u2000|\u2001|\u2002|\u2003|\u2004|\u2005|\u2006|\u2007|\u2008|\u2009|\u200a|\u2028|\u2029|\u202f|\u205f|\u3000|\ufeff', '|')) ch;

insert into landing_leads (name, email, phone, source)
select 'sample', email, phone, 'proftest_check' from samples;

select is(
  (select count(*)::int
   from landing_leads l
   join notification_jobs e on e.lead_id = l.id and e.channel = 'email'
   where l.source = 'proftest_check'
     and (e.last_error is distinct from leadrelay_email_problem(l.email)
          or (e.status = 'invalid') is distinct from (leadrelay_email_problem(l.email) is not null)
          or e.recipient is distinct from leadrelay.recipient('email', l.email, l.phone))),
  0, 'email: the trigger and leadrelay_email_problem() agree');

select is(
  (select count(*)::int
   from landing_leads l
   join notification_jobs s on s.lead_id = l.id and s.channel = 'sms'
   where l.source = 'proftest_check'
     and (s.last_error is distinct from leadrelay_phone_problem(l.phone)
          or s.recipient is distinct from leadrelay.recipient('sms', l.email, l.phone))),
  0, 'phone: the trigger and leadrelay_phone_problem() / leadrelay.recipient() agree');

select is(
  (select count(distinct leadrelay.recipient_key('email', e.recipient))::int
   from landing_leads l
   join notification_jobs e on e.lead_id = l.id and e.channel = 'email'
   where l.source = 'proftest_check' and l.email ilike '%odd.space@example.kz%'),
  1, 'an address with any white space around it is one recipient to the policies');

select * from finish();
rollback;
