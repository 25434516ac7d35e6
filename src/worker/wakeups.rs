//! How the parts of the worker wake each other: a notification naming a
//! channel (the promotion's) wakes that channel's lane, any other
//! notification every lane; a reconnect asks the sweeper to sweep now.
//! `Notify::notify_one` keeps one wake-up for a lane that is busy, so a
//! notification that arrives while a lane is claiming is never lost.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::Channel;

#[derive(Debug, Default)]
pub struct Wakeups {
    lanes: [Notify; 3],
    /// Per lane: the scheduled moment the last wake-up announced (many
    /// jobs may be due at once), until the lane's next claim takes it.
    moments: Mutex<[Option<tokio::time::Instant>; 3]>,
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

    /// The sweeper's timer: scheduled jobs are due `at` (now, or in a few
    /// milliseconds). Every lane is woken, knowing when, and that many jobs
    /// may be due at once.
    pub fn wake_for_moment(&self, at: tokio::time::Instant) {
        if let Ok(mut moments) = self.moments.lock() {
            *moments = [Some(at); 3];
        }
        self.wake_all();
    }

    /// The moment announced to the lane of `channel` since its last claim,
    /// if any (and forgets it).
    pub fn take_moment(&self, channel: Channel) -> Option<tokio::time::Instant> {
        self.moments
            .lock()
            .ok()
            .and_then(|mut moments| moments[index(channel)].take())
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
