//! The test harness: one throwaway PostgreSQL cluster per test process (pg_cron
//! preloaded when installed), a migrated template database, and a fresh
//! database cloned from it for every test. Works as root and as a normal user.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use leadrelay::cli::dev::{self, Privileges};
use leadrelay::store;
use leadrelay::store::cluster::{Cluster, ClusterOptions};
use tokio_postgres::Client;

/// A Supabase project as created today (no automatic grants): what most
/// tests run against.
pub const TEMPLATE_DB: &str = "leadrelay_template";
/// A Supabase project of the old default privileges, for the tests that
/// run under each shape.
pub const LEGACY_TEMPLATE_DB: &str = "leadrelay_template_legacy";
/// pg_cron runs jobs in this one database of the test cluster.
pub const CRON_DB: &str = "leadrelay_cron";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static LEGACY_TEMPLATE: OnceLock<()> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// Runs `f` to completion on a runtime of its own, for set-up done from inside
/// a `#[tokio::test]` that must not block its own runtime.
fn block_on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("set-up thread")
}

/// A new cluster in a temporary directory that is stopped and removed when this
/// process exits, however it exits.
pub fn new_cluster() -> Cluster {
    let root = tempfile::Builder::new()
        .prefix("leadrelay-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let cluster = Cluster::start(&ClusterOptions {
        root,
        port: None,
        ephemeral: true,
        cron_database: CRON_DB.into(),
    })
    .expect("start the test cluster");
    cluster
        .remove_when_process_exits(std::process::id())
        .expect("cluster watchdog");
    cluster
}

/// Creates the Supabase roles and migrates `db` in `cluster`.
pub async fn prepare_database(cluster: &Cluster, db_name: &str) {
    dev::create_migrated_database(cluster, db_name)
        .await
        .unwrap_or_else(|e| panic!("prepare {db_name}: {e}"));
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = new_cluster();
        block_on_own_runtime(async move {
            make_template(&cluster, TEMPLATE_DB, Privileges::SupabaseCurrent).await;
            cluster
        })
    })
}

/// A migrated database of the given shape that others are cloned from.
async fn make_template(cluster: &Cluster, name: &'static str, privileges: Privileges) {
    drop(
        dev::create_migrated_database_as(cluster, name, privileges)
            .await
            .unwrap_or_else(|e| panic!("migrate the template {name}: {e}")),
    );
    // CREATE DATABASE ... TEMPLATE needs the template to have no sessions.
    let admin = store::connect(&cluster.url("postgres"))
        .await
        .expect("connect");
    admin
        .batch_execute(&format!(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}' and pid <> pg_backend_pid()"
        ))
        .await
        .expect("close template sessions");
}

fn template_of(privileges: Privileges) -> &'static str {
    match privileges {
        Privileges::SupabaseCurrent => TEMPLATE_DB,
        Privileges::SupabaseLegacy => {
            let cluster = cluster();
            LEGACY_TEMPLATE.get_or_init(|| {
                block_on_own_runtime(make_template(
                    cluster,
                    LEGACY_TEMPLATE_DB,
                    Privileges::SupabaseLegacy,
                ))
            });
            LEGACY_TEMPLATE_DB
        }
        Privileges::PlainPostgres => {
            panic!("a plain PostgreSQL has no Supabase roles: start a cluster of its own")
        }
    }
}

/// A migrated database of the test cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn client(&self) -> Client {
        store::connect(&self.url).await.expect("connect test db")
    }
}

/// Turns the delivery policies' de-duplication and cap off.
pub const POLICIES_OFF: &str =
    "update notification_rules set dedupe_window = null, max_per_recipient_per_day = null";

/// A fresh, migrated database for one test, with the delivery policies'
/// de-duplication and per-recipient cap off: most tests send many messages
/// to one test phone and address on purpose. `shipped_db` keeps them.
pub async fn fresh_db() -> TestDb {
    let db = shipped_db().await;
    db.client()
        .await
        .batch_execute(POLICIES_OFF)
        .await
        .expect("policies off");
    db
}

/// A fresh database exactly as the migrations leave it (the policies on).
pub async fn shipped_db() -> TestDb {
    shipped_db_as(Privileges::SupabaseCurrent).await
}

/// A fresh database of the given Supabase shape, as the migrations leave it.
pub async fn shipped_db_as(privileges: Privileges) -> TestDb {
    let cluster = cluster();
    let template = template_of(privileges);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = store::connect(&cluster.url("postgres"))
        .await
        .expect("connect");
    let sql = format!("create database {name} template {template}");
    // Two clones started at the same instant can see each other on the template.
    let mut tries = 0;
    loop {
        match admin.batch_execute(&sql).await {
            Ok(()) => break,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create {name}: {}", store::describe(&e)),
        }
    }
    TestDb {
        url: cluster.url(&name),
        name,
    }
}

/// An empty database (no migrations), for tests of `migrate` itself: the
/// Supabase roles of the old default privileges, no landing table (each
/// test makes the one it is about).
pub async fn empty_db() -> TestDb {
    let cluster = cluster();
    let name = format!(
        "e_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = store::connect(&cluster.url("postgres"))
        .await
        .expect("connect");
    admin
        .batch_execute(&format!("create database {name} template template0"))
        .await
        .expect("create empty db");
    let client = store::connect(&cluster.url(&name)).await.expect("connect");
    client
        .batch_execute(&Privileges::SupabaseLegacy.before_migrations())
        .await
        .expect("roles");
    TestDb {
        url: cluster.url(&name),
        name,
    }
}

/// A lead of the incident fixture.
#[derive(Debug, serde::Deserialize)]
pub struct FixtureLead {
    pub name: String,
    pub email: String,
    pub phone: String,
    /// `HH:MM` of the incident's day.
    pub submitted_at: String,
}

#[derive(Debug, serde::Deserialize)]
pub struct Fixture {
    pub source: String,
    pub leads: Vec<FixtureLead>,
    pub metadata_example: serde_json::Value,
}

pub fn incident_fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/incident_leads.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture json")
}

/// The landing's INSERT, as supabase-js with the service key sends it through
/// PostgREST: as role service_role, naming only the columns it knows.
pub const LANDING_INSERT: &str = "insert into public.landing_leads (name, email, phone, source, metadata) values ($1, $2, $3, $4, $5) returning id";

pub async fn insert_as_landing(
    client: &Client,
    name: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
    source: Option<&str>,
    metadata: Option<&serde_json::Value>,
) -> uuid::Uuid {
    client
        .batch_execute("set role service_role")
        .await
        .expect("set role");
    let row = client
        .query_one(LANDING_INSERT, &[&name, &email, &phone, &source, &metadata])
        .await
        .unwrap_or_else(|e| panic!("landing insert failed: {}", store::describe(&e)));
    client
        .batch_execute("reset role")
        .await
        .expect("reset role");
    row.get(0)
}

/// Turns the landing table's enqueue trigger off (leads as they were
/// before leadrelay: no jobs) or on again.
pub async fn enqueue_trigger(client: &Client, on: bool) {
    let sql = format!(
        "alter table landing_leads {} trigger landing_leads_enqueue_notifications",
        if on { "enable" } else { "disable" }
    );
    client
        .batch_execute(&sql)
        .await
        .expect("the enqueue trigger");
}

/// The incident's four leads, inserted as the landing inserts them.
pub async fn insert_incident_leads(client: &Client) -> Vec<uuid::Uuid> {
    let fixture = incident_fixture();
    let mut ids = Vec::new();
    for lead in &fixture.leads {
        ids.push(
            insert_as_landing(
                client,
                Some(&lead.name),
                Some(&lead.email),
                Some(&lead.phone),
                Some(&fixture.source),
                Some(&fixture.metadata_example),
            )
            .await,
        );
    }
    ids
}

/// The moment of every job of `lead` passed a second ago: still
/// `scheduled`, due for the promotion or a claim.
pub async fn moment_passed(client: &Client, lead: uuid::Uuid) {
    client
        .execute(
            "update notification_jobs set due_at = now() - interval '1 second' where lead_id = $1",
            &[&lead],
        )
        .await
        .unwrap();
}

/// An ordinary proftest lead from the landing: a sendable phone, no metadata.
pub async fn insert_proftest_lead(client: &Client, name: &str, email: &str) -> uuid::Uuid {
    insert_proftest_lead_with_phone(client, name, email, "87051234567").await
}

/// A proftest lead from the landing with the phone as the person typed it.
pub async fn insert_proftest_lead_with_phone(
    client: &Client,
    name: &str,
    email: &str,
    phone: &str,
) -> uuid::Uuid {
    insert_as_landing(
        client,
        Some(name),
        Some(email),
        Some(phone),
        Some("proftest_main"),
        None,
    )
    .await
}
