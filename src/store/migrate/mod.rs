//! Applies `supabase/migrations/*.sql` in version order, each file in one
//! transaction together with its row in leadrelay's own history,
//! `leadrelay.schema_migrations`; a file marked `-- leadrelay: no-transaction`
//! (concurrent index builds) a statement at a time, its row written when the
//! last statement succeeded.
//!
//! The rules this room keeps:
//! - The landing's writes never wait behind a migration for more than a
//!   moment: every transaction of a migration waits at most `lock_timeout`
//!   for a lock, then gives the lock queue back to the landing and tries
//!   again; an index on a table the landing's INSERT writes is built
//!   `CONCURRENTLY`, and a build an interrupted run left invalid is dropped
//!   and built again.
//! - The project's own history, the Supabase CLI's
//!   `supabase_migrations.schema_migrations`, belongs to the project. It is
//!   read only for leadrelay's own versions (files handed over with
//!   `leadrelay migrations export` and pushed by the CLI count as applied),
//!   and written only once, to take back the rows an earlier leadrelay put
//!   there.

mod statements;
mod supabase_cli;

pub use supabase_cli::export;

use std::path::{Path, PathBuf};
use std::time::Duration;

use include_dir::{Dir, include_dir};
use tokio_postgres::{Client, GenericClient};

use crate::store::describe;

pub use statements::{NO_TRANSACTION, SplitError, for_one_transaction, is_no_transaction, split};

/// How long one statement of a migration may wait for a lock before it gives
/// way to the landing's writes, and how often it tries again. Every write
/// queued behind a waiting `ALTER TABLE` waits as long as it does, so this
/// bounds the landing's wait; 40 tries with backoff up to 5 s outlast an
/// ordinary long transaction (a few minutes in all) before `migrate` says
/// which lock it could not get.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub lock_timeout: Duration,
    pub lock_tries: u32,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            lock_timeout: Duration::from_millis(500),
            lock_tries: 40,
        }
    }
}

/// An index left invalid by an interrupted `CREATE INDEX CONCURRENTLY` (the
/// build failed, was cancelled, or its connection was lost): it is kept up
/// to date by every write but never used, and `IF NOT EXISTS` would take it
/// for done.
const INVALID_INDEX: &str = "
select i.indexrelid::regclass::text
from pg_catalog.pg_index i
where i.indexrelid = pg_catalog.to_regclass($1) and not i.indisvalid";

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/supabase/migrations");

const CREATE_HISTORY: &str = "
create schema if not exists leadrelay;
revoke all on schema leadrelay from public;
create table if not exists leadrelay.schema_migrations (
  version text primary key,
  name text not null,
  applied_at timestamptz not null default now(),
  -- 'leadrelay migrate'; 'supabase cli' for exported files pushed by the
  -- CLI; 'taken over' for rows an earlier leadrelay wrote in the CLI's table
  applied_by text not null
);
";
const SELECT_APPLIED: &str = "select version from leadrelay.schema_migrations order by version";
const INSERT_APPLIED: &str =
    "insert into leadrelay.schema_migrations (version, name, applied_by) values ($1, $2, $3)";
/// Two `migrate` runs at once (two instances deployed together) take turns.
/// The one that waits polls instead of sleeping inside `pg_advisory_lock`:
/// a statement that waits keeps its snapshot open, and a concurrent index
/// build of the other run waits for every older snapshot, which would be a
/// deadlock.
const TRY_LOCK: &str = "select pg_try_advisory_lock(hashtext('leadrelay migrate'))";
const UNLOCK: &str = "select pg_advisory_unlock(hashtext('leadrelay migrate'))";

/// The newest of this binary's versions in leadrelay's history, for `serve`
/// and `doctor`: None when the history table does not exist.
pub async fn applied_versions(
    client: &impl GenericClient,
) -> Result<Option<Vec<String>>, MigrateError> {
    let exists: bool = client
        .query_one(
            "select to_regclass('leadrelay.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(Some(
        client
            .query(SELECT_APPLIED, &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect(),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read migrations from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "migration file name {0:?} is not <14-digit timestamp>_<name>.sql as the Supabase CLI expects"
    )]
    FileName(String),
    #[error("two migration files share version {0}")]
    DuplicateVersion(String),
    #[error(
        "the database has leadrelay migration {version} applied, which is newer than the newest file here ({newest_local}): this leadrelay is older than the database; upgrade it instead of migrating down"
    )]
    NewerUnknownVersion {
        version: String,
        newest_local: String,
    },
    #[error("migration {version}_{name} failed, nothing of it was applied: {message}")]
    Apply {
        version: String,
        name: String,
        message: String,
    },
    #[error(
        "migration {version}_{name} (run outside a transaction) failed at statement {statement}: {message}; the statements before it are applied, and `leadrelay migrate` continues from there (each of them can run twice)"
    )]
    ApplyStep {
        version: String,
        name: String,
        statement: usize,
        message: String,
    },
    #[error(
        "migration {version}_{name} could not get its locks in {tries} tries of {lock_timeout_ms} ms each (it gives way to the landing's writes every time): a long transaction holds a lock it needs (PostgreSQL said: {relation}); find it with `select pid, state, xact_start, query from pg_stat_activity where xact_start < now() - interval '1 minute'`, then run `leadrelay migrate` again"
    )]
    LockTimeout {
        version: String,
        name: String,
        tries: u32,
        lock_timeout_ms: u128,
        relation: String,
    },
    #[error("migration {version}_{name} cannot be split into statements: {source}")]
    Split {
        version: String,
        name: String,
        source: SplitError,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} exists with other contents: leadrelay's migrations are never edited; remove it or export elsewhere"
    )]
    ExportConflict(PathBuf),
    #[error("database error while migrating: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Database(describe(&e))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The 14-digit timestamp, e.g. `20261124120000`.
    pub version: String,
    /// The rest of the file name, e.g. `leadrelay_core`.
    pub name: String,
    pub sql: String,
}

impl Migration {
    fn from_file(file_name: &str, sql: String) -> Result<Migration, MigrateError> {
        let stem = file_name
            .strip_suffix(".sql")
            .ok_or_else(|| MigrateError::FileName(file_name.to_string()))?;
        let (version, name) = stem
            .split_once('_')
            .ok_or_else(|| MigrateError::FileName(file_name.to_string()))?;
        if version.len() != 14 || !version.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return Err(MigrateError::FileName(file_name.to_string()));
        }
        Ok(Migration {
            version: version.to_string(),
            name: name.to_string(),
            sql,
        })
    }
}

/// The migrations compiled into this binary, so a deployed binary needs no
/// checkout beside it.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = Vec::new();
    for file in EMBEDDED.files() {
        let file_name = file.path().to_string_lossy().into_owned();
        if !file_name.ends_with(".sql") {
            continue;
        }
        let sql = String::from_utf8_lossy(file.contents()).into_owned();
        migrations.push(Migration::from_file(&file_name, sql)?);
    }
    sorted(migrations)
}

/// The migrations in a directory (`--dir`), for files newer than the binary.
pub fn from_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let read_err = |source| MigrateError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !file_name.ends_with(".sql") {
            continue;
        }
        let sql = std::fs::read_to_string(&path).map_err(|source| MigrateError::Read {
            path: path.clone(),
            source,
        })?;
        migrations.push(Migration::from_file(file_name, sql)?);
    }
    sorted(migrations)
}

fn sorted(mut migrations: Vec<Migration>) -> Result<Vec<Migration>, MigrateError> {
    migrations.sort_by(|a, b| a.version.cmp(&b.version));
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion(pair[0].version.clone()));
        }
    }
    Ok(migrations)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub applied: Vec<String>,
    pub already_applied: Vec<String>,
}

/// Applies every migration the database does not have yet, with the
/// default lock timeout.
pub async fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrateReport, MigrateError> {
    apply_with(client, migrations, &ApplyOptions::default()).await
}

/// Applies every migration the database does not have yet.
pub async fn apply_with(
    client: &mut Client,
    migrations: &[Migration],
    options: &ApplyOptions,
) -> Result<MigrateReport, MigrateError> {
    while !client.query_one(TRY_LOCK, &[]).await?.get::<_, bool>(0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = apply_locked(client, migrations, options).await;
    // A failed unlock only matters while this connection lives; it closes soon.
    let _ = client.batch_execute(UNLOCK).await;
    result
}

async fn apply_locked(
    client: &mut Client,
    migrations: &[Migration],
    options: &ApplyOptions,
) -> Result<MigrateReport, MigrateError> {
    client.batch_execute(CREATE_HISTORY).await?;
    supabase_cli::adopt_from_cli_history(client, migrations).await?;
    let applied = applied_versions(&*client).await?.unwrap_or_default();
    if let Some(newest_local) = migrations.last().map(|m| m.version.clone())
        && let Some(unknown) = applied
            .iter()
            .filter(|v| **v > newest_local && !migrations.iter().any(|m| &m.version == *v))
            .max()
    {
        return Err(MigrateError::NewerUnknownVersion {
            version: unknown.clone(),
            newest_local,
        });
    }
    let mut report = MigrateReport::default();
    for migration in migrations {
        if applied.contains(&migration.version) {
            report.already_applied.push(migration.version.clone());
            continue;
        }
        if is_no_transaction(&migration.sql) {
            apply_outside_transaction(client, migration, options).await?;
        } else {
            apply_in_transaction(client, migration, options).await?;
        }
        tracing::info!(version = %migration.version, name = %migration.name, "migration applied");
        report.applied.push(migration.version.clone());
    }
    Ok(report)
}

/// The lock a statement gave up on, when it did (`lock_timeout`, or a
/// deadlock with the landing's own transactions): worth another try.
fn lock_conflict(error: &tokio_postgres::Error) -> Option<String> {
    let db = error.as_db_error()?;
    let code = db.code();
    if *code != tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
        && *code != tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    {
        return None;
    }
    Some(
        db.where_()
            .unwrap_or(db.message())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Backoff between tries that gave way: 100 ms doubling to 5 s.
fn backoff(try_number: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << try_number.min(6))).min(Duration::from_secs(5))
}

/// `SET [LOCAL] lock_timeout`: for the migration's transaction, or for the
/// session that runs a no-transaction file a statement at a time.
fn set_lock_timeout(timeout: Duration, local: bool) -> String {
    format!(
        "set {}lock_timeout = {}",
        if local { "local " } else { "" },
        timeout.as_millis().max(1)
    )
}

async fn apply_in_transaction(
    client: &mut Client,
    migration: &Migration,
    options: &ApplyOptions,
) -> Result<(), MigrateError> {
    let failed = |e: tokio_postgres::Error| MigrateError::Apply {
        version: migration.version.clone(),
        name: migration.name.clone(),
        message: describe(&e),
    };
    let mut relation = String::new();
    for try_number in 0..options.lock_tries.max(1) {
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(&set_lock_timeout(options.lock_timeout, true))
            .await
            .map_err(failed)?;
        match tx.batch_execute(&migration.sql).await {
            Ok(()) => {}
            Err(e) => match lock_conflict(&e) {
                Some(what) => {
                    relation = what;
                    tx.rollback().await.map_err(failed)?;
                    tracing::info!(version = %migration.version, try_number, lock = %relation, "migration gave way to a lock holder; trying again");
                    tokio::time::sleep(backoff(try_number)).await;
                    continue;
                }
                None => return Err(failed(e)),
            },
        }
        tx.execute(
            INSERT_APPLIED,
            &[&migration.version, &migration.name, &"leadrelay migrate"],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        return Ok(());
    }
    Err(MigrateError::LockTimeout {
        version: migration.version.clone(),
        name: migration.name.clone(),
        tries: options.lock_tries,
        lock_timeout_ms: options.lock_timeout.as_millis(),
        relation,
    })
}

/// A file marked `-- leadrelay: no-transaction`: each statement on its own,
/// in this one session. A concurrent build waits for as long as it must (it
/// never blocks a write, so no lock timeout); any other statement gives way
/// like a transactional migration does. Every statement of such a file must
/// be safe to run twice (`if not exists`, `if exists`): an interrupted run
/// is continued by running the file again.
async fn apply_outside_transaction(
    client: &mut Client,
    migration: &Migration,
    options: &ApplyOptions,
) -> Result<(), MigrateError> {
    let statements = split(&migration.sql).map_err(|source| MigrateError::Split {
        version: migration.version.clone(),
        name: migration.name.clone(),
        source,
    })?;
    let result = run_statements(client, migration, &statements, options).await;
    // the file may set search_path for its builds; this session goes on
    let _ = client.batch_execute("reset all").await;
    result?;
    client
        .execute(
            INSERT_APPLIED,
            &[&migration.version, &migration.name, &"leadrelay migrate"],
        )
        .await
        .map_err(|e| MigrateError::Apply {
            version: migration.version.clone(),
            name: migration.name.clone(),
            message: describe(&e),
        })?;
    Ok(())
}

async fn run_statements(
    client: &mut Client,
    migration: &Migration,
    statements: &[&str],
    options: &ApplyOptions,
) -> Result<(), MigrateError> {
    for (n, statement) in statements.iter().enumerate() {
        let failed = |e: tokio_postgres::Error| MigrateError::ApplyStep {
            version: migration.version.clone(),
            name: migration.name.clone(),
            statement: n + 1,
            message: describe(&e),
        };
        let concurrently = statements::words(statement)
            .iter()
            .any(|w| w == "concurrently");
        if let Some(index) = statements::concurrent_index_name(statement)
            && let Some(row) = client
                .query_opt(INVALID_INDEX, &[&index])
                .await
                .map_err(failed)?
        {
            let invalid: String = row.get(0);
            tracing::warn!(version = %migration.version, index = %invalid, "an earlier build of this index was interrupted and left it invalid; dropping it to build it again");
            client
                .batch_execute(&format!("drop index concurrently if exists {invalid}"))
                .await
                .map_err(failed)?;
        }
        let mut tries = 0;
        loop {
            let timeout = if concurrently {
                "set lock_timeout = 0".to_string()
            } else {
                set_lock_timeout(options.lock_timeout, false)
            };
            client.batch_execute(&timeout).await.map_err(failed)?;
            match client.batch_execute(statement).await {
                Ok(()) => break,
                Err(e) => match lock_conflict(&e) {
                    Some(relation) if !concurrently => {
                        tries += 1;
                        if tries >= options.lock_tries.max(1) {
                            return Err(MigrateError::LockTimeout {
                                version: migration.version.clone(),
                                name: migration.name.clone(),
                                tries,
                                lock_timeout_ms: options.lock_timeout.as_millis(),
                                relation,
                            });
                        }
                        tokio::time::sleep(backoff(tries)).await;
                    }
                    _ => return Err(failed(e)),
                },
            }
        }
    }
    Ok(())
}

/// Migrations amended after their release, with the SHA-256 of the text
/// they were released with. Each amendment changes only what a database
/// that could not apply the released text gets (see the file's head); a
/// project that exported and pushed the released text keeps its file, and
/// the later migrations bring its database to the same state.
const RELEASED_TEXTS: &[(&str, &str)] = &[
    // grants to anon and authenticated made only where the roles exist
    (
        "20261128120000",
        "8fa6fc6ecf26098ab9088aa022b4767b06b19a29387c1de5f8061118b74a9020",
    ),
    // the index builds moved to 20261203090000, concurrent
    (
        "20261202090000",
        "58428a7fbe37348daa9282998a30054a871840d178b0f5458ab5b1deeed81c58",
    ),
    // the jobs' CHECK added NOT VALID: no scan of the jobs under the lock
    (
        "20261209090000",
        "e3d24aa7e57bfb5ed6e1c7a0e89d876663fd5c4df55b227ab6f9d1e74f56e110",
    ),
];

fn is_released_text(version: &str, text: &str) -> bool {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    RELEASED_TEXTS
        .iter()
        .any(|(v, sha)| *v == version && *sha == digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amended_migration_says_so_and_today_s_text_is_not_its_released_one() {
        let migrations = embedded().unwrap();
        for (version, _) in RELEASED_TEXTS {
            let m = migrations
                .iter()
                .find(|m| m.version == *version)
                .unwrap_or_else(|| panic!("{version} is a migration"));
            assert!(
                m.sql.contains("-- Amended "),
                "{version} says why it was amended"
            );
            let exported = for_one_transaction(&m.sql).unwrap();
            assert!(
                !is_released_text(version, &exported),
                "{version}: the listed digest is of the released text, not today's"
            );
        }
    }

    #[test]
    fn file_names_follow_the_supabase_cli_convention() {
        let ok = Migration::from_file("20261124120000_leadrelay_core.sql", String::new()).unwrap();
        assert_eq!(ok.version, "20261124120000");
        assert_eq!(ok.name, "leadrelay_core");
        for bad in [
            "leadrelay_core.sql",
            "2026112412000_short.sql",
            "20261124120000_.sql",
            "20261124120000_core.txt",
            "2026112412000x_core.sql",
            "20261124120000.sql",
        ] {
            assert!(
                matches!(
                    Migration::from_file(bad, String::new()),
                    Err(MigrateError::FileName(_))
                ),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn embedded_migrations_are_sorted_and_named() {
        let migrations = embedded().unwrap();
        assert!(!migrations.is_empty());
        assert!(migrations.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn duplicate_versions_are_refused() {
        let a = Migration::from_file("20261124120000_a.sql", String::new()).unwrap();
        let b = Migration::from_file("20261124120000_b.sql", String::new()).unwrap();
        assert!(matches!(
            sorted(vec![a, b]),
            Err(MigrateError::DuplicateVersion(_))
        ));
    }
}
