//! How the parts of the worker wake each other: a notification or a promotion
//! wakes every channel's lane; a reconnect asks the sweeper to sweep now.
//! `Notify::notify_one` keeps one wake-up for a lane that is busy, so a
//! notification that arrives while a lane is claiming is never lost.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::domain::Channel;

#[derive(Debug, Default)]
pub struct Wakeups {
    lanes: [Notify; 3],
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
