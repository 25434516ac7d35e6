-- The ops console: sign-in sessions kept in the database (so signing out
-- revokes one for every process behind a load balancer), an audit of every
-- action taken from it or from the CLI, and the indexes that keep each of its
-- pages and /metrics a range scan at a million leads.
--
-- Amended 2026-12-03. As released, this file built its indexes on
-- landing_leads, notification_jobs and notification_events inside its
-- transaction: the landing's INSERT (which writes the first two) waited for
-- every build, about a minute at a million leads; one index evaluated
-- leadrelay_trim(), which the landing's role may not execute; and its
-- revoke named anon and authenticated where they may not exist. The builds
-- now live in 20261203090000_landing_writes.sql, which runs them
-- CONCURRENTLY (no write waits), with the email index on built-in functions
-- only. A database that applied the released text has its indexes, and that
-- migration replaces the email one; either way the result is the same.

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
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('revoke all on public.ops_sessions, public.ops_audit from %I', r);
    end if;
  end loop;
end
$$;

-- ---------------------------------------------------------------------------
-- Search by a fragment of the name needs trigrams. pg_trgm goes where
-- Supabase puts extensions (schema `extensions`) unless it is installed
-- already. The indexes themselves: 20261203090000_landing_writes.sql.
-- ---------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_trgm') then
    create schema if not exists extensions;
    create extension pg_trgm with schema extensions;
  end if;
end
$$;
