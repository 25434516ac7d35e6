//! When a failed attempt is tried again.
//!
//! Temporary failures (5xx, timeouts, connection errors, provider "try later"
//! codes) are retried with exponential backoff and full jitter between 50 % and
//! 100 % of the step, capped. With the defaults (`RETRY_BASE_DELAY` 30 s,
//! `RETRY_MAX_DELAY` 1 h, 8 attempts per job) the waits after attempts 1–7 are
//! at most 30 s, 1 min, 2 min, 4 min, 8 min, 16 min and 32 min: a job gives up
//! about an hour after its first attempt, long enough to ride out a provider
//! incident, short enough that a lead is not contacted a day late.
//! A `Retry-After` from the provider wins over the schedule.

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: i32) -> Duration {
        let step = self.step(attempt);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        step.mul_f64(jitter)
    }

    /// The upper bound of the wait after `attempt`, without jitter.
    pub fn step(&self, attempt: i32) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(30),
        max: Duration::from_secs(3600),
    };

    #[test]
    fn the_documented_schedule_holds() {
        let steps: Vec<u64> = (1..=8).map(|a| DEFAULT.step(a).as_secs()).collect();
        assert_eq!(steps, [30, 60, 120, 240, 480, 960, 1920, 3600]);
        assert_eq!(DEFAULT.step(1000), Duration::from_secs(3600));
        assert_eq!(DEFAULT.step(0), Duration::from_secs(30));
        assert_eq!(DEFAULT.step(-5), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_step() {
        for attempt in 1..10 {
            for _ in 0..50 {
                let d = DEFAULT.delay(attempt);
                assert!(d <= DEFAULT.step(attempt));
                assert!(d >= DEFAULT.step(attempt) / 2);
            }
        }
    }
}
