//! Scale: claim latency with 10k and with 1M rows in notification_jobs.

use super::*;

/// Claim latency (ms, p50) with `total` rows in notification_jobs, of which
/// 100 are due and the rest finished.
/// A database with `total` jobs in notification_jobs, 100 of them due and
/// the rest sent, vacuumed and checkpointed, ready for claims.
pub(crate) async fn jobs_database(cluster: &Cluster, name: &str, total: i64) -> Client {
    let client = database(cluster, name).await;
    client
        .execute(
            "insert into notification_jobs (lead_id, channel, template, recipient, status, due_at, sent_at, finished_at)
             select gen_random_uuid(), 'email', 'proftest_result', 'a@b.kz',
                    case when g <= 100 then 'due' else 'sent' end, now() - interval '1 day',
                    case when g > 100 then now() end, case when g > 100 then now() end
             from generate_series(1, $1::bigint) g",
            &[&total],
        )
        .await
        .unwrap();
    // and the checkpoint that many new rows call for, before measuring
    for sql in ["vacuum analyze notification_jobs", "checkpoint"] {
        client.batch_execute(sql).await.unwrap();
    }
    client
}

/// Claims 10 of the due jobs `rounds` times (each put back by an untimed
/// statement); the time of each claim in ms.
pub(crate) async fn claim_times(client: &Client, rounds: usize) -> Vec<f64> {
    let claim = client
        .prepare(leadrelay::store::queue::CLAIM)
        .await
        .unwrap();
    let reset = client
        // through the index of jobs in flight: a scan of the whole table between
        // claims would measure the scan's wake, not the claim
        .prepare("update notification_jobs set status = 'due', locked_by = null, locked_until = null, attempts = 0 where status = 'sending' and locked_by = 'bench'")
        .await
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let rows = client
            .query(
                &claim,
                // nothing ahead of its moment: only jobs due now
                &[
                    &"email",
                    &10i64,
                    &"bench",
                    &60.0f64,
                    &None::<&str>,
                    &"",
                    &0.0f64,
                ],
            )
            .await
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(!rows.is_empty());
        client.execute(&reset, &[]).await.unwrap();
    }
    times
}

/// Claim latency with 10k and with 1M rows in notification_jobs, mostly
/// finished: the claim must not grow with the history.
pub(crate) async fn scale(cluster: &Cluster) -> Row {
    let small_db = jobs_database(cluster, "bench_scale_10k", 10_000).await;
    let scale = jobs_database(cluster, "bench_scale_1m", 1_000_000).await;
    // Alternating rounds, so that both sizes meet the same machine (other
    // work, cache, autovacuum) rather than one after the other; the ratio is
    // the median of the rounds' ratios, so one disturbed round does not
    // decide it.
    let (mut small, mut large, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut s = claim_times(&small_db, 60).await;
        let mut l = claim_times(&scale, 60).await;
        s.sort_by(|a, b| a.total_cmp(b));
        l.sort_by(|a, b| a.total_cmp(b));
        ratios.push(percentile(&l, 0.5) / percentile(&s, 0.5));
        small.extend(s);
        large.extend(l);
    }
    for times in [&mut small, &mut large, &mut ratios] {
        times.sort_by(|a, b| a.total_cmp(b));
    }
    let (small, large) = (percentile(&small, 0.5), percentile(&large, 0.5));
    let ratio = percentile(&ratios, 0.5);
    if std::env::var("BENCH_PROFILE").is_ok() {
        // The plan of the claim at 1M rows, run inside a transaction that is
        // rolled back, so it claims nothing.
        let sql = format!(
            "explain (analyze, buffers, costs off) {}",
            leadrelay::store::queue::CLAIM
        );
        scale.batch_execute("begin").await.unwrap();
        println!("-- the claim at 1M rows");
        for row in scale
            .query(
                &sql,
                // nothing ahead of its moment: only jobs due now
                &[
                    &"email",
                    &10i64,
                    &"bench",
                    &60.0f64,
                    &None::<&str>,
                    &"",
                    &0.0f64,
                ],
            )
            .await
            .unwrap()
        {
            println!("{}", row.get::<_, String>(0));
        }
        scale.batch_execute("rollback").await.unwrap();
    }
    row(
        "claim latency, 10 of 100 due jobs",
        format!("1M rows: p50 {large:.3} ms"),
        format!("10k rows: p50 {small:.3} ms"),
        format!(
            "{ratio:.2}x (median of 10 alternating rounds; {:.2}x to {:.2}x)",
            ratios[0],
            ratios[ratios.len() - 1]
        ),
        "<= 1.5x",
    )
}
