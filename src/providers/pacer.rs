//! Paces requests to a provider: at most `rate` request starts per second,
//! adjusted by what the provider's answers say.
//!
//! Resend's limit is per team and shared by every key, and it has changed (2
//! per second announced, 5 documented): we start from the configured rate and
//! follow the `ratelimit-limit` / `ratelimit-remaining` / `ratelimit-reset`
//! headers of every answer, and a 429's `retry-after` pauses every request.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    interval: Duration,
    /// The part of the limit this process takes (1: all of it). A command
    /// that runs beside `serve` takes a part, so the team's limit is left
    /// to the worker too.
    share: f64,
    next_slot: Instant,
    /// No request starts before this (a 429's `retry-after`, or an empty
    /// window until its reset).
    paused_until: Instant,
}

/// What an answer said about the rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimitHeaders {
    /// Requests allowed per window (Resend's window is one second).
    pub limit: Option<f64>,
    pub remaining: Option<u64>,
    /// Seconds until the window resets.
    pub reset: Option<f64>,
    /// Seconds to wait, from a 429's `retry-after`.
    pub retry_after: Option<f64>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> RateLimitHeaders {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        RateLimitHeaders {
            limit: number("ratelimit-limit"),
            remaining: number("ratelimit-remaining").map(|v| v as u64),
            reset: number("ratelimit-reset"),
            retry_after: number("retry-after"),
        }
    }
}

/// Waits above this are not believed: a hostile or broken header must not
/// stall the worker for days.
const LONGEST_PAUSE: Duration = Duration::from_secs(3600);

impl Pacer {
    pub fn new(rate_per_second: f64) -> Pacer {
        Pacer {
            state: Mutex::new(State {
                interval: interval_for(rate_per_second),
                share: 1.0,
                next_slot: Instant::now(),
                paused_until: Instant::now(),
            }),
        }
    }

    /// Reserves the next free slot and returns when it starts; the caller waits
    /// until then before sending.
    pub fn reserve(&self) -> Instant {
        let mut state = self.lock();
        let now = Instant::now();
        let slot = state.next_slot.max(now);
        state.next_slot = slot + state.interval;
        slot
    }

    pub async fn wait_turn(&self) {
        loop {
            let slot = self.reserve();
            // tokio's timer ticks in milliseconds: at high rates a sleep for a
            // slot a few microseconds away would cost a whole tick per request.
            if slot > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(slot).await;
            }
            // A slot reserved before an answer said the window is used up
            // (or a 429 came) is no longer good: take a new one after the
            // pause, behind the requests that wait for it.
            if self.lock().paused_until <= slot {
                return;
            }
        }
    }

    /// Takes `share` (0 < share ≤ 1) of the configured rate and of every
    /// limit an answer announces from now on.
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() && share > 0.0 {
            share.min(1.0)
        } else {
            1.0
        };
        let mut state = self.lock();
        let rate = 1.0 / state.interval.as_secs_f64().max(f64::MIN_POSITIVE) / state.share;
        state.share = share;
        if !state.interval.is_zero() {
            state.interval = interval_for(rate * share);
        }
    }

    pub fn interval(&self) -> Duration {
        self.lock().interval
    }

    /// Learns from an answer's headers.
    pub fn observe(&self, headers: &RateLimitHeaders) {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(limit) = headers.limit
            && limit >= 0.1
        {
            state.interval = interval_for(limit * state.share);
        }
        let pause = match (headers.retry_after, headers.remaining, headers.reset) {
            (Some(after), _, _) => Some(after),
            (None, Some(0), Some(reset)) => Some(reset),
            _ => None,
        };
        if let Some(seconds) = pause {
            let until = now + Duration::from_secs_f64(seconds).min(LONGEST_PAUSE);
            state.next_slot = state.next_slot.max(until);
            state.paused_until = state.paused_until.max(until);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn interval_for(rate_per_second: f64) -> Duration {
    if rate_per_second.is_finite() && rate_per_second > 0.0 {
        Duration::from_secs_f64(1.0 / rate_per_second)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_configured_rate() {
        let pacer = Pacer::new(2.0);
        let start = Instant::now();
        let slots: Vec<Duration> = (0..4).map(|_| pacer.reserve() - start).collect();
        assert_eq!(
            slots,
            [0, 500, 1000, 1500].map(Duration::from_millis).to_vec()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_providers_limit_header_replaces_the_configured_rate() {
        let pacer = Pacer::new(2.0);
        pacer.observe(&RateLimitHeaders {
            limit: Some(5.0),
            ..Default::default()
        });
        assert_eq!(pacer.interval(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_takes_its_part_of_the_configured_rate_and_of_every_announced_limit() {
        let pacer = Pacer::new(2.0);
        pacer.set_share(0.5);
        assert_eq!(pacer.interval(), Duration::from_secs(1));
        pacer.observe(&RateLimitHeaders {
            limit: Some(5.0),
            ..Default::default()
        });
        assert_eq!(pacer.interval(), Duration::from_millis(400));
        for nonsense in [0.0, -1.0, f64::NAN] {
            let pacer = Pacer::new(2.0);
            pacer.set_share(nonsense);
            assert_eq!(pacer.interval(), Duration::from_millis(500));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_and_an_empty_window_pause_every_request() {
        let pacer = Pacer::new(100.0);
        let start = Instant::now();
        pacer.observe(&RateLimitHeaders {
            retry_after: Some(3.0),
            ..Default::default()
        });
        assert!(pacer.reserve() - start >= Duration::from_secs(3));
        let pacer = Pacer::new(100.0);
        pacer.observe(&RateLimitHeaders {
            remaining: Some(0),
            reset: Some(1.0),
            ..Default::default()
        });
        assert!(pacer.reserve() - start >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_reserved_before_a_pause_waits_for_its_end() {
        let pacer = std::sync::Arc::new(Pacer::new(2.0));
        let start = Instant::now();
        pacer.wait_turn().await;
        // The next turn is reserved for 0.5 s; then an answer says the window
        // is used up until 1.5 s.
        let waiter = {
            let pacer = std::sync::Arc::clone(&pacer);
            tokio::spawn(async move {
                pacer.wait_turn().await;
                Instant::now() - start
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        pacer.observe(&RateLimitHeaders {
            remaining: Some(0),
            reset: Some(1.4),
            ..Default::default()
        });
        let started_after = waiter.await.unwrap();
        assert!(
            started_after >= Duration::from_millis(1500),
            "{started_after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_headers_are_bounded() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "99999999999".parse().unwrap());
        headers.insert("ratelimit-limit", "-3".parse().unwrap());
        headers.insert("ratelimit-reset", "NaN".parse().unwrap());
        let parsed = RateLimitHeaders::from_headers(&headers);
        assert_eq!(parsed.limit, None);
        assert_eq!(parsed.reset, None);
        let pacer = Pacer::new(2.0);
        let start = Instant::now();
        pacer.observe(&parsed);
        assert!(pacer.reserve() - start <= LONGEST_PAUSE);
        let mut garbage = reqwest::header::HeaderMap::new();
        garbage.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(RateLimitHeaders::from_headers(&garbage).retry_after, None);
    }
}
