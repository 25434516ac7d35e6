-- What a job sends is fixed by its first claim. The greeting name was read
-- from the lead and the product link from PRODUCT_URL at every attempt, so
-- a name edited (or PRODUCT_URL changed) after an attempt whose outcome was
-- unknown made the next attempt a different email under the same Resend
-- key: Resend answered 409 and the job ended `failed` though the first email
-- had most likely gone. The first claim now stores the values the message is
-- made of; every later attempt uses them. The recipient is fixed the same way
-- (it is stored when the job is created, and changed only by `leadrelay retry`,
-- which gives a changed email a key of its own).

alter table public.notification_jobs add column if not exists sent_params jsonb;

comment on column public.notification_jobs.sent_params is
  'The values the message is made of (name, product_url), stored by the job''s first claim and used by every attempt.';
