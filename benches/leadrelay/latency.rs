//! Pickup latency (promotion commit to provider request, one job at a time)
//! and timing accuracy (jobs due at one future moment).

use super::*;

/// The graphile-worker reference: its JSON answer for these arguments.
pub(crate) type Reference<'a> = &'a dyn Fn(&[&str]) -> Result<serde_json::Value, String>;

/// 1,000 emails made due one by one; from each promotion to its request.
pub(crate) async fn pickup_latency(client: &Client, mock: &Mock, reference: Reference<'_>) -> Row {
    client
        .batch_execute("update notification_rules set enabled = (channel = 'email')")
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, source) select 'Latency ' || g, 'lat' || g || '@mail.ru', 'proftest_latency' from generate_series(1, 1000) g",
            &[],
        )
        .await
        .unwrap();
    // Statistics, as a table in service has them (alone, BENCH_ONLY=latency
    // would otherwise time plans made on the empty tables at the start)
    client
        .batch_execute("analyze notification_jobs, landing_leads")
        .await
        .unwrap();
    let ids: Vec<i64> = client
        .query("select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id where l.source = 'proftest_latency' order by j.id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let make_due = client
        .prepare(
            "update notification_jobs set due_at = now() - interval '1 millisecond' where id = $1",
        )
        .await
        .unwrap();
    let promote = client
        .prepare("select promote_due_notification_jobs()")
        .await
        .unwrap();
    let mut pickup = Vec::new();
    for id in &ids {
        client.execute(&make_due, &[id]).await.unwrap();
        // from the promotion call: it includes the promotion's own round
        // trip, so the figure is an upper bound of commit → request
        let t0 = Instant::now();
        client.query_one(&promote, &[]).await.unwrap();
        let got = until(Duration::from_secs(10), || {
            let seen = mock.seen.lock().unwrap().get(id).map(|s| s.0);
            async move { seen.is_some() }
        })
        .await;
        if got {
            let at = mock.seen.lock().unwrap()[id].0;
            pickup.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    pickup.sort_by(|a, b| a.total_cmp(b));
    let g_latency = reference(&["latency", "1000"]);
    row_against(
        "pickup latency, 1,000 jobs one by one",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&pickup, 0.5),
            percentile(&pickup, 0.99),
            pickup.last().copied().unwrap_or(f64::NAN)
        ),
        against(
            &g_latency,
            |v| {
                format!(
                    "graphile-worker add → start: p50 {:.2} ms, p99 {:.2} ms",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            },
            percentile(&pickup, 0.99),
            "p99_ms",
            " (p99)",
        ),
        "p99 <= 0.6x graphile-worker's",
    )
}

/// 200 emails due at the same moment 4 s ahead: how late each request is.
pub(crate) async fn timing_accuracy(client: &Client, mock: &Mock, reference: Reference<'_>) -> Row {
    let due_at = chrono::Utc::now() + chrono::Duration::seconds(4);
    client
        .execute(
            "insert into landing_leads (name, email, source, created_at)
             select 'Timing ' || g, 'at' || g || '@mail.ru', 'proftest_timing', $1::timestamptz - interval '1 day' from generate_series(1, 200) g",
            &[&due_at],
        )
        .await
        .unwrap();
    let timing_ids: Vec<i64> = client
        .query("select j.id from notification_jobs j join landing_leads l on l.id = j.lead_id where l.source = 'proftest_timing'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected = timing_ids.len();
    until(Duration::from_secs(30), || {
        let n = timing_ids
            .iter()
            .filter(|id| mock.seen.lock().unwrap().contains_key(id))
            .count();
        async move { n == expected }
    })
    .await;
    let due_system: SystemTime = due_at.into();
    let mut late: Vec<f64> = timing_ids
        .iter()
        .filter_map(|id| mock.seen.lock().unwrap().get(id).map(|s| s.1))
        .map(|at| match at.duration_since(due_system) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -(e.duration().as_secs_f64() * 1000.0),
        })
        .collect();
    late.sort_by(|a, b| a.total_cmp(b));
    let g_timing = reference(&["timing", "200", "4000"]);
    row_against(
        "timing accuracy, 200 jobs due at once",
        format!(
            "late p50 {:.1} ms, p99 {:.1} ms",
            percentile(&late, 0.5),
            percentile(&late, 0.99)
        ),
        against(
            &g_timing,
            |v| {
                format!(
                    "graphile-worker run_at: late p50 {:.0} ms, p99 {:.0} ms",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            },
            percentile(&late, 0.99),
            "p99_ms",
            " (p99)",
        ),
        "p99 <= 0.1x graphile-worker's",
    )
}
