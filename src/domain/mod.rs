//! The shared vocabulary every room speaks: channels, secrets and the shape
//! of a stored template. It uses
//! nothing of the crate; everything may use it.

mod channel;
mod secret;
mod template;

pub use channel::Channel;
pub use secret::Secret;
pub use template::TemplateSource;
