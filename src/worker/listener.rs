//! One long-lived connection that LISTENs on channel `notification_jobs` and
//! wakes the worker. NOTIFY is only a wake-up: the worker also sweeps on start,
//! after every reconnect and periodically, so a notification lost while the
//! connection was down delays a message by one sweep and loses nothing.
//!
//! The connection is checked with a query every `ping_interval`, so a silently
//! dead TCP connection is noticed; it reconnects with exponential backoff
//! (100 ms doubling to 30 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::domain::Secret;
use crate::store::{ConnInfo, describe};
use crate::worker::wakeups::Wakeups;

pub const CHANNEL: &str = "notification_jobs";

#[derive(Debug, Default)]
pub struct ListenerState {
    connected: AtomicBool,
    reconnects: AtomicU64,
}

impl ListenerState {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How many times the connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

pub async fn run(
    url: Secret,
    wakeups: Arc<Wakeups>,
    state: Arc<ListenerState>,
    ping_interval: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !cancel.is_cancelled() {
        match listen_once(&url, &wakeups, &state, ping_interval, &cancel, &mut first).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(message) => {
                tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64, "listener connection lost");
            }
        }
        state.connected.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn listen_once(
    url: &Secret,
    wakeups: &Arc<Wakeups>,
    state: &ListenerState,
    ping_interval: Duration,
    cancel: &CancellationToken,
    first: &mut bool,
) -> Result<(), String> {
    let info = ConnInfo::parse(url.expose()).map_err(|e| e.to_string())?;
    let (client, mut connection) = crate::store::open(&info).await.map_err(|e| e.to_string())?;
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<String>();
    let notify_target = Arc::clone(wakeups);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let reason = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => notify_target.notified(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break describe(&e),
                None => break "connection closed".to_string(),
            }
        };
        let _ = lost_tx.send(reason);
    });
    let result = async {
        client
            .batch_execute(&format!("listen {CHANNEL}"))
            .await
            .map_err(|e| describe(&e))?;
        state.connected.store(true, Ordering::Relaxed);
        if *first {
            *first = false;
            tracing::info!("listening for due jobs");
        } else {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("leadrelay_listener_reconnects_total").increment(1);
            tracing::info!("listener reconnected");
        }
        // Anything that became due while we were not listening is found now.
        wakeups.sweep_now();
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                reason = &mut lost_rx => return Err(reason.unwrap_or_else(|_| "connection closed".into())),
                _ = ping.tick() => {
                    match tokio::time::timeout(Duration::from_secs(10), client.simple_query("select 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(describe(&e)),
                        Err(_) => return Err("no answer to a ping within 10 s".into()),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
