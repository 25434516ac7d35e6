//! Integration tests: a real PostgreSQL cluster, started once for this process.

mod batches;
mod calendar;
mod connections;
mod console;
mod dev_mode;
mod doctor;
mod forget;
mod gate;
mod landing_writes;
mod migrate_cmd;
mod operator;
mod ops_page;
mod pgtap;
mod policies;
mod reconcile;
mod schemas;
mod sms_lookup;
mod sql_checks;
mod sql_core;
mod support;
mod suppressions;
mod templates;
mod tls;
mod unsubscribe;
mod webhooks;
mod worker;

use support::{app, harness};
