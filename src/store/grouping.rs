//! Many requests, one statement: what the webhook recorder and the outcome
//! recorder share.

use tokio::sync::mpsc;

/// `first` and whatever else is already waiting, up to `max`, for one
/// statement; no waiting for more, so a lone item goes at once.
pub fn with_waiting<T>(first: T, rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut items = vec![first];
    while items.len() < max {
        match rx.try_recv() {
            Ok(item) => items.push(item),
            Err(_) => break,
        }
    }
    items
}
