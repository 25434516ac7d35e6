-- The ops console: sign-in sessions kept in the database (so signing out
-- revokes one for every process behind a load balancer), an audit of every
-- action taken from it or from the CLI, and the indexes that keep each of its
-- pages and /metrics a range scan at a million leads.

-- ---------------------------------------------------------------------------
-- Sessions. The cookie holds a random value; only its SHA-256 is stored, so
-- whoever reads this table cannot sign in with what they read.
-- ---------------------------------------------------------------------------
create table if not exists public.ops_sessions (
  id bigint generated always as identity primary key,
  token_hash bytea not null unique check (length(token_hash) = 32),
  -- the session's CSRF token: every form of the console carries it
  csrf_token text not null check (length(csrf_token) between 32 and 128),
  client_addr text check (length(client_addr) <= 64),
  user_agent text check (length(user_agent) <= 512),
  created_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  expires_at timestamptz not null,
  revoked_at timestamptz
);

comment on table public.ops_sessions is
  'Ops console sign-ins. A session ends at expires_at, after two idle hours, or when revoked_at is set (signing out). To sign everyone out: update ops_sessions set revoked_at = now() where revoked_at is null.';

-- Expired sessions are deleted a week after they end (at each sign-in).
create index if not exists ops_sessions_expires_idx on public.ops_sessions (expires_at);

-- ---------------------------------------------------------------------------
-- The audit: when, what, which jobs, from which session.
-- ---------------------------------------------------------------------------
create table if not exists public.ops_audit (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  -- no foreign key: old sessions are deleted, their actions stay
  session_id bigint,
  -- 'console' or 'cli:<user>'
  actor text not null check (length(actor) <= 200),
  action text not null check (action in ('retry', 'send_now', 'cancel', 'bulk_retry', 'cancel_rule')),
  -- the jobs asked for, and those the action changed (a job that had moved
  -- on meanwhile is asked for and left alone)
  job_ids bigint[] not null,
  changed_job_ids bigint[] not null,
  lead_ids uuid[] not null,
  reason text check (length(reason) <= 500),
  client_addr text check (length(client_addr) <= 64)
);

comment on table public.ops_audit is
  'Every action of the ops console and of the leadrelay CLI''s retry and cancel: when, what, which jobs (asked and changed), from which session.';

create index if not exists ops_audit_at_idx on public.ops_audit (at);
create index if not exists ops_audit_lead_ids_idx on public.ops_audit using gin (lead_ids);

-- Closed to the browser-facing roles: RLS on, no policy, no grant.
alter table public.ops_sessions enable row level security;
alter table public.ops_audit enable row level security;
revoke all on public.ops_sessions, public.ops_audit from anon, authenticated;

-- ---------------------------------------------------------------------------
-- Search: a lead by email (as the checks normalise it), by phone, by a
-- fragment of the name. The phone index holds the digits as typed (a
-- built-in expression, a few microseconds per landing insert); the search
-- looks up the forms one number can be typed in (7…, 8…, without the
-- country code) and checks each with leadrelay_phone_digits, which costs
-- too much per row to index.
-- ---------------------------------------------------------------------------
create index if not exists landing_leads_created_at_idx on public.landing_leads (created_at);
create index if not exists landing_leads_email_search_idx
  on public.landing_leads (lower(public.leadrelay_trim(email)));
create index if not exists landing_leads_phone_search_idx
  on public.landing_leads (regexp_replace(phone, '[^0-9]', '', 'g'));

-- A name fragment needs trigrams. pg_trgm goes where Supabase puts
-- extensions (schema `extensions`) unless it is installed already.
do $$
declare
  v_schema text;
begin
  select n.nspname into v_schema
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'pg_trgm';
  if v_schema is null then
    create schema if not exists extensions;
    create extension pg_trgm with schema extensions;
    v_schema := 'extensions';
  end if;
  execute format(
    'create index if not exists landing_leads_name_trgm_idx on public.landing_leads using gin (name %I.gin_trgm_ops)',
    v_schema);
end
$$;

-- ---------------------------------------------------------------------------
-- The console's and /metrics' reads, each a range of a small or partial index.
-- ---------------------------------------------------------------------------
-- Failed and invalid jobs: the queue chart and the job gauges count them by
-- channel (an index-only scan), `leadrelay retry --failed-since` walks them.
create index if not exists notification_jobs_failed_idx
  on public.notification_jobs (channel, status, finished_at)
  where status in ('failed', 'invalid');

-- The failures table: failed jobs and delivery failures, by last change.
create index if not exists notification_jobs_failures_idx
  on public.notification_jobs (updated_at)
  where status in ('failed', 'invalid') or public.leadrelay_delivery_rank(delivery_status) >= 60;

-- Sent, delivered, opened and clicked per hour (48 hours) and in the funnel
-- (7 days): an index-only scan, the heap is not read.
create index if not exists notification_jobs_sent_at_idx
  on public.notification_jobs (sent_at) include (channel, delivery_status)
  where sent_at is not null;

-- SMS found by a look-up, and those still in doubt.
create index if not exists notification_jobs_recovered_idx
  on public.notification_jobs (recovered_at)
  where recovered_at is not null;
create index if not exists notification_jobs_in_doubt_idx
  on public.notification_jobs (id)
  where channel = 'sms' and outcome_unknown_since is not null and status <> 'sent';

-- A lead's page: each job's delivery events.
create index if not exists notification_events_job_idx
  on public.notification_events (job_id, id)
  where job_id is not null;
