//! The shapes a landing's database comes in, as far as privileges go, so
//! that dev mode, the tests and the benchmark run leadrelay in the world as
//! it is and not as a fixture remembers it.
//!
//! The rule this room keeps: each shape is what a real database of that kind
//! has before leadrelay arrives (roles, default privileges, the landing's own
//! table and grants), never a grant leadrelay's code relies on that a real
//! project would not have made.

/// Who may do what in the database the landing writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// A Supabase project as created today (the default for new projects
    /// since 2026-05-30, and for new tables of every project since
    /// 2026-10-30): the API roles exist and may use schema `public`, but
    /// nothing `postgres` creates there is granted to them automatically.
    /// The landing's `landing_leads` was created by `postgres` before
    /// leadrelay, and the project granted it to `service_role` itself, as
    /// Supabase tells projects to.
    SupabaseCurrent,
    /// A Supabase project of the old default: every table, sequence and
    /// function `postgres` creates in `public` is granted to `anon`,
    /// `authenticated` and `service_role`. `landing_leads` is created by the
    /// migrations (a new project).
    SupabaseLegacy,
    /// A self-hosted PostgreSQL: none of Supabase's roles (they are
    /// cluster-wide, so this shape needs a cluster of its own). The landing
    /// writes as the table's owner or a role of its own.
    PlainPostgres,
}

impl Privileges {
    /// The Supabase shapes, which can share one cluster (default privileges
    /// are kept per database).
    pub const SUPABASE: [Privileges; 2] = [Privileges::SupabaseCurrent, Privileges::SupabaseLegacy];

    /// A short name for test and benchmark output.
    pub fn label(self) -> &'static str {
        match self {
            Privileges::SupabaseCurrent => "supabase-current",
            Privileges::SupabaseLegacy => "supabase-legacy",
            Privileges::PlainPostgres => "plain-postgres",
        }
    }

    /// What the database holds before `leadrelay migrate` runs, applied as
    /// the database's owner.
    pub fn before_migrations(self) -> String {
        match self {
            Privileges::SupabaseCurrent => format!("{API_ROLES}{CURRENT_LANDING_TABLE}"),
            Privileges::SupabaseLegacy => format!("{API_ROLES}{LEGACY_DEFAULTS}"),
            Privileges::PlainPostgres => String::new(),
        }
    }
}

/// Supabase's API roles, and the schema usage every project grants them.
/// `service_role` bypasses RLS, as on Supabase.
const API_ROLES: &str = "
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;
grant usage on schema public to anon, authenticated, service_role;
";

/// The old default privileges of `postgres` in `public`.
const LEGACY_DEFAULTS: &str = "
grant all on all tables in schema public to service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
";

/// The landing's table as the Node backend's project made it, with the
/// explicit grant a project created today needs for supabase-js with the
/// service key (RLS on, as Supabase's table editor creates tables).
const CURRENT_LANDING_TABLE: &str = "
create table if not exists public.landing_leads (
  id uuid primary key default gen_random_uuid(),
  name text,
  email text,
  phone text,
  source text,
  metadata jsonb,
  created_at timestamptz not null default now()
);
alter table public.landing_leads enable row level security;
grant select, insert, update, delete on public.landing_leads to service_role;
";
