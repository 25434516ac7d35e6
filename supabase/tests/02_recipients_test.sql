-- What the trigger accepts as an email address and a Kazakhstan phone number.
begin;
create schema if not exists tap;
create extension if not exists pgtap with schema tap;
set local search_path = public, tap;

select plan(22);

select is(leadrelay_phone_digits('+7 (705) 123-45-67'), '77051234567', 'international form with punctuation');
select is(leadrelay_phone_digits('8 705 123 4567'), '77051234567', 'a leading 8 becomes 7');
select is(leadrelay_phone_digits('87051234567'), '77051234567', 'bare digits with 8');
select is(leadrelay_phone_digits('+7-777-111-22-33'), '77771112233', 'dashes');
select is(leadrelay_phone_digits('+7 (476) 123-45-6'), null, 'the incident''s 10-digit phone has no digits to send');
select is(leadrelay_phone_digits(null), null, 'null');
select is(leadrelay_phone_digits(repeat('7', 100000)), null, 'an enormous value');

select is(leadrelay_phone_problem('+7 (705) 123-45-67'), null, 'a good phone has no problem');
select matches(leadrelay_phone_problem('+7 (476) 123-45-6'), '10 digits', 'ten digits is explained');
select is(leadrelay_phone_problem(null), 'phone is missing', 'missing');
select is(leadrelay_phone_problem('  '), 'phone is missing', 'blank');
select is(leadrelay_phone_problem(repeat('1', 65)), 'phone is longer than 64 characters', 'too long');
select matches(leadrelay_phone_problem('call me'), 'characters other than digits', 'letters');
select is(leadrelay_phone_problem('+1 (555) 123-4567'), 'phone does not start with the country code 7 (or 8)', 'another country');
select is(leadrelay_phone_problem('()--'), 'phone has no digits', 'punctuation only');

select is(leadrelay_email_problem('aigerim.test0@gmail.com'), null, 'a good address');
select is(leadrelay_email_problem('Aliya.Test1@gmail.com'), null, 'capitals are fine');
select is(leadrelay_email_problem(null), 'email is missing', 'missing');
select is(leadrelay_email_problem(repeat('a', 250) || '@x.kz'), 'email is longer than 254 characters', 'too long');
select is(leadrelay_email_problem('no-at-sign.kz'), 'email is not an address of the form name@domain.tld', 'no @');
select is(leadrelay_email_problem('a@b@c.kz'), 'email is not an address of the form name@domain.tld', 'two @');
select is(leadrelay_email_problem('a..b@mail.ru'), 'email has two dots in a row', 'double dot');

select * from finish();
rollback;
