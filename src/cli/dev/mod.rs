//! `leadrelay dev`: everything on one machine with no accounts. A private
//! PostgreSQL cluster under `.leadrelay/` (pg_cron preloaded when installed),
//! shaped like a Supabase database, with the migrations applied.

pub mod standin;

use std::path::Path;

use crate::cli::DevArgs;
use crate::config::{MobizonSettings, ResendSettings, ServeConfig};
use crate::domain::Secret;
use crate::ingest::svix::SigningKey;
use crate::serve::{Application, ServeError, shutdown_signal};
use crate::store::cluster::{Cluster, ClusterError, ClusterOptions, StopMode};
use crate::store::{self, migrate};
use crate::worker::WorkerSettings;

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
/// like a Supabase database (its roles), with the migrations applied. Dev
/// mode, the tests and the benchmark all start from one of these.
pub async fn create_migrated_database(
    cluster: &Cluster,
    name: &str,
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
        .batch_execute(SUPABASE_ROLES)
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
    let cluster = start_cluster(&args.dir).await?;
    let stop_cluster = StopClusterOnExit(&cluster);
    let url = cluster.url("postgres");
    let client = store::connect(&url).await?;
    if let Some(delay) = &args.delay {
        let delay = parse_delay(delay)?;
        client
            .execute(
                "update public.notification_rules set delay = make_interval(secs => $1) where channel in ('email', 'sms')",
                &[&delay.as_secs_f64()],
            )
            .await
            .map_err(|e| DevError::Prepare(store::describe(&e)))?;
    }
    let delay: String = client
        .query_one(
            "select coalesce(string_agg(distinct delay::text, ', '), 'no rule') from public.notification_rules where enabled and channel in ('email', 'sms')",
            &[],
        )
        .await
        .map_err(|e| DevError::Prepare(store::describe(&e)))?
        .get(0);
    drop(client);

    let outbox = std::path::absolute(args.dir.join("outbox"))
        .map_err(|e| DevError::Prepare(e.to_string()))?;
    let admin_token = persistent_secret(&args.dir.join("admin-token"), 16)?;
    let webhook_secret = format!(
        "whsec_{}",
        persistent_secret(&args.dir.join("webhook-secret"), 24)?
    );
    let resend_webhook_key = SigningKey::parse(&webhook_secret).map_err(DevError::Prepare)?;
    let mobizon_token_text = persistent_secret(&args.dir.join("mobizon-token"), 16)?;
    let mobizon_token = Secret::new(mobizon_token_text.clone());
    let stand_in = standin::start(
        outbox.clone(),
        resend_webhook_key.clone(),
        mobizon_token.clone(),
    )
    .await
    .map_err(|e| DevError::Prepare(format!("stand-in providers: {e}")))?;

    let config = ServeConfig {
        database_url: Secret::new(url.clone()),
        lead_tracking_database_url: None,
        resend: ResendSettings {
            api_key: Secret::new("re_dev_stand_in"),
            api_url: stand_in.url.clone(),
            from: "leadrelay dev <dev@example.com>".into(),
            max_rps: 5.0,
            batch_size: crate::providers::resend::MAX_BATCH,
        },
        mobizon: MobizonSettings {
            api_key: Secret::new("dev_stand_in"),
            api_url: stand_in.url.clone(),
            from: None,
            max_rps: 5.0,
        },
        listen_addr: args.listen,
        product_url: args.product_url.clone(),
        worker: WorkerSettings {
            sweep_interval: std::time::Duration::from_secs(5),
            ..WorkerSettings::default()
        },
        resend_webhook_key,
        mobizon_webhook_token: mobizon_token,
        mobizon_webhook_secret: None,
        admin_token: Secret::new(admin_token.clone()),
        mobizon_poll_interval: None,
        dev_outbox: Some(outbox.clone()),
    };
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    stand_in.deliver_reports_to(base.clone());
    write_dev_env(
        &args.dir,
        &[
            ("DATABASE_URL", url.as_str()),
            ("RESEND_API_KEY", "re_dev_stand_in"),
            ("RESEND_API_URL", stand_in.url.as_str()),
            ("EMAIL_FROM", "leadrelay dev <dev@example.com>"),
            ("MOBIZON_API_KEY", "dev_stand_in"),
            ("MOBIZON_API_URL", stand_in.url.as_str()),
            ("PRODUCT_URL", args.product_url.as_str()),
            ("RESEND_WEBHOOK_SECRET", webhook_secret.as_str()),
            ("MOBIZON_WEBHOOK_TOKEN", mobizon_token_text.as_str()),
            ("ADMIN_TOKEN", admin_token.as_str()),
        ],
    )?;

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
Try it:
  psql '{url}' -c \"insert into landing_leads (name, email, phone, source) values ('Айгерим', 'aigerim@example.com', '+7 705 123 45 67', 'proftest_main')\"
Check it as an operator would check production:
  leadrelay doctor --dev {dir}
Ctrl-C stops leadrelay and its PostgreSQL.
",
        token_file = args.dir.join("admin-token").display(),
        outbox = outbox.display(),
        dir = args.dir.display(),
    ));
    say(&banner);
    shutdown_signal().await;
    app.shutdown().await;
    drop(stop_cluster);
    say("stopped\n");
    Ok(())
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

fn write_dev_env(dir: &Path, settings: &[(&str, &str)]) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(DEV_ENV);
    let mut text = String::from(
        "# written by `leadrelay dev` at each start; read by `leadrelay doctor --dev`\n",
    );
    for (name, value) in settings {
        text.push_str(&format!("{name}={value}\n"));
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
        let field = match name {
            "DATABASE_URL" => &mut args.database_url,
            "RESEND_API_KEY" => &mut args.resend_api_key,
            "RESEND_API_URL" => &mut args.resend_api_url,
            "EMAIL_FROM" => &mut args.email_from,
            "MOBIZON_API_KEY" => &mut args.mobizon_api_key,
            "MOBIZON_API_URL" => &mut args.mobizon_api_url,
            "PRODUCT_URL" => &mut args.product_url,
            "RESEND_WEBHOOK_SECRET" => &mut args.resend_webhook_secret,
            "MOBIZON_WEBHOOK_TOKEN" => &mut args.mobizon_webhook_token,
            "ADMIN_TOKEN" => &mut args.admin_token,
            _ => continue,
        };
        field.get_or_insert_with(|| value.to_string());
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
