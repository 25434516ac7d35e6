//! The command line: `leadrelay <command>`, with configuration from the
//! environment or flags of the same names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{config, db, dev, migrate, serve};

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
    /// Apply supabase/migrations/*.sql to DATABASE_URL, recorded as the Supabase CLI does.
    Migrate(MigrateArgs),
    /// The production process: the worker and the HTTP server.
    Serve(Box<config::ServeArgs>),
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the private cluster and the outbox live.
    #[arg(long, env = "LEADRELAY_DEV_DIR", default_value = ".leadrelay")]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The landing database (direct or session-mode connection).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Apply the files in this directory instead of the ones built into the binary.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("configuration error: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Dev(#[from] dev::DevError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
            let mut client = db::connect(url.expose()).await?;
            let report = migrate::apply(&mut client, &migrations).await?;
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
        Command::Dev(args) => Ok(dev::run(&args).await?),
        Command::Serve(args) => {
            let config = config::ServeConfig::from_args(&args)?;
            let app = serve::Application::build(config).await?;
            app.run_until_signal().await;
            Ok(())
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LEADRELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LEADRELAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
