//! leadrelay: durable, tracked follow-up email and SMS for landing-page leads,
//! with the database as the source of truth.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod dev;
pub mod migrate;
