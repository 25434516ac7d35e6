//! The shared vocabulary every room speaks: channels, secrets, the shape
//! of a stored template, a job's status and a message's delivery state. It uses
//! nothing of the crate; everything may use it.

mod channel;
pub mod defaults;
mod delivery;
mod secret;
mod template;

pub use channel::Channel;
pub use delivery::{DeliveryState, FailureKind, JobAction, JobStatus};
pub(crate) use delivery::{
    arrived_states_sql, failed_statuses_sql, failure_states_sql, waiting_statuses_sql,
};
pub use secret::Secret;
pub use template::TemplateSource;
