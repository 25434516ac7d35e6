//! The shared vocabulary every room speaks: channels and secrets. It uses
//! nothing of the crate; everything may use it.

mod channel;
mod secret;

pub use channel::Channel;
pub use secret::Secret;
