-- notification_jobs vacuumed after a fiftieth of it changed, not a fifth.
--
-- Every job leaves `scheduled`, `due` and `sending` by an UPDATE that cannot
-- be HOT (the status is in the predicates of the partial indexes), so each
-- leaves a dead entry at its moment or its lease in the index of each state
-- it left. The scans for work read those indexes from their beginning: the
-- promotion (every pass of the worker's sweep, and pg_cron's), the rescue of
-- expired leases, the glance and the claims (these look back two minutes
-- only, since this release). They walk every dead entry until a vacuum
-- removes it, even once a scan has marked it dead. At autovacuum's
-- defaults a table is vacuumed once a fifth of it is dead: at 1M jobs some
-- 200,000 dead rows, the dead entries of some 50,000 jobs in each index,
-- 1.5-1.7 ms of the promotion's look for scheduled jobs, which the worker's
-- sweep runs every second (docs/benchmarks.md, 2026-12-04). At a fiftieth,
-- as queue tables are usually tuned, a tenth of that; statistics follow
-- the same share.
--
-- Vacuuming sooner costs its work sooner, not more of it: the heap pages a
-- vacuum visits are the changed ones, and it skips the indexes when few
-- pages hold dead rows.
--
-- A storage parameter takes a lock on the jobs that the landing's writes
-- and the worker's do not wait for (SHARE UPDATE EXCLUSIVE), and no
-- rewrite; running it twice sets the same values.
alter table public.notification_jobs set (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.02);
