//! The command line: `leadrelay <command>`, with configuration from the
//! environment or flags of the same names.
//!
//! The operator's room, at the top: argument parsing and the commands
//! (`dev`, `doctor`, `backfill`, `status`, `retry`, `migrate`). It may use
//! every room; none uses it.

pub mod dev;
pub mod doctor;
pub mod forget;
pub mod ops;
pub mod reconcile;
pub mod suppress;
pub mod templates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::{self, migrate};
use crate::{config, serve};

#[derive(Debug, Parser)]
#[command(
    name = "leadrelay",
    version,
    about = "Durable, tracked follow-up email and SMS for landing-page leads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start (creating on first run) a private PostgreSQL cluster under .leadrelay/
    /// with pg_cron when installed, and apply the migrations.
    Dev(DevArgs),
    /// Apply leadrelay's migrations to DATABASE_URL, recorded in leadrelay.schema_migrations
    /// (the Supabase CLI's history is left to the project).
    Migrate(MigrateArgs),
    /// Hand leadrelay's migration files to a team that manages everything with the Supabase CLI.
    #[command(subcommand)]
    Migrations(MigrationsCommand),
    /// The production process: the worker and the HTTP server.
    Serve(Box<config::ServeArgs>),
    /// Enqueue messages, due now, for leads in a time window that have none
    /// (the leads that arrived before leadrelay), after asking Resend and
    /// Mobizon whether the system before leadrelay sent them.
    Backfill(BackfillArgs),
    /// For each lead in a window without a job for a channel, ask Resend and
    /// Mobizon whether its message was sent: record what was, send what was not.
    Reconcile(WindowArgs),
    /// One lead's messages and delivery states, by lead id, email or phone.
    Status(StatusArgs),
    /// Put failed or invalid jobs back to due after the cause was fixed (a wrong API key,
    /// a corrected email or phone in landing_leads): the recipient is taken from the lead again.
    Retry(RetryArgs),
    /// Cancel the jobs a notification rule made that were not tried yet (after disabling it).
    Cancel(CancelArgs),
    /// Put an email address or a phone on the suppression list: nothing is sent to it
    /// until it is lifted (a reason is required, and audited).
    Suppress(SuppressArgs),
    /// Lift a suppression (a reason is required, and audited); what was cancelled stays cancelled.
    Unsuppress(SuppressArgs),
    /// A person asked to be forgotten: cancel what was not sent and erase their email, phone,
    /// name and metadata from leadrelay's tables (and landing_leads with --lead-row).
    Forget(ForgetArgs),
    /// Check every enabled rule's template: it exists, compiles and renders a sample lead.
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Print a lead's email and SMS exactly as they go (or would), with the SMS's length.
    Preview(PreviewArgs),
    /// Check everything serve depends on (database, TLS, LISTEN, migrations, pg_cron,
    /// privileges, lead_tracking, providers, configuration): one line per check.
    Doctor(DoctorArgs),
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Render every enabled rule's templates against a sample lead; exit 1 on a problem.
    Check {
        #[command(flatten)]
        db: DatabaseArg,
        #[command(flatten)]
        product: ProductUrlArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct ProductUrlArg {
    /// The product link a rule's params do not set (as `serve` uses it).
    #[arg(long, env = "PRODUCT_URL")]
    pub product_url: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    #[command(flatten)]
    pub product: ProductUrlArg,
    /// A lead id, an email or a phone.
    pub lead: String,
    /// This template (both channels) instead of the lead's own messages.
    #[arg(long)]
    pub template: Option<String>,
    /// Where the unsubscribe links point (as `serve` uses it): the preview
    /// shows the link the message carries.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    #[arg(long, env = "UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    /// The rule's id in notification_rules.
    #[arg(long)]
    pub rule: i64,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    /// The person: a lead id, an email or a phone (every lead it names).
    pub lead: String,
    /// Erase the name, email, phone and metadata of their landing_leads rows too.
    #[arg(long)]
    pub lead_row: bool,
    #[arg(long)]
    pub yes: bool,
    /// Where the dashboard's lead_tracking table lives, when not in DATABASE_URL.
    #[arg(long, env = "LEAD_TRACKING_DATABASE_URL", hide_env_values = true)]
    pub lead_tracking_database_url: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SuppressArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    #[command(flatten)]
    pub recipient: suppress::Recipient,
    /// Why, for the audit.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: Box<config::ServeArgs>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Check the running `leadrelay dev` in this directory (its settings are kept there).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = ".leadrelay")]
    pub dev: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DatabaseArg {
    /// The landing database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The leads of a window, and how the providers are asked about them.
#[derive(Debug, clap::Args)]
pub struct WindowArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    #[command(flatten)]
    pub providers: config::ProviderArgs,
    /// Start of the window (inclusive): 2026-11-24, "2026-11-24 12:30" (UTC) or RFC 3339.
    #[arg(long)]
    pub since: String,
    /// End of the window (exclusive); default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only leads whose source matches this LIKE pattern.
    #[arg(long, default_value = "proftest%")]
    pub source: String,
    /// Show the report (the providers are asked); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Do not ask Resend and Mobizon first. A message the system before
    /// leadrelay sent is then sent a second time.
    #[arg(long)]
    pub no_provider_check: bool,
    /// The part of each provider's rate limit to take (0 to 1), leaving the
    /// rest to a running `serve`: Resend's limit is the whole team's.
    #[arg(long, default_value_t = reconcile::DEFAULT_SHARE, value_parser = parse_share)]
    pub provider_share: f64,
}

fn parse_share(value: &str) -> Result<f64, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0 && *v <= 1.0)
        .ok_or_else(|| format!("{value:?}: a fraction above 0 and at most 1, e.g. 0.5"))
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub window: WindowArgs,
    /// Send at once: ignore the rules' send windows, de-duplication and
    /// per-recipient caps (for an operator who means it).
    #[arg(long)]
    pub ignore_policies: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    /// A lead id, an email address or a phone number.
    pub lead: String,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["job", "failed_since"])))]
pub struct RetryArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    /// One failed job, by id.
    pub job: Option<i64>,
    /// Every job that failed since this time.
    #[arg(long)]
    pub failed_since: Option<String>,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the private cluster and the outbox live.
    #[arg(long, env = "LEADRELAY_DEV_DIR", default_value = ".leadrelay")]
    pub dir: PathBuf,
    /// Set the email and SMS rules' delay, e.g. 30s for a demo (kept in the dev database).
    #[arg(long)]
    pub delay: Option<String>,
    /// HTTP address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The product page the messages link to.
    #[arg(
        long,
        env = "PRODUCT_URL",
        default_value = "https://example.com/product"
    )]
    pub product_url: String,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The landing database (direct or session-mode connection).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Apply the files in this directory instead of the ones built into the binary.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long a statement may wait for a lock before it gives way to the
    /// landing's writes and tries again (every write queued behind it waits
    /// as long), e.g. 2s; default 500ms.
    #[arg(long, env = "MIGRATE_LOCK_TIMEOUT", value_parser = parse_lock_timeout)]
    pub lock_timeout: Option<std::time::Duration>,
}

/// A lock timeout between 10 ms and 1 minute: shorter never gets a busy
/// table's lock, longer makes the landing wait as long.
fn parse_lock_timeout(value: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{value:?}: {e} (e.g. 500ms or 2s)"))?;
    if d < std::time::Duration::from_millis(10) || d > std::time::Duration::from_secs(60) {
        return Err(format!("{value:?}: between 10ms and 60s"));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum MigrationsCommand {
    /// Write the SQL files named as the Supabase CLI expects into a directory
    /// (e.g. supabase/migrations of the project's repository).
    Export {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("configuration error: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] store::DbError),
    #[error(transparent)]
    Dev(#[from] dev::DevError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    Ops(#[from] ops::OpsError),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::Doctor(args) = cli.command {
        return run_doctor(args).await;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leadrelay: {e}");
            match e {
                CliError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Migrate(args) => {
            let url = config::database_url("DATABASE_URL", args.database_url.as_deref())?;
            let migrations = match &args.dir {
                Some(dir) => migrate::from_dir(dir)?,
                None => migrate::embedded()?,
            };
            let mut client = store::connect(url.expose()).await?;
            let mut options = migrate::ApplyOptions::default();
            if let Some(timeout) = args.lock_timeout {
                options.lock_timeout = timeout;
            }
            let report = migrate::apply_with(&mut client, &migrations, &options).await?;
            println!(
                "applied {} migration(s){}; {} already applied",
                report.applied.len(),
                if report.applied.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", report.applied.join(", "))
                },
                report.already_applied.len()
            );
            Ok(())
        }
        Command::Migrations(MigrationsCommand::Export { dir }) => {
            let written = migrate::export(&migrate::embedded()?, &dir)?;
            for path in &written {
                println!("wrote {}", path.display());
            }
            println!(
                "{} file(s) written to {}; `supabase db push` applies them, and `leadrelay migrate` then counts them as applied",
                written.len(),
                dir.display()
            );
            Ok(())
        }
        Command::Dev(args) => Ok(dev::run(&args).await?),
        Command::Backfill(args) => {
            let ignore = args.ignore_policies;
            run_window(args.window, reconcile::Command::Backfill, ignore).await
        }
        Command::Reconcile(args) => run_window(args, reconcile::Command::Reconcile, false).await,
        Command::Status(args) => {
            let client = connect(&args.db).await?;
            print!("{}", ops::status(&client, &args.lead).await?);
            Ok(())
        }
        Command::Retry(args) => {
            let since = args
                .failed_since
                .as_deref()
                .map(|t| ops::parse_time("--failed-since", t))
                .transpose()?;
            let client = connect(&args.db).await?;
            ops::retry(&client, args.job, since, args.dry_run, args.yes).await?;
            Ok(())
        }
        Command::Cancel(args) => {
            let client = connect(&args.db).await?;
            ops::cancel_rule(&client, args.rule, args.dry_run, args.yes).await?;
            Ok(())
        }
        Command::Forget(args) => {
            let mut client = connect(&args.db).await?;
            let tracking = config::optional(args.lead_tracking_database_url.as_deref())
                .map(|u| config::database_url("LEAD_TRACKING_DATABASE_URL", Some(u)))
                .transpose()?;
            let request = forget::Request {
                query: &args.lead,
                lead_row: args.lead_row,
                yes: args.yes,
                tracking_url: tracking.as_ref().map(|s| s.expose()),
            };
            print!("{}", forget::run(&mut client, &request).await?);
            Ok(())
        }
        Command::Suppress(args) => {
            let client = connect(&args.db).await?;
            print!(
                "{}",
                suppress::suppress(&client, &args.recipient, &args.reason).await?
            );
            Ok(())
        }
        Command::Unsuppress(args) => {
            let client = connect(&args.db).await?;
            print!(
                "{}",
                suppress::unsuppress(&client, &args.recipient, &args.reason).await?
            );
            Ok(())
        }
        Command::Templates(TemplatesCommand::Check { db, product }) => {
            let product_url = product_url(&product)?;
            let client = connect(&db).await?;
            print!("{}", templates::check(&client, &product_url).await?);
            Ok(())
        }
        Command::Preview(args) => {
            let product_url = product_url(&args.product)?;
            let client = connect(&args.db).await?;
            let secret = config::optional(args.unsubscribe_secret.as_deref())
                .map(crate::domain::Secret::new);
            // a role that may not read the key previews without the link
            let links = crate::store::suppressions::unsubscribe_key(&client, secret.as_ref())
                .await
                .unwrap_or(None)
                .map(|key| {
                    crate::messages::unsubscribe::Links::new(
                        key.as_bytes(),
                        config::optional(args.public_url.as_deref()),
                    )
                });
            print!(
                "{}",
                templates::preview(
                    &client,
                    &args.lead,
                    args.template.as_deref(),
                    &product_url,
                    links.as_ref()
                )
                .await?
            );
            Ok(())
        }
        Command::Doctor(_) => Ok(()),
        Command::Serve(args) => {
            let signals = serve::ShutdownSignals::install();
            let config = config::ServeConfig::from_args(&args)?;
            let app = serve::Application::build(config).await?;
            app.run_until(signals).await;
            Ok(())
        }
    }
}

/// Doctor's exit code is its verdict: 0 when nothing failed, 1 otherwise.
async fn run_doctor(args: DoctorArgs) -> ExitCode {
    let mut serve = *args.serve;
    if let Some(dir) = &args.dev
        && let Err(e) = dev::fill_from_dev_env(&mut serve, dir)
    {
        eprintln!("leadrelay: {e}");
        return ExitCode::from(2);
    }
    let report = doctor::run(&serve).await;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("leadrelay: {e}"),
        }
    } else {
        print!("{}", report.text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `backfill` and `reconcile`: the window parsed, the providers' clients
/// made (unless `--no-provider-check`), then `reconcile::run`.
async fn run_window(
    args: WindowArgs,
    command: reconcile::Command,
    ignore_policies: bool,
) -> Result<(), CliError> {
    let since = ops::parse_time("--since", &args.since)?;
    let until = match &args.until {
        Some(u) => ops::parse_time("--until", u)?,
        None => chrono::Utc::now(),
    };
    if until <= since {
        return Err(ops::OpsError::EmptyWindow.into());
    }
    let providers = if args.no_provider_check {
        None
    } else {
        Some(reconcile::providers(&args.providers, args.provider_share).map_err(|e| {
            ops::OpsError::Input(format!(
                "{e}: {} asks Resend and Mobizon first whether the system before leadrelay sent \
                 the messages; set both keys (a Resend key with full access, to list emails), \
                 or pass --no-provider-check to send without asking",
                command.name()
            ))
        })?)
    };
    let mut client = connect(&args.db).await?;
    let request = reconcile::Request {
        command,
        since,
        until,
        source_pattern: args.source.clone(),
        dry_run: args.dry_run,
        yes: args.yes,
        ignore_policies,
    };
    reconcile::run(&mut client, providers.as_ref(), &request).await?;
    Ok(())
}

fn product_url(arg: &ProductUrlArg) -> Result<String, CliError> {
    Ok(config::required("PRODUCT_URL", arg.product_url.as_deref())?.to_string())
}

async fn connect(arg: &DatabaseArg) -> Result<tokio_postgres::Client, CliError> {
    let url = config::database_url("DATABASE_URL", arg.database_url.as_deref())?;
    Ok(store::connect(url.expose()).await?)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LEADRELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LEADRELAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A log line that cannot be written (stderr piped into a `tee` that was
    // stopped) is dropped, not reported on stderr, which would panic.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
