//! leadrelay: durable, tracked follow-up email and SMS for landing-page leads,
//! with the database as the source of truth.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod delivery;
pub mod dev;
pub mod doctor;
pub mod event_batches;
pub mod http;
pub mod lead_tracking;
pub mod listener;
pub mod mask;
pub mod metrics;
pub mod migrate;
pub mod ops_cli;
pub mod pacer;
pub mod providers;
pub mod queue;
pub mod recipients;
pub mod retry;
pub mod sent_batches;
pub mod serve;
pub mod standin;
pub mod svix;
pub mod templates;
pub mod wakeups;
pub mod worker;
