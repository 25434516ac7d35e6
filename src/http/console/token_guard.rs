//! Every try of `ADMIN_TOKEN` passes here: the console's sign-in form and the
//! bearer header on every route that takes it (the console's pages, the
//! status API). Wrong tries are limited per client address (10 at once, then
//! one every 6 s) and overall (100 at once, then one every 3 s, whatever the
//! address: guessing from many addresses gains nothing). Once a limit is
//! reached, every try it covers is refused without being checked, the right
//! token included, until the limit allows one more: a right token never uses
//! up a try (a script polling with it is never held up), but it cannot be
//! found by guessing faster than the limits.
//!
//! The rule this room keeps: the real operator can still sign in while an
//! attacker exhausts their address's tries (a shared office address, or a
//! proxy's). The first successful sign-in gives the browser a device cookie
//! (a random id with an HMAC keyed by the admin token, kept a year); a sign-in
//! from a browser that presents a valid one is limited by that device's own
//! bucket, not by its address's nor the overall one. This is OWASP's
//! "device cookie" defence against lock-out by brute force. Scripts using the
//! bearer header have no cookie: under attack from their own address they
//! wait like the attacker.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::Secret;

/// Tries per address (or device) at once, then one more every
/// `LOGIN_REFILL_SECONDS`.
pub const LOGIN_BURST: u32 = 10;
pub const LOGIN_REFILL_SECONDS: u64 = 6;
/// Tries from every address together at once, then one more every
/// `OVERALL_REFILL_SECONDS`.
pub const OVERALL_BURST: u32 = 100;
pub const OVERALL_REFILL_SECONDS: u64 = 3;
/// How long a browser is remembered as the operator's.
pub const DEVICE_DAYS: u64 = 365;

type KeyedLimiter<K> = governor::DefaultKeyedRateLimiter<K>;
type Limiter = governor::DefaultDirectRateLimiter;

/// A browser that signed in before, as its device cookie proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device([u8; 16]);

/// What a try of the token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Try {
    /// The right token.
    Accepted,
    /// A wrong token; it used up one try.
    Wrong,
    /// Not checked: wait this many seconds.
    Wait(u64),
}

/// Until when the tries of a key are refused unchecked: set when a wrong
/// try finds its limit used up, since the limiter itself cannot be asked
/// without taking a try.
#[derive(Debug)]
struct Locks<K>(Mutex<HashMap<K, Instant>>);

impl<K: Hash + Eq + Clone> Locks<K> {
    fn new() -> Locks<K> {
        Locks(Mutex::new(HashMap::new()))
    }

    fn wait(&self, key: &K) -> Option<u64> {
        let mut locks = self.0.lock().ok()?;
        let now = Instant::now();
        match locks.get(key) {
            Some(until) if *until > now => Some((*until - now).as_secs().max(1)),
            Some(_) => {
                locks.remove(key);
                None
            }
            None => None,
        }
    }

    fn lock(&self, key: K, wait: u64) {
        if let Ok(mut locks) = self.0.lock() {
            let now = Instant::now();
            if locks.len() > 10_000 {
                locks.retain(|_, until| *until > now);
            }
            locks.insert(key, now + Duration::from_secs(wait));
        }
    }
}

#[derive(Clone)]
pub struct TokenGuard {
    addresses: Arc<KeyedLimiter<IpAddr>>,
    devices: Arc<KeyedLimiter<Device>>,
    overall: Arc<Limiter>,
    address_locks: Arc<Locks<IpAddr>>,
    device_locks: Arc<Locks<Device>>,
    overall_lock: Arc<Locks<()>>,
    device_key: [u8; 32],
}

fn quota(burst: u32, refill_seconds: u64) -> governor::Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    governor::Quota::with_period(Duration::from_secs(refill_seconds))
        .map(|q| q.allow_burst(burst))
        .unwrap_or_else(|| governor::Quota::per_minute(burst))
}

fn wait_of(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    not_until
        .wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ))
        .as_secs()
        .max(1)
}

impl TokenGuard {
    /// Device cookies are keyed by the admin token: a new token forgets
    /// every browser.
    pub fn new(admin_token: &Secret) -> TokenGuard {
        let mut device_key = [0u8; 32];
        device_key.copy_from_slice(&Sha256::digest(
            format!("leadrelay device cookie\n{}", admin_token.expose()).as_bytes(),
        ));
        TokenGuard {
            addresses: Arc::new(governor::RateLimiter::keyed(quota(
                LOGIN_BURST,
                LOGIN_REFILL_SECONDS,
            ))),
            devices: Arc::new(governor::RateLimiter::keyed(quota(
                LOGIN_BURST,
                LOGIN_REFILL_SECONDS,
            ))),
            overall: Arc::new(governor::RateLimiter::direct(quota(
                OVERALL_BURST,
                OVERALL_REFILL_SECONDS,
            ))),
            address_locks: Arc::new(Locks::new()),
            device_locks: Arc::new(Locks::new()),
            overall_lock: Arc::new(Locks::new()),
            device_key,
        }
    }

    /// A try of `given` for `expected` from `addr` (and the remembered
    /// browser `device`, which then is limited on its own: see the module).
    pub fn try_token(
        &self,
        addr: IpAddr,
        device: Option<Device>,
        given: &str,
        expected: &Secret,
    ) -> Try {
        let locked = match device {
            Some(d) => self.device_locks.wait(&d),
            None => self
                .address_locks
                .wait(&addr)
                .or_else(|| self.overall_lock.wait(&())),
        };
        if let Some(wait) = locked {
            return Try::Wait(wait);
        }
        if given.len() <= 512 && crate::http::secret_matches(given, expected) {
            return Try::Accepted;
        }
        match self.count_wrong(addr, device) {
            Ok(()) => Try::Wrong,
            Err(wait) => Try::Wait(wait),
        }
    }

    /// One wrong try used up; the wait when a limit was already reached.
    fn count_wrong(&self, addr: IpAddr, device: Option<Device>) -> Result<(), u64> {
        // forget the buckets that are full again, so the maps stay small
        if self.addresses.len() > 10_000 {
            self.addresses.retain_recent();
        }
        if self.devices.len() > 10_000 {
            self.devices.retain_recent();
        }
        if let Some(device) = device {
            return self.devices.check_key(&device).map_err(|n| {
                let wait = wait_of(n);
                self.device_locks.lock(device, wait);
                wait
            });
        }
        self.addresses.check_key(&addr).map_err(|n| {
            let wait = wait_of(n);
            self.address_locks.lock(addr, wait);
            wait
        })?;
        self.overall.check().map_err(|n| {
            let wait = wait_of(n);
            self.overall_lock.lock((), wait);
            wait
        })
    }

    fn mac(&self, id: &[u8; 16]) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.device_key)
            .expect("HMAC takes any key length");
        mac.update(id);
        mac.finalize().into_bytes().into()
    }

    /// A new device cookie's value: `<id>.<mac>`, in hex.
    pub fn new_device(&self) -> String {
        let id: [u8; 16] = rand::random();
        format!("{}.{}", hex(&id), hex(&self.mac(&id)))
    }

    /// The device a cookie value proves, if it does.
    pub fn device_of(&self, value: &str) -> Option<Device> {
        let (id, mac) = value.split_once('.')?;
        let id: [u8; 16] = unhex(id)?.try_into().ok()?;
        let mac: [u8; 32] = unhex(mac)?.try_into().ok()?;
        bool::from(self.mac(&id).ct_eq(&mac)).then_some(Device(id))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> TokenGuard {
        TokenGuard::new(&Secret::new("admin-token-0123456789"))
    }

    const RIGHT: &str = "admin-token-0123456789";

    fn secret() -> Secret {
        Secret::new(RIGHT)
    }

    #[test]
    fn wrong_tries_are_limited_per_address_and_then_even_the_right_token_waits() {
        let g = guard();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.try_token(a, None, RIGHT, &secret()), Try::Accepted);
        for _ in 0..LOGIN_BURST {
            assert_eq!(g.try_token(a, None, "guess", &secret()), Try::Wrong);
        }
        let Try::Wait(wait) = g.try_token(a, None, "guess", &secret()) else {
            panic!("the eleventh wrong try waits");
        };
        assert!((1..=LOGIN_REFILL_SECONDS).contains(&wait), "{wait}");
        assert!(
            matches!(g.try_token(a, None, RIGHT, &secret()), Try::Wait(_)),
            "not checked while locked"
        );
        assert_eq!(
            g.try_token(b, None, RIGHT, &secret()),
            Try::Accepted,
            "another address is not held up"
        );
    }

    #[test]
    fn the_right_token_never_uses_up_a_try() {
        let g = guard();
        let script: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..1000 {
            assert_eq!(g.try_token(script, None, RIGHT, &secret()), Try::Accepted);
        }
    }

    #[test]
    fn guesses_from_many_addresses_meet_the_overall_ceiling() {
        let g = guard();
        let mut waited = 0;
        for i in 0..(OVERALL_BURST + 50) {
            let addr = IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]);
            if matches!(g.try_token(addr, None, "guess", &secret()), Try::Wait(_)) {
                waited += 1;
            }
        }
        assert_eq!(
            waited, 50,
            "one try each from 150 addresses: 100 are checked"
        );
        let fresh = IpAddr::from([10, 9, 9, 9]);
        assert!(matches!(
            g.try_token(fresh, None, RIGHT, &secret()),
            Try::Wait(_)
        ));
    }

    #[test]
    fn a_remembered_browser_has_its_own_bucket_while_its_address_is_locked() {
        let g = guard();
        let office: IpAddr = "203.0.113.7".parse().unwrap();
        let cookie = g.new_device();
        let device = g.device_of(&cookie).expect("its own cookie is valid");
        while g.try_token(office, None, "guess", &secret()) != Try::Wrong {}
        while !matches!(g.try_token(office, None, "guess", &secret()), Try::Wait(_)) {}
        for i in 0..(OVERALL_BURST + 10) {
            let _ = g.try_token(
                IpAddr::from([198, 51, 100, (i % 200) as u8]),
                None,
                "x",
                &secret(),
            );
        }
        assert!(matches!(
            g.try_token(office, None, RIGHT, &secret()),
            Try::Wait(_)
        ));
        assert_eq!(
            g.try_token(office, Some(device), RIGHT, &secret()),
            Try::Accepted,
            "the operator gets in"
        );
    }

    #[test]
    fn forged_truncated_and_foreign_device_cookies_prove_nothing() {
        let g = guard();
        let cookie = g.new_device();
        let (id, mac) = cookie.split_once('.').unwrap();
        let flipped = format!(
            "{id}.{}{}",
            if &mac[..1] == "0" { "1" } else { "0" },
            &mac[1..]
        );
        let other = TokenGuard::new(&Secret::new("another-admin-token-0123")).new_device();
        for bad in [
            "",
            ".",
            "zz.zz",
            &flipped,
            &cookie[..cookie.len() - 2],
            &other,
            &format!("{id}.{}", "0".repeat(64)),
            &"a".repeat(10_000),
        ] {
            assert_eq!(g.device_of(bad), None, "{bad:.40}");
        }
    }
}
