//! The messages room: what is sent and to whom (the templates and their
//! rendering, SMS length, the recipient checks) and how a contact appears in
//! a log line (masked). It uses `domain` only.

pub mod mask;
pub mod recipients;
pub mod sms_length;
pub mod templates;
pub mod unsubscribe;
