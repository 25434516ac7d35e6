//! How the parts of the worker wake each other: a notification naming a
//! channel (the promotion's) wakes that channel's lane, any other
//! notification every lane; a reconnect asks the sweeper to sweep now.
//! `Notify::notify_one` keeps one wake-up for a lane that is busy, so a
//! notification that arrives while a lane is claiming is never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::domain::Channel;

#[derive(Debug, Default)]
pub struct Wakeups {
    lanes: [Notify; 3],
    /// Per lane: the last wake-up was a scheduled moment (many jobs may be
    /// due at once), until the lane's next claim takes it.
    moments: [AtomicBool; 3],
    sweep: Notify,
}

impl Wakeups {
    pub fn new() -> Arc<Wakeups> {
        Arc::new(Wakeups::default())
    }

    pub fn wake_all(&self) {
        for lane in &self.lanes {
            lane.notify_one();
        }
    }

    /// The sweeper's timer: a scheduled moment came. Every lane is woken,
    /// knowing that many jobs may be due at once.
    pub fn wake_for_moment(&self) {
        for moment in &self.moments {
            moment.store(true, Ordering::Release);
        }
        self.wake_all();
    }

    /// Whether the lane of `channel` was woken by a moment since its last
    /// claim (and forgets it).
    pub fn take_moment(&self, channel: Channel) -> bool {
        self.moments[index(channel)].swap(false, Ordering::AcqRel)
    }

    /// A notification on the jobs' channel: its payload names the channel
    /// whose jobs became due (the promotion), or is a job id (the operator's
    /// actions, a dashboard resync), which could be any lane's.
    pub fn notified(&self, payload: &str) {
        match Channel::parse(payload) {
            Some(channel) => self.lane(channel).notify_one(),
            None => self.wake_all(),
        }
    }

    pub fn lane(&self, channel: Channel) -> &Notify {
        &self.lanes[index(channel)]
    }

    pub fn sweep_now(&self) {
        self.sweep.notify_one();
    }

    pub fn sweep(&self) -> &Notify {
        &self.sweep
    }
}

fn index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Sms => 1,
        Channel::LeadTracking => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_promotion_wakes_the_lane_it_names_and_a_job_id_every_lane() {
        let wakeups = Wakeups::new();
        wakeups.notified("sms");
        let woken = |channel| {
            let notified = wakeups.lane(channel).notified();
            async move {
                tokio::time::timeout(std::time::Duration::from_millis(20), notified)
                    .await
                    .is_ok()
            }
        };
        assert!(woken(Channel::Sms).await);
        assert!(!woken(Channel::Email).await && !woken(Channel::LeadTracking).await);
        wakeups.notified("12345");
        for channel in Channel::ALL {
            assert!(woken(channel).await, "{channel:?}");
        }
    }
}
