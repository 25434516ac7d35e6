//! The landing's own writes to `landing_leads`, by every role that may make
//! them, under each shape a landing's database comes in: they succeed as
//! they did before leadrelay, and each lead gets its jobs. Also: `migrate`
//! repairs a database the released console left, rebuilds an index an
//! interrupted concurrent build left invalid, and gives way to the landing
//! while it waits for a lock.

use std::time::Duration;

use leadrelay::cli::dev::Privileges;
use leadrelay::store::{self, migrate};
use tokio_postgres::Client;

use crate::harness::{self, shipped_db_as};

/// The roles a landing writes as.
#[derive(Debug, Clone, Copy)]
enum Writer {
    /// supabase-js with the service key, through PostgREST.
    ServiceRole,
    /// A form that writes with the anon key under an RLS policy.
    Anon,
    /// A signed-in visitor under an RLS policy.
    Authenticated,
    /// The table's owner (a direct connection, as the Node backend may use).
    Owner,
    /// A role of the project's own with INSERT and UPDATE (a plain PostgreSQL).
    Custom,
}

impl Writer {
    fn set_role(self) -> &'static str {
        match self {
            Writer::ServiceRole => "set role service_role",
            Writer::Anon => "set role anon",
            Writer::Authenticated => "set role authenticated",
            Writer::Owner => "reset role",
            Writer::Custom => "set role landing_writer",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Writer::ServiceRole => "svc",
            Writer::Anon => "anon",
            Writer::Authenticated => "auth",
            Writer::Owner => "owner",
            Writer::Custom => "custom",
        }
    }
}

/// What a project that lets a form write with the anon key (or a signed-in
/// user) has: the grants and RLS policies of its own. leadrelay adds none.
const FORM_POLICIES: &str = "
grant select, insert, update on public.landing_leads to anon, authenticated;
create policy landing_form_insert on public.landing_leads for insert to anon, authenticated with check (true);
create policy landing_form_read on public.landing_leads for select to anon, authenticated using (true);
create policy landing_form_update on public.landing_leads for update to anon, authenticated using (true) with check (true);
";

/// A role of the project's own on a PostgreSQL without Supabase's roles.
const CUSTOM_WRITER: &str = "
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'landing_writer') then
    create role landing_writer nologin;
  end if;
end
$$;
grant usage on schema public to landing_writer;
grant select, insert, update on public.landing_leads to landing_writer;
create policy landing_writer_all on public.landing_leads for all to landing_writer using (true) with check (true);
";

async fn as_writer(client: &Client, writer: Writer, sql: &str) -> Result<u64, String> {
    client
        .batch_execute(writer.set_role())
        .await
        .map_err(|e| store::describe(&e))?;
    let result = client.execute(sql, &[]).await;
    client
        .batch_execute("reset role")
        .await
        .map_err(|e| store::describe(&e))?;
    result.map_err(|e| store::describe(&e))
}

/// Every kind of write a landing makes, as `writer`; then, as the owner,
/// every lead of this writer holds one job per rule (email, SMS and the
/// dashboard row), and the updated values are saved.
async fn every_kind_of_write_succeeds_with_its_jobs(client: &Client, writer: Writer, shape: &str) {
    let t = writer.tag();
    let context = format!("{shape}, as {writer:?}");
    let write = |sql: String| {
        let context = context.clone();
        async move {
            as_writer(client, writer, &sql)
                .await
                .unwrap_or_else(|e| panic!("{context}: {sql}\n{e}"))
        }
    };
    write(format!(
        "insert into public.landing_leads (name, email, phone, source, metadata)
         values ('Single {t}', ' single-{t}@example.kz\u{a0}', '+7 (705) 904-44-67', 'proftest_main', '{{\"city\": \"Almaty\"}}')"
    ))
    .await;
    let bulk = write(format!(
        "insert into public.landing_leads (name, email, phone, source)
         select 'Bulk ' || g, 'bulk-{t}-' || g || '@example.kz', '8 705 ' || lpad(g::text, 7, '0'), 'proftest_main'
         from generate_series(1, 1000) g"
    ))
    .await;
    assert_eq!(bulk, 1000, "{context}");
    let id = uuid::Uuid::new_v4();
    for name in ["Upsert first", "Upsert again"] {
        write(format!(
            "insert into public.landing_leads (id, name, email, phone, source)
             values ('{id}', '{name} {t}', 'upsert-{t}@example.kz', '87011112233', 'proftest_main')
             on conflict (id) do update set name = excluded.name, email = excluded.email, phone = excluded.phone"
        ))
        .await;
    }
    let updated = write(format!(
        "update public.landing_leads
            set name = 'Renamed {t}', email = 'renamed-{t}@example.kz', phone = '+7 777 000 11 22'
          where email = ' single-{t}@example.kz\u{a0}'"
    ))
    .await;
    assert_eq!(updated, 1, "{context}");
    write(format!(
        "update public.landing_leads set email = upper(email) where email like 'bulk-{t}-1_@example.kz'"
    ))
    .await;
    // a person asking to be forgotten, where the landing's role may delete
    let deletes = matches!(writer, Writer::ServiceRole | Writer::Owner);
    if deletes {
        let deleted = write(format!(
            "delete from public.landing_leads where email = 'bulk-{t}-1000@example.kz'"
        ))
        .await;
        assert_eq!(deleted, 1, "{context}");
    }

    let row = client
        .query_one(
            &format!(
                "select count(*),
                        count(*) filter (where (select count(*) from public.notification_jobs j where j.lead_id = l.id) <> 3),
                        count(*) filter (where l.name = 'Upsert again {t}'),
                        count(*) filter (where l.email = 'renamed-{t}@example.kz' and l.phone = '+7 777 000 11 22')
                 from public.landing_leads l
                 where l.email ilike any(array['bulk-{t}-%', 'upsert-{t}@%', 'renamed-{t}@%'])"
            ),
            &[],
        )
        .await
        .unwrap();
    let (leads, without_jobs, upserted, renamed): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        leads,
        if deletes { 1001 } else { 1002 },
        "{context}: every lead is saved"
    );
    let orphans: i64 = client
        .query_one(
            "select count(*) from public.notification_jobs j
              where not exists (select 1 from public.landing_leads l where l.id = j.lead_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "{context}: a deleted lead's jobs go with it");
    assert_eq!(without_jobs, 0, "{context}: every lead has its three jobs");
    assert_eq!(upserted, 1, "{context}: the upsert updated the lead");
    assert_eq!(renamed, 1, "{context}: the update is saved");
}

/// Each of the roles a Supabase landing writes as, in a project of `shape`
/// with the project's own form policies.
async fn every_supabase_writer_writes_leads_with_their_jobs(shape: Privileges) {
    let db = shipped_db_as(shape).await;
    let client = db.client().await;
    client.batch_execute(FORM_POLICIES).await.unwrap();
    for writer in [
        Writer::ServiceRole,
        Writer::Anon,
        Writer::Authenticated,
        Writer::Owner,
    ] {
        every_kind_of_write_succeeds_with_its_jobs(&client, writer, shape.label()).await;
    }
}

#[tokio::test]
async fn every_role_writes_leads_with_their_jobs_in_a_supabase_project_of_today() {
    every_supabase_writer_writes_leads_with_their_jobs(Privileges::SupabaseCurrent).await;
}

#[tokio::test]
async fn every_role_writes_leads_with_their_jobs_in_a_supabase_project_of_the_old_default() {
    every_supabase_writer_writes_leads_with_their_jobs(Privileges::SupabaseLegacy).await;
}

#[tokio::test]
async fn migrate_works_on_a_plain_postgresql_without_supabase_roles_and_its_roles_write_leads() {
    // Supabase's roles are cluster-wide: this needs a cluster of its own.
    let cluster = harness::new_cluster();
    let admin = store::connect(&cluster.url("postgres")).await.unwrap();
    admin.batch_execute("create database plain").await.unwrap();
    let mut client = store::connect(&cluster.url("plain")).await.unwrap();
    let roles: i64 = client
        .query_one(
            "select count(*) from pg_roles where rolname in ('anon', 'authenticated', 'service_role')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0, "a plain PostgreSQL");
    let report = migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap_or_else(|e| panic!("migrate on a plain PostgreSQL: {e}"));
    assert_eq!(report.applied.len(), migrate::embedded().unwrap().len());
    client.batch_execute(CUSTOM_WRITER).await.unwrap();
    for writer in [Writer::Owner, Writer::Custom] {
        every_kind_of_write_succeeds_with_its_jobs(
            &client,
            writer,
            Privileges::PlainPostgres.label(),
        )
        .await;
    }
    // and a second run is a no-op there too
    let again = migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    assert!(again.applied.is_empty());
}

/// The version that repairs the landing's writes.
const REPAIR: &str = "20261203090000";

/// What the released console's migration left: the email index on
/// leadrelay_trim(), and no row for the repair yet.
const AS_THE_RELEASED_CONSOLE_LEFT_IT: &str = "
drop index public.landing_leads_email_lookup_idx;
create index landing_leads_email_search_idx on public.landing_leads (lower(public.leadrelay_trim(email)));
delete from leadrelay.schema_migrations where version = '20261203090000';
";

const SERVICE_ROLE_INSERT: &str = "insert into public.landing_leads (name, email, phone, source) values ('API', 'api@example.com', '+77011112233', 'proftest_main')";

#[tokio::test]
async fn migrate_repairs_a_project_of_today_where_the_released_console_index_refused_every_lead() {
    let db = shipped_db_as(Privileges::SupabaseCurrent).await;
    let mut client = db.client().await;
    client
        .batch_execute(AS_THE_RELEASED_CONSOLE_LEFT_IT)
        .await
        .unwrap();
    // the incident of this issue, as the released migrations left it
    let refused = as_writer(&client, Writer::ServiceRole, SERVICE_ROLE_INSERT)
        .await
        .unwrap_err();
    assert!(
        refused.contains("permission denied for function leadrelay_trim"),
        "{refused}"
    );
    let report = migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    assert_eq!(report.applied, [REPAIR]);
    as_writer(&client, Writer::ServiceRole, SERVICE_ROLE_INSERT)
        .await
        .unwrap();
    let (old, new_valid): (bool, bool) = {
        let row = client
            .query_one(
                "select to_regclass('public.landing_leads_email_search_idx') is not null,
                        (select indisvalid from pg_index where indexrelid = 'public.landing_leads_email_lookup_idx'::regclass)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(!old, "the index on leadrelay_trim() is gone");
    assert!(new_valid);
}

#[tokio::test]
async fn the_consoles_email_search_reads_the_index_the_landing_can_maintain() {
    let db = shipped_db_as(Privileges::SupabaseCurrent).await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into landing_leads (name, email, source)
             select 'n' || g, 'p' || g || '@example.kz', 'other' from generate_series(1, 2000) g;
             analyze landing_leads;",
        )
        .await
        .unwrap();
    let found = client
        .query(
            leadrelay::store::search::BY_EMAIL,
            &[&" P17@Example.KZ\u{a0}"],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "found however it is typed");
    let plan = plan_of(
        &client,
        leadrelay::store::search::BY_EMAIL,
        "p17@example.kz",
    )
    .await;
    assert!(
        plan.iter()
            .any(|l| l.contains("landing_leads_email_lookup_idx")),
        "{plan:#?}"
    );
    let def = index_def(&client, "public.landing_leads_email_lookup_idx").await;
    assert!(
        !def.contains("leadrelay_"),
        "built-in functions only: {def}"
    );
}

#[tokio::test]
async fn the_consoles_phone_search_reads_the_digits_index_and_finds_a_number_however_typed() {
    let db = shipped_db_as(Privileges::SupabaseCurrent).await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into landing_leads (name, email, phone, source)
             select 'n' || g, 'p' || g || '@example.kz', '+7 (705) ' || lpad(g::text, 3, '0') || '-44-67', 'other'
               from generate_series(1, 2000) g;
             analyze landing_leads;",
        )
        .await
        .unwrap();
    for typed in ["8 705 017 44 67", "+77050174467", "705 017-44-67"] {
        let found = client
            .query(leadrelay::store::search::BY_PHONE, &[&typed])
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{typed} finds the lead");
    }
    let plan = plan_of(&client, leadrelay::store::search::BY_PHONE, "87050174467").await;
    assert!(
        plan.iter()
            .any(|l| l.contains("landing_leads_phone_digits_idx")),
        "{plan:#?}"
    );
    let def = index_def(&client, "public.landing_leads_phone_digits_idx").await;
    assert!(!def.contains("regexp"), "no regular expression: {def}");
    let released: Option<String> = client
        .query_one(
            "select to_regclass('public.landing_leads_phone_search_idx')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(released, None, "the index on regexp_replace() is gone");
}

/// The lines of `EXPLAIN` for a search statement with its one argument.
async fn plan_of(client: &Client, search: &str, arg: &str) -> Vec<String> {
    client
        .query(&format!("explain {search}"), &[&arg])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn index_def(client: &Client, index: &str) -> String {
    client
        .query_one("select pg_get_indexdef($1::text::regclass)", &[&index])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `pid` waits for a lock.
async fn until_waiting_for_a_lock(client: &Client, pid: i32) {
    crate::app::eventually(
        Duration::from_secs(20),
        "the build waits for a lock",
        || async {
            client
                .query_one(
                    "select exists (select 1 from pg_locks where pid = $1 and not granted)",
                    &[&pid],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
}

async fn email_index_is_valid(client: &Client) -> bool {
    client
        .query_one(
            "select indisvalid from pg_index where indexrelid = 'public.landing_leads_email_lookup_idx'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_rerun_of_migrate_builds_again_an_index_an_interrupted_concurrent_build_left_invalid() {
    let db = shipped_db_as(Privileges::SupabaseCurrent).await;
    let mut client = db.client().await;
    client
        .batch_execute(&format!(
            "drop index public.landing_leads_email_lookup_idx;
             delete from leadrelay.schema_migrations where version = '{REPAIR}';"
        ))
        .await
        .unwrap();
    // A build interrupted for real: it waits for a landing transaction that
    // is still open, and is cancelled there (as a lost connection or a
    // Ctrl-C would end it), which leaves the index in the catalog, invalid.
    let landing = db.client().await;
    landing
        .batch_execute(&format!("begin; {SERVICE_ROLE_INSERT};"))
        .await
        .unwrap();
    let builder = db.client().await;
    let builder_pid: i32 = builder
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let build = tokio::spawn(async move {
        builder
            .batch_execute(&format!(
                "create index concurrently landing_leads_email_lookup_idx on public.landing_leads ({})",
                leadrelay::store::search::EMAIL_KEY
            ))
            .await
    });
    until_waiting_for_a_lock(&client, builder_pid).await;
    client
        .execute("select pg_cancel_backend($1)", &[&builder_pid])
        .await
        .unwrap();
    assert!(build.await.unwrap().is_err(), "the build was cancelled");
    landing.batch_execute("rollback").await.unwrap();
    assert!(
        !email_index_is_valid(&client).await,
        "left invalid, as such builds are"
    );
    migrate::apply(&mut client, &migrate::embedded().unwrap())
        .await
        .unwrap();
    assert!(
        email_index_is_valid(&client).await,
        "built again, and valid"
    );
    let found = client
        .query(
            "select 1 from landing_leads where lower(btrim(email)) = 'api@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        found.is_empty(),
        "the landing's transaction was rolled back"
    );
}

#[tokio::test]
async fn a_migration_waiting_for_a_lock_on_landing_leads_lets_the_landings_inserts_through() {
    let db = shipped_db_as(Privileges::SupabaseCurrent).await;
    let mut client = db.client().await;
    // A long report holds a lock on landing_leads that ALTER TABLE must wait
    // for. Before lock timeouts, the waiting ALTER queued every insert
    // behind it until the report ended.
    let report = db.client().await;
    report
        .batch_execute("begin; select count(*) from public.landing_leads;")
        .await
        .unwrap();
    let mut migrations = migrate::embedded().unwrap();
    migrations.push(migrate::Migration {
        version: "20991231000000".into(),
        name: "a_later_column".into(),
        sql: "alter table public.landing_leads add column if not exists later_column text;".into(),
    });
    let options = migrate::ApplyOptions {
        lock_timeout: Duration::from_millis(200),
        lock_tries: 1000,
    };
    let migrating =
        tokio::spawn(async move { migrate::apply_with(&mut client, &migrations, &options).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !migrating.is_finished(),
        "the migration waits for the report"
    );
    // The landing's insert, with a timeout far above the migration's lock
    // timeout and far below the report's length: the report ends only after
    // this insert returned.
    let landing = db.client().await;
    landing
        .batch_execute("set statement_timeout = '10s'")
        .await
        .unwrap();
    for n in 0..5 {
        as_writer(
            &landing,
            Writer::ServiceRole,
            &format!(
                "insert into public.landing_leads (name, email, source) values ('During {n}', 'during{n}@example.kz', 'proftest_main')"
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("the landing's insert waited behind the migration: {e}"));
    }
    assert!(!migrating.is_finished(), "still waiting for the report");
    report.batch_execute("commit").await.unwrap();
    migrating.await.unwrap().unwrap();
    let column: bool = db
        .client()
        .await
        .query_one(
            "select exists (select 1 from information_schema.columns where table_name = 'landing_leads' and column_name = 'later_column')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(column, "the migration applied once the report ended");
}
