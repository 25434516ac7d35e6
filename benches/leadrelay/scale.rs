//! Scale: claim latency with 10k and with 1M rows in notification_jobs, and
//! with 1M and the dead index entries of jobs gone since the last vacuum.

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

/// Claims `limit` of the due jobs `rounds` times (each put back by an
/// untimed statement); the time of each claim in ms.
pub(crate) async fn claim_times(client: &Client, rounds: usize, limit: i64) -> Vec<f64> {
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
                    &limit,
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

/// p50 claim times of `small` and `large` in ten alternating rounds, so
/// that both meet the same machine (other work, cache, autovacuum) rather
/// than one after the other, and the median of the rounds' ratios (one
/// disturbed round does not decide it) with its range.
async fn alternating(small: &Client, large: &Client, limit: i64) -> (f64, f64, Vec<f64>) {
    let (mut s_all, mut l_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut s = claim_times(small, 60, limit).await;
        let mut l = claim_times(large, 60, limit).await;
        s.sort_by(|a, b| a.total_cmp(b));
        l.sort_by(|a, b| a.total_cmp(b));
        ratios.push(percentile(&l, 0.5) / percentile(&s, 0.5));
        s_all.extend(s);
        l_all.extend(l);
    }
    for times in [&mut s_all, &mut l_all, &mut ratios] {
        times.sort_by(|a, b| a.total_cmp(b));
    }
    (percentile(&s_all, 0.5), percentile(&l_all, 0.5), ratios)
}

/// 50,000 jobs more in `client`'s database, due within the last hour, that
/// then left `scheduled` (sent) with no vacuum since (autovacuum off on the
/// table, as it is until 20 % of a table has changed): each left a dead
/// entry at its moment in the index of scheduled jobs.
async fn gone_since_vacuum(client: &Client) {
    for sql in [
        "insert into notification_jobs (lead_id, channel, template, recipient, status, due_at)
         select gen_random_uuid(), 'email', 'proftest_result', 'a@b.kz', 'scheduled',
                now() - interval '1 hour' + g * interval '50 milliseconds'
         from generate_series(1, 50000) g",
        "vacuum analyze notification_jobs",
        "alter table notification_jobs set (autovacuum_enabled = off)",
        "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now()
         where status = 'scheduled'",
        "checkpoint",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
}

/// Claim latency with 10k and with 1M rows in notification_jobs, mostly
/// finished: the claim must not grow with the history. Then the same 1M
/// with 50,000 jobs gone since the last vacuum: nor with what autovacuum
/// has yet to clean.
pub(crate) async fn scale(cluster: &Cluster) -> Vec<Row> {
    let small_db = jobs_database(cluster, "bench_scale_10k", 10_000).await;
    let scale = jobs_database(cluster, "bench_scale_1m", 1_000_000).await;
    let (small, large, ratios) = alternating(&small_db, &scale, 10).await;
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
    let clean = row(
        "claim latency, 10 of 100 due jobs",
        format!("1M rows: p50 {large:.3} ms"),
        format!("10k rows: p50 {small:.3} ms"),
        format!(
            "{ratio:.2}x (median of 10 alternating rounds; {:.2}x to {:.2}x)",
            ratios[0],
            ratios[ratios.len() - 1]
        ),
        "<= 1.5x",
    );
    gone_since_vacuum(&scale).await;
    // a claim that can take more than is due (a lane's claim in a trickle)
    // also looks at the scheduled jobs whose moment has passed
    let (small, gone, ratios) = alternating(&small_db, &scale, 200).await;
    let gone_row = row(
        "claim latency, all 100 due jobs, 1M rows and 50,000 gone since the last vacuum",
        format!("p50 {gone:.3} ms"),
        format!("10k rows: p50 {small:.3} ms"),
        format!(
            "{:.2}x (median of 10 alternating rounds; {:.2}x to {:.2}x)",
            percentile(&ratios, 0.5),
            ratios[0],
            ratios[ratios.len() - 1]
        ),
        "<= 1.5x",
    );
    vec![clean, gone_row]
}
