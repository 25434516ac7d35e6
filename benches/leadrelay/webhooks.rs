//! Webhook ingestion: signed Resend events posted by concurrent clients.

use super::*;

/// Signed Resend events (four per sent email, shuffled) posted by 32
/// concurrent clients; each answered 2xx once stored. Under this load the
/// events are applied after their answers (src/ingest/event_batches.rs), so
/// the time until the last of them is applied is printed too.
pub(crate) async fn webhook_ingestion(client: &Client, base: &str) -> Row {
    let message_ids: Vec<String> = client
        .query("select provider_message_id from notification_jobs where channel = 'email' and status = 'sent' limit 5000", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let key = SigningKey::parse(SECRET).unwrap();
    let mut events = Vec::new();
    for id in &message_ids {
        for kind in [
            "email.sent",
            "email.delivered",
            "email.opened",
            "email.clicked",
        ] {
            events.push((id.clone(), kind));
        }
    }
    events.shuffle(&mut rand::rng());
    let load = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .unwrap();
    let now = chrono::Utc::now().timestamp().to_string();
    let signed: Vec<reqwest::RequestBuilder> = events
        .iter()
        .enumerate()
        .map(|(i, (email_id, kind))| {
            let body = serde_json::to_vec(&serde_json::json!({"type": kind, "created_at": chrono::Utc::now().to_rfc3339(), "data": {"email_id": email_id}})).unwrap();
            let svix_id = format!("msg_bench_{i}");
            let signature = key.signature(&svix_id, &now, &body);
            load.post(format!("{}/webhooks/resend", base))
                .header("svix-id", svix_id)
                .header("svix-timestamp", now.clone())
                .header("svix-signature", signature)
                .body(body)
        })
        .collect();
    let total = signed.len();
    let started = Instant::now();
    let (took, ok) = drive(32, signed).await;
    let applied_in = all_applied(client, started).await;
    let noop: Vec<_> = (0..total)
        .map(|_| load.get(format!("{}/healthz", base)))
        .collect();
    let (noop_took, noop_ok) = drive(32, noop).await;
    let ingest = ok as f64 / took.as_secs_f64();
    let noop_rate = noop_ok as f64 / noop_took.as_secs_f64();
    row(
        &format!("webhook ingestion, {total} signed events"),
        format!(
            "{ingest:.0} events/s stored ({ok} ok); all applied {:.0} events/s ({:.2} s)",
            ok as f64 / applied_in.as_secs_f64(),
            applied_in.as_secs_f64()
        ),
        format!("no-op route: {noop_rate:.0} requests/s"),
        format!("{:.2}x", ingest / noop_rate),
        ">= 0.2x the no-op route",
    )
}

/// How long after `started` the inbox was empty (every stored event
/// applied), looked at every 10 ms.
async fn all_applied(client: &Client, started: Instant) -> Duration {
    loop {
        let waiting: i64 = client
            .query_one("select count(*) from notification_event_inbox", &[])
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn drive(
    concurrency: usize,
    requests: Vec<reqwest::RequestBuilder>,
) -> (Duration, usize) {
    let queue = Arc::new(Mutex::new(requests));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = Arc::clone(&queue);
        let ok = Arc::clone(&ok);
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(request) = next else { break };
                if let Ok(response) = request.send().await
                    && response.status().is_success()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    (started.elapsed(), ok.load(Ordering::Relaxed) as usize)
}
