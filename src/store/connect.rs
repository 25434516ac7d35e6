//! Connections to PostgreSQL: one-off clients whose server notices are logged,
//! the worker's pool, and readable text for database errors. Connection
//! strings follow libpq (`conninfo`), TLS follows libpq's `sslmode` (`tls`).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
use super::tls;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("invalid database URL: {0}")]
    Url(#[from] ConnInfoError),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// A driven connection as tokio-postgres hands it over, before its task runs.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Opens one connection; server NOTICEs (the migrations explain themselves
/// with them) are logged at DEBUG, WARNINGs at WARN.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let info = ConnInfo::parse(url)?;
    let (client, connection) = open(&info).await?;
    tokio::spawn(drive(connection));
    Ok(client)
}

/// Runs a connection until it closes, logging what the server says on it.
async fn drive(mut connection: Connection) {
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notice(notice)) if notice.severity() == "WARNING" => {
                tracing::warn!("{}", notice.message())
            }
            Ok(AsyncMessage::Notice(notice)) => {
                tracing::debug!(severity = notice.severity(), "{}", notice.message())
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %describe(&e), "database connection closed");
                break;
            }
        }
    }
}

/// Connects as libpq would with the same string; a refusal is explained in
/// words a user can act on.
pub async fn open(info: &ConnInfo) -> Result<(Client, Connection), DbError> {
    let tls = tls::connector(info)?;
    attempt(info, &tls)
        .await
        .map_err(|failed| DbError::Connect(explain(info, &failed)))
}

/// Why a connection could not be made: the first transport's error, and
/// the fallback's when libpq would have tried one.
pub struct Failed {
    pub first: tokio_postgres::Error,
    pub fallback: Option<tokio_postgres::Error>,
}

/// `allow` tries without TLS first, `prefer` with TLS first, each falling
/// back once as libpq does; the other modes take one transport.
async fn attempt(info: &ConnInfo, tls: &MakeRustlsConnect) -> Result<(Client, Connection), Failed> {
    let (first, fallback) = match info.ssl_mode {
        SslMode::Disable => (DriverSslMode::Disable, None),
        SslMode::Allow => (DriverSslMode::Disable, Some(DriverSslMode::Require)),
        SslMode::Prefer => (DriverSslMode::Prefer, Some(DriverSslMode::Disable)),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            (DriverSslMode::Require, None)
        }
    };
    let connect = |mode: DriverSslMode| {
        let mut config = info.config.clone();
        config.ssl_mode(mode);
        let tls = tls.clone();
        async move { config.connect(tls).await }
    };
    let first = match connect(first).await {
        Ok(pair) => return Ok(pair),
        Err(e) => e,
    };
    // A server not reached at all would meet the other transport the same way.
    let reached = !first.to_string().starts_with("error connecting to server");
    match fallback {
        Some(mode) if reached => match connect(mode).await {
            Ok(pair) => Ok(pair),
            Err(e) => Err(Failed {
                first,
                fallback: Some(e),
            }),
        },
        _ => Err(Failed {
            first,
            fallback: None,
        }),
    }
}

/// Why the attempts failed, the first one first: with `prefer`, a TLS
/// refusal says more than the unencrypted fallback's "no pg_hba.conf entry".
pub fn explain(info: &ConnInfo, failed: &Failed) -> String {
    let first = explain_one(info, &failed.first);
    match &failed.fallback {
        Some(e) => {
            let second = explain_one(info, e);
            if second == first {
                first
            } else {
                format!("{first}; then, on the other transport: {second}")
            }
        }
        None => first,
    }
}

fn explain_one(info: &ConnInfo, error: &tokio_postgres::Error) -> String {
    use rustls::CertificateError as C;
    const CA_HINT: &str = "for Supabase, download the CA (prod-ca-2021.crt) from the dashboard's database settings and set sslrootcert to its path";
    if let Some(tls) = tls::tls_failure(error) {
        let root = match &info.root_cert {
            RootCert::File(path) => path.display().to_string(),
            RootCert::System => "the public roots (sslrootcert=system)".into(),
            RootCert::None => "(none)".into(),
        };
        return match tls {
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                "the server's certificate is not signed by the CA in sslrootcert ({root}); {CA_HINT}"
            ),
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => format!(
                "the host name {} does not match the server's certificate (sslmode=verify-full checks it): connect with a host name the certificate names",
                info.host()
            ),
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                "the server's certificate has expired".into()
            }
            other => format!("TLS handshake failed: {other}"),
        };
    }
    let text = describe(error);
    if error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption")
    }) {
        return format!(
            "the server does not accept unencrypted connections: use sslmode=verify-full with sslrootcert ({CA_HINT}) ({text})"
        );
    }
    if text.contains("server does not support TLS") {
        return format!(
            "the server does not offer TLS, which sslmode={} requires",
            info.ssl_mode.as_str()
        );
    }
    text
}

/// The pool's connections are opened the same way as `connect`'s.
struct LibpqConnect {
    info: ConnInfo,
    tls: MakeRustlsConnect,
    /// Run on each new connection before it is handed out.
    session: Option<&'static str>,
}

impl deadpool_postgres::Connect for LibpqConnect {
    fn connect(
        &self,
        _config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        Box::pin(async move {
            match attempt(&self.info, &self.tls).await {
                Ok((client, connection)) => {
                    let driver = tokio::spawn(drive(connection));
                    if let Some(session) = self.session {
                        client.batch_execute(session).await?;
                    }
                    Ok((client, driver))
                }
                Err(failed) => Err(failed.first),
            }
        })
    }
}

/// How long a pool user waits for a free connection before giving up.
pub const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pool for short statements (outcomes, webhooks, the console's pages).
/// The first connection is opened here, so a refusal is explained at
/// start-up.
pub async fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    pool_of_sessions(url, max_size, None).await
}

/// What the worker's sessions set: its statements (claims, outcomes, the
/// sweep) are the same few, run thousands of times with different values,
/// and the plan of each does not depend on them (the partial indexes name
/// their statuses as constants). PostgreSQL would plan the claims and the
/// grouped outcomes again on every run (a custom plan, estimated cheaper):
/// about 1 ms each, a tenth of the database's time in the processing
/// benchmark (docs/benchmarks.md).
pub const WORKER_SESSION: &str = "set plan_cache_mode = force_generic_plan";

/// The worker's pool: as `pool`, each session planning once per statement.
pub async fn worker_pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    pool_of_sessions(url, max_size, Some(WORKER_SESSION)).await
}

async fn pool_of_sessions(
    url: &str,
    max_size: usize,
    session: Option<&'static str>,
) -> Result<Pool, DbError> {
    let info = ConnInfo::parse(url)?;
    drop(open(&info).await?);
    let tls = tls::connector(&info)?;
    let manager = Manager::from_connect(
        info.config.clone(),
        LibpqConnect { info, tls, session },
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // A caller waits at most POOL_WAIT for a connection and gets an error
    // it can report, rather than queueing without end behind a slow page.
    // The connection used last is the one handed out next (LIFO): a few
    // sessions stay warm (their prepared statements, compiled functions and
    // caches) and the others are used only when that many are needed at
    // once; in turn (FIFO), every statement was prepared and every function
    // compiled again on each of them, the slowest pickups
    // (docs/benchmarks.md).
    Pool::builder(manager)
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// The server's message with its detail and hint: `tokio_postgres::Error`'s own
/// Display says only "db error".
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            if let Some(r#where) = db.where_() {
                text.push_str(&format!(
                    "; where: {}",
                    r#where.lines().next().unwrap_or_default()
                ));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}
