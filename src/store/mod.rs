//! The database room: connections as libpq makes them (TLS, `sslmode`), the
//! queue's statements, the migrations and their history, and the private
//! clusters of dev mode and the tests. It uses `domain` and nothing else of
//! the crate; every room above may use it.

pub mod cluster;
mod connect;
pub mod conninfo;
pub mod grouping;
pub mod migrate;
pub mod queue;
pub mod storable;
pub mod templates;
pub mod tls;

pub use connect::{Connection, DbError, Failed, connect, describe, explain, open, pool};
pub use conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
