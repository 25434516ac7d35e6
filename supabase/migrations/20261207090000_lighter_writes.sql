-- leadrelay: no-transaction
-- Lighter writes of notification_jobs: every job the landing's trigger
-- inserts, and every claim and outcome the worker writes, maintains the
-- table's indexes. Two of them cost more than they bought (measured with
-- `cargo bench --bench leadrelay`, docs/benchmarks.md):
--
--  * the failures table's index had a predicate calling
--    leadrelay_delivery_rank(), an SQL function with its own search_path,
--    which PostgreSQL cannot inline: every statement writing a job parsed
--    and planned it again (an eighth of the landing's INSERT at 8 clients).
--    The same rows, named by the failure states themselves
--    (DeliveryState::is_failure; a unit test holds this list to it);
--  * the policies' old look-up by lower(recipient), which the gate of
--    20261206090000 replaced by leadrelay.recipient_key(). A worker of a
--    release before that one, still running during an upgrade, finds its
--    verdicts without the index (slower, not wrong) until it is restarted.
--
-- Built and dropped concurrently: the landing's INSERT never waits (a build
-- interrupted midway is dropped and built again by the next `leadrelay
-- migrate`). landing_leads is not touched.

create index concurrently if not exists notification_jobs_failures_by_change_idx
  on public.notification_jobs (updated_at)
  where status in ('failed', 'invalid')
     or delivery_status in ('undelivered', 'rejected', 'expired', 'deleted', 'failed', 'bounced', 'suppressed', 'complained');

drop index concurrently if exists public.notification_jobs_failures_idx;

drop index concurrently if exists public.notification_jobs_recipient_idx;
