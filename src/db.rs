//! Connections to PostgreSQL: one-off clients whose server notices are logged,
//! the worker's pool, and readable text for database errors.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// Opens one connection; NOTICE and WARNING messages from the server (the
/// migrations explain themselves with them) are logged.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, mut connection) = tokio_postgres::connect(url, tls())
        .await
        .map_err(|e| DbError::Connect(describe(&e)))?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::info!(severity = notice.severity(), "{}", notice.message())
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %describe(&e), "database connection closed");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// A pool for short statements (claims, outcomes, webhooks).
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Url(describe(&e)))?;
    let manager = Manager::from_config(
        config,
        tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
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

/// TLS for hosted databases (Supabase requires it); `sslmode` in the URL decides
/// whether it is used, as with libpq. Server certificates are checked against
/// the Mozilla roots.
pub fn tls() -> MakeRustlsConnect {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}
