-- leadrelay: no-transaction
-- The console's phone index, lighter: the landing's INSERT computes every
-- index expression of landing_leads for each lead it writes, and the phone
-- index's was regexp_replace(phone, '[^0-9]', '', 'g'), a regular
-- expression run for each phone. The same digits by translate(), as the
-- trigger already takes them (20261218090000): every character of the phone
-- that is not an ASCII digit is removed, so the two expressions agree on
-- every text, null included (supabase/tests/12_ops_console_test.sql). One
-- lead's INSERT, counted with callgrind (1,000 of the benchmark's INSERTs
-- in `postgres --single`, docs/benchmarks.md, 2026-12-03): 17 k
-- instructions fewer of about 1,040 k, and no regexp_replace left in it.
--
-- The console's search (src/store/search.rs, PHONE_DIGITS) names the new
-- expression. Built, then the old index dropped, concurrently: the
-- landing's writes go on. A console of the release before this one, still
-- running during an upgrade, searches by phone without an index (slower,
-- not wrong) until it is restarted.

create index concurrently if not exists landing_leads_phone_digits_idx
  on public.landing_leads (translate(phone, translate(phone, '0123456789', ''), ''));

drop index concurrently if exists public.landing_leads_phone_search_idx;
