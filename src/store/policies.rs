//! The delivery policies' gate (migration `20261201090000_delivery_policies`):
//! right after a claim, before any request, the jobs of the claim that were
//! never cleared pass the de-duplication and the per-recipient cap, or are
//! cancelled with the reason. The database decides, under an advisory lock
//! per recipient, so two workers claiming two leads of one phone at the same
//! moment send one SMS.

use super::queue::{Channel, QueueError};

/// Clears or cancels the jobs claimed under lease token $1; returns the
/// cancelled ones with the policy and the reason.
pub const CLEAR_CLAIMED: &str =
    "select job_id, policy, reason from public.leadrelay_clear_claimed($1)";

/// A job a policy cancelled before its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub job_id: i64,
    /// `duplicate` or `recipient_cap`.
    pub policy: String,
    pub reason: String,
}

/// Whether a claim of `channel` goes through the gate: only messages to a
/// person do; the dashboard sync has no recipient.
pub fn applies_to(channel: Channel) -> bool {
    matches!(channel, Channel::Email | Channel::Sms)
}

/// Runs the gate for the claim under `lock`, in a transaction of its own
/// (the function's advisory locks end with it).
pub async fn clear_claimed(
    client: &deadpool_postgres::Client,
    lock: &str,
) -> Result<Vec<Cancelled>, QueueError> {
    let statement = client.prepare_cached(CLEAR_CLAIMED).await?;
    let rows = client.query(&statement, &[&lock]).await?;
    Ok(rows
        .iter()
        .map(|row| Cancelled {
            job_id: row.get(0),
            policy: row.get(1),
            reason: row.get(2),
        })
        .collect())
}
