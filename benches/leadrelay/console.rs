//! The ops console at scale: 1 million leads over a year and 3 million jobs
//! (most sent and delivered, 1% failed, a few bounced), then each console
//! page and `/metrics` timed through the real binary, and the worker's claim
//! timed on another database of the same cluster with the console idle and
//! with two operators reloading its pages.

use super::*;

const LEADS: i64 = 1_000_000;
const ADMIN: &str = "bench-admin-0123456789";

/// Leads every 31.5 s over the last year; three jobs each (email, SMS,
/// lead_tracking). Triggers are off while loading (the enqueue trigger would
/// make the jobs due in ten minutes); the jobs are written as the worker
/// leaves them.
async fn console_database(cluster: &Cluster) -> Client {
    let client = database(cluster, "bench_console").await;
    load_a_year_of_leads(&client).await;
    client
}

/// 1M leads over a year with their 3M jobs, as the worker leaves them, into
/// a migrated database (the migration benchmark loads a database at an
/// earlier version the same way).
pub(crate) async fn load_a_year_of_leads(client: &Client) {
    let t0 = Instant::now();
    // Loading 3M rows into a table with its indexes costs minutes more than
    // building the indexes afterwards: set them aside, load, build them.
    client
        .batch_execute(
            "set maintenance_work_mem = '256MB';
             create table bench_saved_indexes as
               select indexname, indexdef from pg_indexes
                where schemaname = 'public' and tablename in ('landing_leads', 'notification_jobs')
                  and indexname not like '%pkey' and indexname not like '%key';
             do $$ declare r record; begin
               for r in select indexname from bench_saved_indexes loop
                 execute format('drop index public.%I', r.indexname);
               end loop; end $$;",
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "set session_replication_role = replica;
             insert into landing_leads (name, email, phone, source, metadata, created_at)
             select (array['Айгерим','Нурлан','Алия','Ерлан','Данияр','Сауле','Асель','Тимур'])[1 + g % 8] || ' ' || g,
                    'lead' || g || '@mail.ru',
                    '+7 (705) ' || lpad((g / 10000)::text, 3, '0') || '-' || lpad((g / 100 % 100)::text, 2, '0') || '-' || lpad((g % 100)::text, 2, '0'),
                    'proftest_main', '{{\"utm_source\": \"instagram\"}}'::jsonb,
                    now() - g * interval '31.5 seconds'
             from generate_series(1, {LEADS}) g;
             insert into notification_jobs (lead_id, channel, template, recipient, status, due_at, attempts,
                                            sent_at, finished_at, provider_message_id, delivery_status,
                                            delivery_status_at, last_error, cleared_at, created_at, updated_at)
             select l.id, c.channel, case c.channel when 'lead_tracking' then 'proftest' else 'proftest_result' end,
                    case c.channel when 'email' then l.email when 'sms' then regexp_replace(l.phone, '[^0-9]', '', 'g') end,
                    case when f then 'failed' else 'sent' end,
                    l.created_at + interval '10 minutes', case when f then 8 else 1 end,
                    case when not f then l.created_at + interval '10 minutes' end,
                    l.created_at + interval '10 minutes',
                    case when not f then md5(l.id::text || c.channel) end,
                    case when f or c.channel = 'lead_tracking' then null
                         when r < 0.005 then 'bounced' when r < 0.3 then 'opened' else 'delivered' end,
                    case when not f then l.created_at + interval '11 minutes' end,
                    case when f then 'Resend 401: API key is invalid' end,
                    l.created_at + interval '10 minutes', l.created_at, l.created_at + interval '11 minutes'
             from landing_leads l
             cross join (values ('email'), ('sms'), ('lead_tracking')) c(channel)
             cross join lateral (select random() as r) rnd
             cross join lateral (select rnd.r > 0.99 as f) failed;
             set session_replication_role = origin;"
        ))
        .await
        .unwrap();
    client
        .batch_execute(
            "set maintenance_work_mem = '256MB';
             do $$ declare r record; begin
               for r in select indexdef from bench_saved_indexes loop
                 execute r.indexdef;
               end loop; end $$;
             drop table bench_saved_indexes;",
        )
        .await
        .unwrap();
    for sql in ["vacuum analyze", "checkpoint"] {
        client.batch_execute(sql).await.unwrap();
    }
    println!(
        "   {} leads, {} jobs loaded in {:.0} s",
        count(client, "select count(*) from landing_leads").await,
        count(client, "select count(*) from notification_jobs").await,
        t0.elapsed().as_secs_f64()
    );
}

/// Milliseconds per GET of `path`, `n` times (after two untimed warm-ups).
async fn page_times(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
    n: usize,
) -> Vec<f64> {
    let get = || async {
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await.unwrap().len()
    };
    for _ in 0..2 {
        get().await;
    }
    let mut times = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        assert!(get().await > 0);
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times
}

pub(crate) async fn console(cluster: &Cluster, mock_url: &str) -> Vec<Row> {
    let client = console_database(cluster).await;
    // every page drawn afresh: what one view costs
    let serve = spawn_serve(
        &cluster.url("bench_console"),
        mock_url,
        &[("CONSOLE_CHART_TTL", "0")],
    );
    serve.ready().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/ops/login", serve.base))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // a lead from the middle of the year, found the ways an operator would
    let g: i64 = 523_456;
    let lead: uuid::Uuid = client
        .query_one(
            "select id from landing_leads where email = $1",
            &[&format!("lead{g}@mail.ru")],
        )
        .await
        .unwrap()
        .get(0);
    let phone_typed = format!("8 705 {:03} {:02} {:02}", g / 10000, g / 100 % 100, g % 100);
    let pages = [
        ("/ops (front page)", "/ops".to_string()),
        (
            "search by phone",
            format!("/ops/search?q={}", phone_typed.replace(' ', "+")),
        ),
        (
            "search by email",
            format!("/ops/search?q=LEAD{g}%40Mail.ru"),
        ),
        (
            "search by name fragment",
            format!(
                "/ops/search?q=%D0%94%D0%B0%D0%BD%D0%B8%D1%8F%D1%80+{}",
                g / 10
            ),
        ),
        ("a lead's page", format!("/ops/leads/{lead}")),
        ("/metrics", "/metrics".to_string()),
    ];
    let mut rows = Vec::new();
    for (name, path) in &pages {
        let times = page_times(&http, &serve.base, path, &cookie, 40).await;
        let target = if *name == "/metrics" {
            "< 50 ms p95"
        } else {
            "< 300 ms p95"
        };
        rows.push(row(
            &format!("console at 1M leads / 3M jobs: {name}"),
            format!(
                "p50 {:.1} ms, p95 {:.1} ms",
                percentile(&times, 0.5),
                percentile(&times, 0.95)
            ),
            "-".into(),
            "-".into(),
            target,
        ));
    }

    // The worker's claim on another database of this cluster, with the
    // console idle and with two operators reloading it as fast as the server
    // answers: charts drawn for every page, then reused for 10 s as shipped.
    let worker_db = jobs_database(cluster, "bench_console_worker", 100_000).await;
    let shipped = spawn_serve(&cluster.url("bench_console"), mock_url, &[]);
    shipped.ready().await;
    let shipped_cookie = http
        .post(format!("{}/ops/login", shipped.base))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap()
        .headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for (how, base, cookie, pause) in [
        (
            "reload the console without pause, charts drawn for every page",
            serve.base.clone(),
            cookie.clone(),
            Duration::ZERO,
        ),
        (
            "reload the console without pause, charts reused for 10 s (as shipped)",
            shipped.base.clone(),
            shipped_cookie.clone(),
            Duration::ZERO,
        ),
        (
            "each open a console page every second (as shipped)",
            shipped.base.clone(),
            shipped_cookie,
            Duration::from_secs(1),
        ),
    ] {
        // the console idle just before, with both processes running: the
        // machine as it is at that moment
        let idle = {
            let mut t = claim_times(&worker_db, 1000, 10).await;
            t.sort_by(|a, b| a.total_cmp(b));
            t
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut operators = Vec::new();
        for k in 0..2 {
            let (http, base, cookie, stop) = (
                http.clone(),
                base.clone(),
                cookie.clone(),
                Arc::clone(&stop),
            );
            let paths: Vec<String> = pages.iter().map(|(_, p)| p.clone()).collect();
            operators.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let path = &paths[(n + k) % paths.len()];
                    if let Ok(r) = http
                        .get(format!("{base}{path}"))
                        .header("cookie", &cookie)
                        .send()
                        .await
                    {
                        let _ = r.bytes().await;
                    }
                    n += 1;
                    tokio::time::sleep(pause).await;
                }
                n
            }));
        }
        let busy = {
            let mut t = claim_times(&worker_db, 1000, 10).await;
            t.sort_by(|a, b| a.total_cmp(b));
            t
        };
        stop.store(true, Ordering::Relaxed);
        let mut loads = 0;
        for o in operators {
            loads += o.await.unwrap();
        }
        rows.push(row(
            &format!("claim latency while two operators {how}"),
            format!(
                "p50 {:.3} ms, p95 {:.3} ms ({loads} pages meanwhile)",
                percentile(&busy, 0.5),
                percentile(&busy, 0.95)
            ),
            format!(
                "console idle: p50 {:.3} ms, p95 {:.3} ms",
                percentile(&idle, 0.5),
                percentile(&idle, 0.95)
            ),
            format!(
                "{:.2}x p50",
                percentile(&busy, 0.5) / percentile(&idle, 0.5)
            ),
            "-",
        ));
    }
    if std::env::var("BENCH_PROFILE").is_ok() {
        for (sql, params) in console_plans(lead) {
            println!(
                "-- {}",
                sql.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
            );
            let explain = format!("explain (analyze, buffers, costs off) {sql}");
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as _).collect();
            for r in client.query(&explain, &params).await.unwrap() {
                println!("{}", r.get::<_, String>(0));
            }
        }
    }
    drop(serve);
    drop(shipped);
    rows
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// The console's heavier statements with parameters, for BENCH_PROFILE.
fn console_plans(lead: uuid::Uuid) -> Vec<(&'static str, Vec<Param>)> {
    vec![
        (leadrelay::http::metrics::LIVE_JOBS, vec![]),
        (
            leadrelay::store::search::BY_PHONE,
            vec![Box::new("8 705 052 34 56".to_string())],
        ),
        (
            leadrelay::store::search::BY_NAME,
            vec![Box::new("%Данияр 5234%".to_string())],
        ),
        (leadrelay::store::operator::LEAD_AUDIT, vec![Box::new(lead)]),
    ]
}
