//! Living beside the Supabase CLI: taking over the rows an earlier leadrelay
//! wrote into the CLI's migration history, and exporting the migrations as
//! CLI files for teams that keep every migration in their own repository.

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use super::statements::for_one_transaction;
use super::{INSERT_APPLIED, MigrateError, Migration, applied_versions, is_released_text};

/// The CLI's rows for leadrelay's versions, with whether an earlier
/// leadrelay wrote them: it stored each file whole as one statement, where
/// the CLI stores the file split into statements.
const SELECT_CLI_ROWS: &str = "
select version, coalesce(name, ''), statements is not distinct from array[sql] as ours
from supabase_migrations.schema_migrations
join unnest($1::text[], $2::text[]) as m(v, sql) on m.v = version";
const DELETE_CLI_ROW: &str = "delete from supabase_migrations.schema_migrations where version = $1";

/// leadrelay's versions found in the CLI's history and not yet in ours:
/// rows an earlier leadrelay wrote move to our table (taken over); rows the
/// CLI wrote for exported files stay and are recorded as applied by it. A
/// project migration that only shares a version number (another name) is
/// not ours and changes nothing.
pub(super) async fn adopt_from_cli_history(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<(), MigrateError> {
    let has_cli_history: bool = client
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !has_cli_history {
        return Ok(());
    }
    let known = applied_versions(&*client).await?.unwrap_or_default();
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !known.contains(&m.version))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let versions: Vec<&str> = pending.iter().map(|m| m.version.as_str()).collect();
    let sqls: Vec<&str> = pending.iter().map(|m| m.sql.as_str()).collect();
    let tx = client.transaction().await?;
    for row in tx.query(SELECT_CLI_ROWS, &[&versions, &sqls]).await? {
        let version: String = row.get(0);
        let name: String = row.get(1);
        let written_by_leadrelay: bool = row.get(2);
        let Some(migration) = pending.iter().find(|m| m.version == version) else {
            continue;
        };
        if migration.name != name {
            continue;
        }
        let applied_by = if written_by_leadrelay {
            tx.execute(DELETE_CLI_ROW, &[&version]).await?;
            "taken over"
        } else {
            "supabase cli"
        };
        tx.execute(INSERT_APPLIED, &[&version, &migration.name, &applied_by])
            .await?;
        tracing::info!(%version, name = %migration.name, applied_by, "migration found in the Supabase CLI's history");
    }
    tx.commit().await?;
    Ok(())
}

/// `leadrelay migrations export`: the files as the Supabase CLI expects them
/// (`<version>_<name>.sql`), for teams that keep every migration in their own
/// repository. The CLI runs each file in one transaction, so a file that
/// `leadrelay migrate` runs outside one is written in its one-transaction
/// form (`for_one_transaction`). An existing file with other contents is
/// never overwritten; one holding the released text of an amended migration
/// is left as it is.
pub fn export(migrations: &[Migration], dir: &Path) -> Result<Vec<PathBuf>, MigrateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for m in migrations {
        let path = dir.join(format!("{}_{}.sql", m.version, m.name));
        let sql = for_one_transaction(&m.sql).map_err(|source| MigrateError::Split {
            version: m.version.clone(),
            name: m.name.clone(),
            source,
        })?;
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == sql || is_released_text(&m.version, &existing) => continue,
            Ok(_) => return Err(MigrateError::ExportConflict(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        std::fs::write(&path, &sql).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
