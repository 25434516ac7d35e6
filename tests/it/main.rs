//! Integration tests: a real PostgreSQL cluster, started once for this process.

mod app;
mod harness;
mod migrate_cmd;
mod operator;
mod pgtap;
mod sql_core;
mod webhooks;
mod worker;
