//! `leadrelay migrate`: Supabase-compatible history, idempotent files, existing
//! data kept, and clear refusals.

use std::process::Command;

use leadrelay::migrate::{self, MigrateError};

use crate::harness::{empty_db, insert_proftest_lead};

const BIN: &str = env!("CARGO_BIN_EXE_leadrelay");

#[tokio::test]
async fn migrate_records_each_version_like_the_supabase_cli_and_a_second_run_applies_nothing() {
    let db = empty_db().await;
    let mut client = db.client().await;
    let migrations = migrate::embedded().unwrap();
    let first = migrate::apply(&mut client, &migrations).await.unwrap();
    assert_eq!(first.applied.len(), migrations.len());
    let rows = client
        .query("select version, name, statements from supabase_migrations.schema_migrations order by version", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), migrations.len());
    for (row, m) in rows.iter().zip(&migrations) {
        assert_eq!(row.get::<_, String>(0), m.version);
        assert_eq!(row.get::<_, String>(1), m.name);
        let statements: Vec<String> = row.get(2);
        assert_eq!(statements.concat(), m.sql);
    }
    let second = migrate::apply(&mut client, &migrations).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied.len(), migrations.len());
}

#[tokio::test]
async fn every_migration_file_applies_twice_each_time_inside_one_transaction() {
    let db = empty_db().await;
    let mut client = db.client().await;
    for round in 0..2 {
        for m in migrate::embedded().unwrap() {
            let tx = client.transaction().await.unwrap();
            tx.batch_execute(&m.sql).await.unwrap_or_else(|e| {
                panic!(
                    "round {round}, {}: {}",
                    m.version,
                    leadrelay::db::describe(&e)
                )
            });
            tx.commit().await.unwrap();
        }
    }
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
        .batch_execute("insert into supabase_migrations.schema_migrations (version, name) values ('29991231235959', 'from_the_future')")
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
        .query(
            "select version from supabase_migrations.schema_migrations",
            &[],
        )
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
        .query_one(
            "select count(*) from supabase_migrations.schema_migrations",
            &[],
        )
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
