//! The ingestion room: provider webhooks verified (Svix signatures), parsed
//! into delivery events, made storable and stored in groups; every Mobizon
//! state (report, confirmation, poll, look-up) in `mobizon`. It uses
//! `store`, `providers` and `domain`; `http` and `worker` use it.

pub mod delivery;
pub mod event_batches;
pub mod mobizon;
pub mod svix;

/// The statements of this room, for the prepare test (`crate::statements`).
pub fn statements() -> Vec<String> {
    vec![
        delivery::RECORD_EVENT.to_string(),
        event_batches::STORE_IN_INBOX.to_string(),
        event_batches::APPLY_INBOX.to_string(),
    ]
}
