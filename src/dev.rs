//! `leadrelay dev`: everything on one machine with no accounts. A private
//! PostgreSQL cluster under `.leadrelay/` (pg_cron preloaded when installed),
//! shaped like a Supabase database, with the migrations applied.

use std::path::Path;

use crate::cli::DevArgs;
use crate::cluster::{Cluster, ClusterError, ClusterOptions, StopMode};
use crate::{db, migrate};

/// The roles a Supabase database has, so that the migrations' grants and the
/// landing's `service_role` inserts behave here as they do there.
pub const SUPABASE_ROLES: &str = "
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
grant all on all tables in schema public to service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("preparing the dev database: {0}")]
    Prepare(String),
}

/// Starts the private cluster (creating it on first use) and migrates it.
pub async fn start_cluster(dir: &Path) -> Result<Cluster, DevError> {
    let root = std::path::absolute(dir.join("pg")).map_err(|e| DevError::Prepare(e.to_string()))?;
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DevError::Prepare(format!("{}: {e}", parent.display())))?;
    }
    let cluster = Cluster::start(&ClusterOptions {
        root,
        port: None,
        ephemeral: false,
        cron_database: "postgres".into(),
    })?;
    let mut client = db::connect(&cluster.url("postgres")).await?;
    client
        .batch_execute(SUPABASE_ROLES)
        .await
        .map_err(|e| DevError::Prepare(db::describe(&e)))?;
    migrate::apply(&mut client, &migrate::embedded()?).await?;
    Ok(cluster)
}

pub async fn run(args: &DevArgs) -> Result<(), DevError> {
    let cluster = start_cluster(&args.dir).await?;
    if !cluster.has_pg_cron() {
        println!(
            "pg_cron is not installed (Debian package postgresql-15-cron); the worker's sweep promotes due jobs"
        );
    }
    println!("PostgreSQL is up: DATABASE_URL={}", cluster.url("postgres"));
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    cluster.stop(StopMode::Fast)?;
    println!("stopped");
    Ok(())
}

/// Ctrl-C in a terminal, SIGTERM from a service manager or `timeout`.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
