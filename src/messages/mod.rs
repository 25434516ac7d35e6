//! The messages room: what is sent and to whom (the texts, the recipient
//! checks) and how a contact appears in a log line (masked). It uses nothing
//! of the crate.

pub mod mask;
pub mod recipients;
pub mod templates;
