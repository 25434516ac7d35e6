//! The HTTP server's connections: HTTP/1 only, at most a bounded number at
//! once, and none held by a client that sends nothing.
//!
//! The rule this room keeps: the HTTP server never takes the descriptors the
//! worker and the database pool need. The cap is set below the process's
//! file limit; at the cap a new connection takes the place of the oldest one
//! that has no request in flight (an idle keep-alive, or a client that never
//! sent a byte), so a flood of idle connections cannot keep a health check
//! or a provider's webhook out. Every connection must send its request head
//! within `HEADER_READ_TIMEOUT` of being accepted or of its last response.
//!
//! Why HTTP/1 only: the service sits behind a reverse proxy that speaks
//! HTTP/1.1 to it (nginx and Caddy do by default), so HTTP/2 buys nothing
//! here, and hyper's automatic version detection read bytes with no timeout
//! at all, which let a silent connection stay open for ever.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Descriptors kept for everything but HTTP connections: the database
/// pools, the provider clients' connections, the LISTEN connection, logs.
const RESERVED_DESCRIPTORS: u64 = 96;

/// The most HTTP connections at once, for a process whose soft file limit is
/// `file_limit` and whose database pools hold `pooled` connections.
pub fn max_connections(file_limit: u64, pooled: u64) -> usize {
    let spare = file_limit.saturating_sub(RESERVED_DESCRIPTORS + pooled);
    spare.clamp(8, 10_000) as usize
}

/// This process's soft limit on open files (`ulimit -n`).
pub fn file_limit() -> u64 {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft,
        // unknown: the common default
        Err(_) => 1024,
    }
}

/// One connection: how many of its requests are in flight, and how to close
/// it to make room.
#[derive(Debug, Default)]
pub struct Connection {
    in_flight: AtomicUsize,
    evict: CancellationToken,
}

impl Connection {
    /// Held while a request of this connection is being answered.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Resolves when the connection must close to make room for another.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }
}

pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What `Slots::admit` did to make room, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// There was room.
    Free,
    /// The oldest connection without a request in flight was closed.
    Evicted,
    /// Every connection is answering a request: this one is closed at once
    /// (the client tries again; a proxy in front answers 502).
    Refused,
}

/// The live connections, oldest first.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    live: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            live: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for a new connection, or `Refused` when every live one is
    /// answering a request.
    pub fn admit(&self) -> (Admitted, Option<(u64, Arc<Connection>)>) {
        let Ok(mut live) = self.live.lock() else {
            return (Admitted::Refused, None);
        };
        let mut admitted = Admitted::Free;
        if live.len() >= self.max {
            let idle = live
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id);
            match idle.and_then(|id| live.remove(&id)) {
                Some(oldest) => {
                    oldest.evict.cancel();
                    admitted = Admitted::Evicted;
                }
                None => return (Admitted::Refused, None),
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::default());
        live.insert(id, Arc::clone(&connection));
        (admitted, Some((id, connection)))
    }

    /// The connection ended (or was evicted).
    pub fn release(&self, id: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_worker_its_descriptors() {
        assert_eq!(max_connections(256, 20), 140);
        assert_eq!(max_connections(65_536, 20), 10_000);
        assert_eq!(max_connections(64, 20), 8, "a tiny limit still serves");
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_gives_way_and_busy_ones_never_do() {
        let slots = Slots::new(2);
        let (_, a) = slots.admit();
        let (a_id, a) = a.unwrap();
        let (_, b) = slots.admit();
        let (_, b) = b.unwrap();
        let busy = a.request();
        // a is answering a request: b, idle, gives way
        let (admitted, c) = slots.admit();
        assert_eq!(admitted, Admitted::Evicted);
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled());
        let (_, c) = c.unwrap();
        let _busy_too = c.request();
        // both live connections are busy: refused, nobody evicted
        assert_eq!(slots.admit().0, Admitted::Refused);
        assert_eq!(slots.len(), 2);
        drop(busy);
        assert_eq!(slots.admit().0, Admitted::Evicted);
        assert!(a.evict.is_cancelled());
        slots.release(a_id);
        assert_eq!(slots.len(), 2);
    }
}
