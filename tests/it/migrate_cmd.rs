//! `leadrelay migrate`: its own history beside the project's Supabase CLI
//! history, idempotent files, existing data kept, and clear refusals.

use std::process::Command;

use leadrelay::store::migrate::{self, MigrateError};

use crate::harness::{empty_db, insert_proftest_lead};

const BIN: &str = env!("CARGO_BIN_EXE_leadrelay");

#[tokio::test]
async fn migrate_records_each_version_in_its_own_history_and_a_second_run_applies_nothing() {
    let db = empty_db().await;
    let mut client = db.client().await;
    let migrations = migrate::embedded().unwrap();
    let first = migrate::apply(&mut client, &migrations).await.unwrap();
    assert_eq!(first.applied.len(), migrations.len());
    let rows = client
        .query(
            "select version, name, applied_by from leadrelay.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), migrations.len());
    for (row, m) in rows.iter().zip(&migrations) {
        assert_eq!(row.get::<_, String>(0), m.version);
        assert_eq!(row.get::<_, String>(1), m.name);
        assert_eq!(row.get::<_, String>(2), "leadrelay migrate");
    }
    let cli_history: Option<String> = client
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        cli_history, None,
        "the CLI's history is not created by leadrelay"
    );
    let second = migrate::apply(&mut client, &migrations).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied.len(), migrations.len());
}

#[tokio::test]
async fn every_migration_file_applies_twice_inside_one_transaction_or_a_statement_at_a_time_as_marked()
 {
    let db = empty_db().await;
    let mut client = db.client().await;
    let mut outside = 0;
    for round in 0..2 {
        for m in migrate::embedded().unwrap() {
            let failed = |e: tokio_postgres::Error| {
                panic!(
                    "round {round}, {}: {}",
                    m.version,
                    leadrelay::store::describe(&e)
                )
            };
            if migrate::is_no_transaction(&m.sql) {
                outside += 1;
                for statement in migrate::split(&m.sql).unwrap() {
                    client.batch_execute(statement).await.unwrap_or_else(failed);
                }
                client.batch_execute("reset all").await.unwrap();
                continue;
            }
            let tx = client.transaction().await.unwrap();
            tx.batch_execute(&m.sql).await.unwrap_or_else(failed);
            tx.commit().await.unwrap();
        }
    }
    assert!(
        outside >= 2,
        "the landing_writes migration runs outside a transaction"
    );
    let rules: i64 = client
        .query_one("select count(*) from notification_rules", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rules, 3, "the seed is not duplicated");
    let triggers: i64 = client
        .query_one("select count(*) from pg_trigger where tgrelid = 'public.landing_leads'::regclass and not tgisinternal", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 2);
}

#[tokio::test]
async fn migrating_a_database_that_already_holds_leads_keeps_every_lead_untouched() {
    let db = empty_db().await;
    let mut client = db.client().await;
    // landing_leads as production has it before leadrelay, with rows.
    client
        .batch_execute(
            "create table public.landing_leads (
               id uuid primary key default gen_random_uuid(),
               name text, email text, phone text, source text, metadata jsonb,
               created_at timestamptz not null default now());
             insert into public.landing_leads (name, email, phone, source, metadata, created_at)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 000 ' || lpad(g::text, 4, '0'),
                    'proftest_main', jsonb_build_object('n', g), now() - g * interval '1 minute'
             from generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let before: String = client
        .query_one(
            "select md5(string_agg(l::text, ',' order by id)) from public.landing_leads l",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    let after: String = client
        .query_one(
            "select md5(string_agg(row(id, name, email, phone, source, metadata, created_at)::text, ',' order by id)) from public.landing_leads",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        before, after,
        "the original columns of every lead are unchanged"
    );
    let mirror: (i64, i64) = {
        let row = client
            .query_one("select count(*) filter (where not email_sent and not sms_sent), count(*) from landing_leads", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(mirror, (1000, 1000));
    let jobs: i64 = client
        .query_one("select count(*) from notification_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0, "old leads wait for `leadrelay backfill`");
    let rls_untouched: bool = client
        .query_one(
            "select not relrowsecurity from pg_class where oid = 'public.landing_leads'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        rls_untouched,
        "an existing table keeps its owners' access rules"
    );
    let lead = insert_proftest_lead(&client, "New", "n@b.kz").await;
    let new_jobs: i64 = client
        .query_one(
            "select count(*) from notification_jobs where lead_id = $1 and channel in ('email', 'sms')",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(new_jobs, 2);
}

#[tokio::test]
async fn migrate_refuses_a_database_with_a_newer_unknown_version() {
    let db = empty_db().await;
    let mut client = db.client().await;
    migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    client
        .batch_execute("insert into leadrelay.schema_migrations (version, name, applied_by) values ('29991231235959', 'from_the_future', 'leadrelay migrate')")
        .await
        .unwrap();
    let err = migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MigrateError::NewerUnknownVersion { ref version, .. } if version == "29991231235959")
    );
    assert!(err.to_string().contains("newer than the newest file here"));

    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("29991231235959"), "{stderr}");
}

#[tokio::test]
async fn a_failing_migration_applies_nothing_of_itself_and_is_not_recorded() {
    let db = empty_db().await;
    let mut client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20990101000000_good.sql"),
        "create table good_one (id int);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20990101000001_bad.sql"),
        "create table half_done (id int);\nselect no_such_function();",
    )
    .unwrap();
    let migrations = migrate::from_dir(dir.path()).unwrap();
    let err = migrate::apply(&mut client, &migrations).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("20990101000001_bad failed"), "{text}");
    assert!(text.contains("no_such_function"), "{text}");
    let half: Option<String> = client
        .query_one("select to_regclass('public.half_done')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(half, None);
    let versions: Vec<String> = client
        .query("select version from leadrelay.schema_migrations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, ["20990101000000"]);
}

#[tokio::test]
async fn two_migrate_runs_at_once_take_turns_and_record_each_version_once() {
    let db = empty_db().await;
    let mut a = db.client().await;
    let mut b = db.client().await;
    let migrations = migrate::embedded().unwrap();
    let (ra, rb) = tokio::join!(
        migrate::apply(&mut a, &migrations),
        migrate::apply(&mut b, &migrations)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.applied.len() + rb.applied.len(), migrations.len());
    let n: i64 = a
        .query_one("select count(*) from leadrelay.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, migrations.len());
}

#[tokio::test]
async fn the_migrate_command_applies_the_built_in_files_and_reports_them() {
    let db = empty_db().await;
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = migrate::embedded().unwrap().len();
    assert!(
        stdout.contains(&format!("applied {n} migration(s)")),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", &db.url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("applied 0 migration(s); {n} already applied"))
    );
}

#[test]
fn migrate_without_or_with_a_malformed_database_url_stops_with_one_line_naming_it() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "leadrelay: configuration error: DATABASE_URL is not set"
    );

    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", "mysql://root:hunter2@db/app")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DATABASE_URL is malformed"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn migrate_against_an_unreachable_database_fails_with_a_clear_message() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env(
            "DATABASE_URL",
            "postgres://postgres:secretpw@127.0.0.1:1/postgres?connect_timeout=2",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(!stderr.contains("secretpw"), "{stderr}");
}

/// The Supabase CLI's history table, as `supabase db push` creates it.
const CLI_HISTORY: &str = "
create schema supabase_migrations;
create table supabase_migrations.schema_migrations (version text not null primary key, statements text[], name text);";

/// The project's own migrations, older and newer than leadrelay's.
const PROJECT_HISTORY: &str = "
insert into supabase_migrations.schema_migrations (version, name, statements) values
  ('20250301101500', 'landing_leads', array['create table if not exists public.landing_leads (id uuid primary key default gen_random_uuid(), name text, email text, phone text, source text, metadata jsonb, created_at timestamptz not null default now())']),
  ('20261201090000', 'add_utm_columns', array['alter table public.landing_leads add column if not exists utm_source text']);";

async fn cli_history(
    client: &tokio_postgres::Client,
) -> Vec<(String, Option<String>, Option<Vec<String>>)> {
    client
        .query("select version, name, statements from supabase_migrations.schema_migrations order by version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn leadrelay_history(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "select version, applied_by from leadrelay.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn migrate_lives_beside_the_projects_own_older_and_newer_migrations_and_serve_starts() {
    let db = empty_db().await;
    let mut client = db.client().await;
    client.batch_execute(CLI_HISTORY).await.unwrap();
    client.batch_execute(PROJECT_HISTORY).await.unwrap();
    client
        .batch_execute("create table public.landing_leads (id uuid primary key default gen_random_uuid(), name text, email text, phone text, source text, metadata jsonb, created_at timestamptz not null default now(), utm_source text)")
        .await
        .unwrap();
    let before = cli_history(&client).await;
    let migrations = migrate::embedded().unwrap();
    let report = migrate::apply(&mut client, &migrations).await.unwrap();
    assert_eq!(report.applied.len(), migrations.len());
    assert_eq!(
        cli_history(&client).await,
        before,
        "the project's history is untouched, row for row"
    );
    let again = migrate::apply(&mut client, &migrations).await.unwrap();
    assert!(again.applied.is_empty());

    let providers = crate::app::Providers::healthy().await;
    let app = crate::app::start(crate::app::config(&db.url, &providers)).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_database_migrated_the_old_way_is_taken_over_once_without_applying_anything_twice() {
    let db = empty_db().await;
    let mut client = db.client().await;
    client.batch_execute(CLI_HISTORY).await.unwrap();
    client.batch_execute(PROJECT_HISTORY).await.unwrap();
    let migrations = migrate::embedded().unwrap();
    // What the earlier release did: each file applied, and recorded in the
    // CLI's table with the whole file as its one statement.
    for m in &migrations {
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(&migrate::for_one_transaction(&m.sql).unwrap())
            .await
            .unwrap();
        tx.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
            &[&m.version, &m.name, &vec![m.sql.clone()]],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    // A counter that a second run of the core migration's seed would move.
    let lead = insert_proftest_lead(&client, "Kept", "kept@b.kz").await;
    let report = migrate::apply(&mut client, &migrations).await.unwrap();
    assert!(
        report.applied.is_empty(),
        "nothing applied twice: {:?}",
        report.applied
    );
    let project: Vec<String> = cli_history(&client)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        project,
        ["20250301101500", "20261201090000"],
        "only the project's own rows stay"
    );
    let ours = leadrelay_history(&client).await;
    assert_eq!(ours.len(), migrations.len());
    assert!(ours.iter().all(|(_, by)| by == "taken over"), "{ours:?}");
    let jobs: i64 = client
        .query_one(
            "select count(*) from notification_jobs where lead_id = $1",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0);
    assert!(jobs >= 2);
    // once: a later run finds everything in its own history
    let again = migrate::apply(&mut client, &migrations).await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(leadrelay_history(&client).await, ours);
}

#[tokio::test]
async fn exported_files_pushed_by_the_supabase_cli_count_as_applied() {
    let db = empty_db().await;
    let mut client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["migrations", "export", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What `supabase db push` does with the exported folder: each file in a
    // transaction, recorded split into statements.
    client.batch_execute(CLI_HISTORY).await.unwrap();
    client.batch_execute(PROJECT_HISTORY).await.unwrap();
    let exported = migrate::from_dir(dir.path()).unwrap();
    let embedded = migrate::embedded().unwrap();
    assert_eq!(exported.len(), embedded.len());
    for (e, m) in exported.iter().zip(&embedded) {
        assert_eq!((&e.version, &e.name), (&m.version, &m.name));
        assert_eq!(e.sql, migrate::for_one_transaction(&m.sql).unwrap());
        assert!(
            !e.sql.to_lowercase().contains("index concurrently"),
            "{}: the CLI runs each file in one transaction",
            e.version
        );
    }
    for m in &exported {
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(&m.sql).await.unwrap();
        let statements: Vec<String> = m.sql.split(";\n").map(str::to_string).collect();
        assert!(statements.len() > 1);
        tx.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
            &[&m.version, &m.name, &statements],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let before = cli_history(&client).await;
    let report = migrate::apply(&mut client, &exported).await.unwrap();
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert_eq!(cli_history(&client).await, before);
    assert!(
        leadrelay_history(&client)
            .await
            .iter()
            .all(|(_, by)| by == "supabase cli")
    );
    // exporting again over the same files is a no-op; a changed file is refused
    let again = migrate::export(&exported, dir.path()).unwrap();
    assert!(again.is_empty());
    let first = dir
        .path()
        .join(format!("{}_{}.sql", exported[0].version, exported[0].name));
    std::fs::write(&first, "-- edited").unwrap();
    let err = migrate::export(&exported, dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("exists with other contents"),
        "{err}"
    );
}
