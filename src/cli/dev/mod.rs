//! `leadrelay dev`: everything on one machine with no accounts. A private
//! PostgreSQL cluster under `.leadrelay/` (pg_cron preloaded when installed),
//! shaped like a Supabase database, with the migrations applied.

pub mod books;
pub mod privileges;
pub mod standin;

use std::path::Path;

use crate::cli::DevArgs;
use crate::config::ServeConfig;
use crate::domain::Secret;
use crate::ingest::svix::SigningKey;
use crate::serve::{Application, ServeError, ShutdownSignals};
use crate::store::cluster::{Cluster, ClusterError, ClusterOptions, StopMode};
use crate::store::{self, migrate};

pub use privileges::Privileges;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Db(#[from] store::DbError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("dev mode: {0}")]
    Prepare(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Starts the private cluster (creating it on first use) and migrates it.
/// Creates database `name` in `cluster` (`postgres` exists already), shaped
/// like a Supabase project created today, with the migrations applied. Dev
/// mode, the tests and the benchmark all start from one of these.
pub async fn create_migrated_database(
    cluster: &Cluster,
    name: &str,
) -> Result<tokio_postgres::Client, DevError> {
    create_migrated_database_as(cluster, name, Privileges::SupabaseCurrent).await
}

/// The same, for a database of the given shape.
pub async fn create_migrated_database_as(
    cluster: &Cluster,
    name: &str,
    privileges: Privileges,
) -> Result<tokio_postgres::Client, DevError> {
    if name != "postgres" {
        let admin = store::connect(&cluster.url("postgres")).await?;
        admin
            .batch_execute(&format!("create database \"{}\"", name.replace('"', "")))
            .await
            .map_err(|e| DevError::Prepare(store::describe(&e)))?;
    }
    let mut client = store::connect(&cluster.url(name)).await?;
    client
        .batch_execute(&privileges.before_migrations())
        .await
        .map_err(|e| DevError::Prepare(store::describe(&e)))?;
    migrate::apply(&mut client, &migrate::embedded()?).await?;
    Ok(client)
}

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
    let client = create_migrated_database(&cluster, "postgres").await?;
    client
        .batch_execute(crate::worker::lead_tracking::DASHBOARD_TABLE)
        .await
        .map_err(|e| DevError::Prepare(store::describe(&e)))?;
    Ok(cluster)
}

/// Stops the private PostgreSQL however `run` ends: returned, failed, or
/// unwound by a panic (a log line written to a closed pipe once did that,
/// and left the cluster running).
struct StopClusterOnExit<'a>(&'a Cluster);

impl Drop for StopClusterOnExit<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop(StopMode::Fast) {
            tracing::warn!(error = %e, "could not stop the private PostgreSQL");
        }
    }
}

pub async fn run(args: &DevArgs) -> Result<(), DevError> {
    let signals = ShutdownSignals::install();
    let cluster = start_cluster(&args.dir).await?;
    let stop_cluster = StopClusterOnExit(&cluster);
    let url = cluster.url("postgres");
    let delay = apply_delay(&url, args.delay.as_deref()).await?;
    let outbox = std::path::absolute(args.dir.join("outbox"))
        .map_err(|e| DevError::Prepare(e.to_string()))?;
    let secrets = DevSecrets::load(&args.dir)?;
    let stand_in = standin::start(
        outbox.clone(),
        SigningKey::parse(&secrets.webhook_secret).map_err(DevError::Prepare)?,
        Secret::new(secrets.mobizon_token.clone()),
        Secret::new(secrets.mobizon_webhook_secret.clone()),
    )
    .await
    .map_err(|e| DevError::Prepare(format!("stand-in providers: {e}")))?;
    // One set of settings, as `serve` would read them from the environment:
    // what dev mode runs with is what `doctor --dev` checks.
    let serve_args = serve_args(args, &url, &stand_in.url, &secrets);
    write_dev_env(&args.dir, &serve_args)?;
    let mut config =
        ServeConfig::from_args(&serve_args).map_err(|e| DevError::Prepare(e.to_string()))?;
    config.dev_outbox = Some(outbox.clone());
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    stand_in.deliver_reports_to(base.clone());
    say(&banner(args, &cluster, &base, &secrets, &outbox, &delay));
    signals.wait().await;
    app.shutdown().await;
    drop(stop_cluster);
    say("stopped\n");
    Ok(())
}

/// `--delay` written to the email and SMS rules; returns the delay in force.
async fn apply_delay(url: &str, delay: Option<&str>) -> Result<String, DevError> {
    let client = store::connect(url).await?;
    let prepare = |e: tokio_postgres::Error| DevError::Prepare(store::describe(&e));
    if let Some(delay) = delay {
        let delay = parse_delay(delay)?;
        client
            .execute(
                "update public.notification_rules set delay = make_interval(secs => $1) where channel in ('email', 'sms')",
                &[&delay.as_secs_f64()],
            )
            .await
            .map_err(prepare)?;
    }
    Ok(client
        .query_one(
            "select coalesce(string_agg(distinct delay::text, ', '), 'no rule') from public.notification_rules where enabled and channel in ('email', 'sms')",
            &[],
        )
        .await
        .map_err(prepare)?
        .get(0))
}

/// The tokens dev mode keeps under its directory, so they survive restarts.
struct DevSecrets {
    admin_token: String,
    webhook_secret: String,
    mobizon_token: String,
    mobizon_webhook_secret: String,
}

impl DevSecrets {
    fn load(dir: &Path) -> Result<DevSecrets, DevError> {
        Ok(DevSecrets {
            admin_token: persistent_secret(&dir.join("admin-token"), 16)?,
            webhook_secret: format!(
                "whsec_{}",
                persistent_secret(&dir.join("webhook-secret"), 24)?
            ),
            mobizon_token: persistent_secret(&dir.join("mobizon-token"), 16)?,
            mobizon_webhook_secret: persistent_secret(&dir.join("mobizon-webhook-secret"), 16)?,
        })
    }
}

fn serve_args(
    args: &DevArgs,
    url: &str,
    stand_in: &str,
    secrets: &DevSecrets,
) -> crate::config::ServeArgs {
    crate::config::ServeArgs {
        database_url: Some(url.into()),
        resend_api_key: Some("re_dev_stand_in".into()),
        resend_api_url: Some(stand_in.into()),
        email_from: Some("leadrelay dev <dev@example.com>".into()),
        resend_max_rps: Some("5".into()),
        mobizon_api_key: Some("dev_stand_in".into()),
        mobizon_api_url: Some(stand_in.into()),
        mobizon_max_rps: Some("5".into()),
        listen_addr: Some(args.listen.to_string()),
        product_url: Some(args.product_url.clone()),
        // the unsubscribe links point here: http, as doctor says
        public_url: Some(format!("http://{}", args.listen)),
        sweep_interval: Some("5s".into()),
        resend_webhook_secret: Some(secrets.webhook_secret.clone()),
        mobizon_webhook_token: Some(secrets.mobizon_token.clone()),
        mobizon_webhook_secret: Some(secrets.mobizon_webhook_secret.clone()),
        admin_token: Some(secrets.admin_token.clone()),
        mobizon_poll_interval: Some("off".into()),
        ..Default::default()
    }
}

fn banner(
    args: &DevArgs,
    cluster: &Cluster,
    base: &str,
    secrets: &DevSecrets,
    outbox: &Path,
    delay: &str,
) -> String {
    let mut banner = String::new();
    if !cluster.has_pg_cron() {
        banner.push_str(
            "note: pg_cron is not installed (Debian package postgresql-15-cron); the worker promotes due jobs itself\n",
        );
    }
    banner.push_str(&format!(
        "leadrelay dev is running
  ops page    {base}/ops   (admin token {admin_token}, kept in {token_file})
  status API  curl -H 'Authorization: Bearer {admin_token}' {base}/leads/<lead id>/status
  metrics     {base}/metrics
  database    DATABASE_URL={url}
  outbox      {outbox}  (every email and SMS the stand-in providers received)
  delay       {delay} after a lead arrives (`leadrelay dev --delay 30s` for a quicker demo)
Try it, writing as the landing does (supabase-js with the service key is role service_role):
  psql '{url}' -c 'set role service_role' -c \"insert into landing_leads (name, email, phone, source) values ('Айгерим', 'aigerim@example.com', '+7 705 123 45 67', 'proftest_main')\"
Check it as an operator would check production:
  leadrelay doctor --dev {dir}
Ctrl-C stops leadrelay and its PostgreSQL.
",
        admin_token = secrets.admin_token,
        url = cluster.url("postgres"),
        token_file = args.dir.join("admin-token").display(),
        outbox = outbox.display(),
        dir = args.dir.display(),
    ));
    banner
}

/// Writes to stdout, ignoring a closed pipe (`… | tee log` stopped with
/// Ctrl-C): `println!` would panic there.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The settings this dev run uses, for `leadrelay doctor --dev`; only the
/// owner may read them (they hold the dev tokens).
const DEV_ENV: &str = "dev.env";

/// The variables `dev.env` carries, and where each sits in `ServeArgs`:
/// one table for writing the file and for reading it back.
fn dev_env_fields(
    args: &mut crate::config::ServeArgs,
) -> [(&'static str, &mut Option<String>); 17] {
    [
        ("DATABASE_URL", &mut args.database_url),
        ("RESEND_API_KEY", &mut args.resend_api_key),
        ("RESEND_API_URL", &mut args.resend_api_url),
        ("EMAIL_FROM", &mut args.email_from),
        ("RESEND_MAX_RPS", &mut args.resend_max_rps),
        ("MOBIZON_API_KEY", &mut args.mobizon_api_key),
        ("MOBIZON_API_URL", &mut args.mobizon_api_url),
        ("MOBIZON_MAX_RPS", &mut args.mobizon_max_rps),
        ("LISTEN_ADDR", &mut args.listen_addr),
        ("PRODUCT_URL", &mut args.product_url),
        ("PUBLIC_URL", &mut args.public_url),
        ("SWEEP_INTERVAL", &mut args.sweep_interval),
        ("RESEND_WEBHOOK_SECRET", &mut args.resend_webhook_secret),
        ("MOBIZON_WEBHOOK_TOKEN", &mut args.mobizon_webhook_token),
        ("MOBIZON_WEBHOOK_SECRET", &mut args.mobizon_webhook_secret),
        ("ADMIN_TOKEN", &mut args.admin_token),
        ("MOBIZON_POLL_INTERVAL", &mut args.mobizon_poll_interval),
    ]
}

fn write_dev_env(dir: &Path, args: &crate::config::ServeArgs) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(DEV_ENV);
    let mut text = String::from(
        "# written by `leadrelay dev` at each start; read by `leadrelay doctor --dev`\n",
    );
    let mut args = args.clone();
    for (name, value) in dev_env_fields(&mut args) {
        if let Some(value) = value {
            text.push_str(&format!("{name}={value}\n"));
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| DevError::Prepare(format!("{}: {e}", path.display())))
}

/// Fills the settings `args` lacks from a dev run's `dev.env` in `dir`.
pub fn fill_from_dev_env(args: &mut crate::config::ServeArgs, dir: &Path) -> Result<(), DevError> {
    let path = dir.join(DEV_ENV);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        DevError::Prepare(format!(
            "{}: {e} (is `leadrelay dev` running with --dir {}?)",
            path.display(),
            dir.display()
        ))
    })?;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        for (field_name, field) in dev_env_fields(args) {
            if field_name == name {
                field.get_or_insert_with(|| value.to_string());
            }
        }
    }
    Ok(())
}

/// `--delay`: 0s is allowed here (messages at once), unlike the worker's
/// durations.
fn parse_delay(value: &str) -> Result<std::time::Duration, DevError> {
    humantime::parse_duration(value.trim())
        .ok()
        .filter(|d| *d <= std::time::Duration::from_secs(30 * 86_400))
        .ok_or_else(|| {
            DevError::Prepare(format!(
                "--delay {value:?} is not a duration such as 30s or 2m"
            ))
        })
}

/// A random hex secret kept in `path`, so it survives restarts of dev mode.
fn persistent_secret(path: &Path, bytes: usize) -> Result<String, DevError> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().to_string());
    }
    let value: String = (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(path, &value)
        .map_err(|e| DevError::Prepare(format!("{}: {e}", path.display())))?;
    Ok(value)
}
