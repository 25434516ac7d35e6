//! Integration tests: a real PostgreSQL cluster, started once for this process.

mod app;
mod batches;
mod connections;
mod console;
mod dev_mode;
mod doctor;
mod gate;
mod harness;
mod landing_writes;
mod migrate_cmd;
mod operator;
mod ops_page;
mod pgtap;
mod policies;
mod schemas;
mod sms_lookup;
mod sql_checks;
mod sql_core;
mod templates;
mod tls;
mod webhooks;
mod worker;
