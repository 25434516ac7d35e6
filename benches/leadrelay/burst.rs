//! Email burst: 1,000 leads through a Resend that enforces 2 requests per second.

use super::*;

/// 1,000 leads due at once against a mock Resend that allows 2 requests per
/// second and answers 429 past that: emails per second from the promotion to
/// the last email, and the 429s.
pub(crate) async fn email_burst(
    cluster: &Cluster,
    client: &Client,
    mock: &Mock,
    mock_url: &str,
) -> Row {
    let burst: i32 = 1000;
    mock.rate.limit.store(2, Ordering::Relaxed);
    mock.rate.reset();
    let before = mock.emails.load(Ordering::Relaxed);
    let batches_before = mock.batches.load(Ordering::Relaxed);
    let limited_before = mock.rate.refused.load(Ordering::Relaxed);
    let serve = spawn_serve(
        &cluster.url("postgres"),
        mock_url,
        &[("RESEND_MAX_RPS", "2"), ("WORKER_CONCURRENCY", "4")],
    );
    serve.ready().await;
    client
        .execute(
            "insert into landing_leads (name, email, source) select 'Burst ' || g, 'b' || g || '@mail.ru', 'proftest_burst' from generate_series(1, $1::int) g",
            &[&burst],
        )
        .await
        .unwrap();
    client
        .batch_execute("update notification_jobs set due_at = now() where status = 'scheduled' and channel = 'email'")
        .await
        .unwrap();
    let t0 = Instant::now();
    client
        .batch_execute("select promote_due_notification_jobs(100000)")
        .await
        .unwrap();
    until(Duration::from_secs(120), || async {
        mock.emails.load(Ordering::Relaxed) - before >= burst as u64
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let emails = mock.emails.load(Ordering::Relaxed) - before;
    let requests = mock.batches.load(Ordering::Relaxed) - batches_before;
    let limited = mock.rate.refused.load(Ordering::Relaxed) - limited_before;
    drop(serve);
    row(
        &format!("email burst, {burst} leads due at once, Resend enforcing 2 req/s"),
        format!(
            "{:.0} emails/s ({emails} emails in {elapsed:.1} s, {requests} batch requests), {limited} 429s",
            emails as f64 / elapsed
        ),
        "-".into(),
        "-".into(),
        ">= 100 emails/s (batch endpoint), no 429 after the first",
    )
}
