-- Email batches: a burst of due emails goes to Resend's batch endpoint, up to
-- 100 emails per request, because one batch counts as one request against
-- Resend's per-team rate limit (2 per second by default).
--
-- The batch endpoint has one idempotency key for the whole request, and Resend
-- answers a repeated key with the first answer only when the body is the same.
-- So a batch whose outcome is unknown (the worker died mid-request) must be
-- sent again with the same key and exactly the same emails in the same order.
-- That is why the grouping is stored on the jobs when they are claimed, before
-- any request:
--  * batch_key: the idempotency key of the batch request this job belongs to;
--    null for a job sent on its own (POST /emails, key leadrelay-job-<id>).
--  * only a job never tried before is put in a new batch; a job that was tried
--    on its own keeps its per-job key for good.
--  * the members of a batch move together: claimed, recorded and rescued as one.
--    The worker claims a batch only under an advisory lock on its key, and only
--    when no member is elsewhere (scheduled or sending).
--  * the key stays on sent jobs: it says which request delivered them.

alter table public.notification_jobs
  add column if not exists batch_key text;

do $$
begin
  if not exists (
    select 1 from pg_constraint
    where conname = 'notification_jobs_batch_key_length'
      and conrelid = 'public.notification_jobs'::regclass
  ) then
    -- Resend accepts idempotency keys of up to 256 characters.
    alter table public.notification_jobs
      add constraint notification_jobs_batch_key_length check (length(batch_key) <= 256);
  end if;
end
$$;

comment on column public.notification_jobs.batch_key is
  'Idempotency key of the Resend batch request that carries this email (null: sent on its own). Members of a batch are re-sent together, identically, until their outcome is known.';

-- A batch to send again (due, with a key): a tiny index, empty almost always,
-- so that looking for such batches never scans the due jobs of a busy queue.
create index if not exists notification_jobs_due_batches_idx
  on public.notification_jobs (due_at)
  where status = 'due' and batch_key is not null;

-- The members of one batch, to claim and check them together.
create index if not exists notification_jobs_batch_key_idx
  on public.notification_jobs (batch_key)
  where batch_key is not null;
