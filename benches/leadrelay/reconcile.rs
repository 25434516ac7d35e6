//! `leadrelay reconcile` over a window of 1,000 leads from before leadrelay
//! (no jobs), against stand-ins that hold what "the system before" sent:
//! Resend's list of sent emails (3,000 of them, 100 a page, Resend's
//! documented limit of 5 requests a second enforced with its headers) and
//! Mobizon's `message/list` (500 SMS). The real binary, as an operator runs
//! it (`--yes`, the default share of each provider's limit): leads per
//! second, end to end, with the requests each provider got.

use leadrelay::cli::dev::books::{MobizonBook, RateWindow, ResendBook, SentEmail, TakenSms};

use super::*;

const LEADS: i64 = 1000;
/// Resend's documented rate limit (its API reference; 2 was announced).
const RESEND_LIMIT: u64 = 5;

#[derive(Default)]
struct Books {
    resend: ResendBook,
    mobizon: MobizonBook,
    window: RateWindow,
    email_reads: AtomicU64,
    sms_reads: AtomicU64,
}

async fn email_list(
    State(books): State<Arc<Books>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    books.email_reads.fetch_add(1, Ordering::Relaxed);
    let (headers, (status, body)) = match books.window.admit() {
        Ok(headers) => (headers, books.resend.list(uri.query().unwrap_or(""))),
        Err((headers, body)) => (headers, (429, body)),
    };
    answer(status, headers, body)
}

async fn sms_list(
    State(books): State<Arc<Books>>,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    books.sms_reads.fetch_add(1, Ordering::Relaxed);
    axum::Json(books.mobizon.list(&body))
}

/// The window's leads (one every 36 s over 10 hours, triggers off: no jobs)
/// and what the system before sent 10 minutes after each: an email to 60 %,
/// an SMS to 50 %, and 2,000 emails to other people over the same hours.
async fn load(client: &Client, books: &Books, start: chrono::DateTime<chrono::Utc>) {
    client
        .batch_execute("set session_replication_role = replica")
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, phone, source, created_at)
             select 'Lead ' || g, 'lead' || g || '@mail.ru',
                    '+7 705 ' || lpad(g::text, 7, '0'), 'proftest_main',
                    $1::timestamptz + g * interval '36 seconds'
             from generate_series(1, $2::int) g",
            &[&start, &(LEADS as i32)],
        )
        .await
        .unwrap();
    client
        .batch_execute("set session_replication_role = origin")
        .await
        .unwrap();
    let at = |g: i64| start + chrono::TimeDelta::seconds(36 * g + 600);
    for g in 1..=LEADS {
        if g % 10 < 6 {
            books.resend.hold(SentEmail {
                id: format!("old-{g}"),
                to: vec![format!("lead{g}@mail.ru")],
                subject: Some("Тест пройден".into()),
                created_at: at(g),
                last_event: "delivered".into(),
            });
        }
        if g % 2 == 0 {
            books.mobizon.edit(|taken| {
                taken.push(TakenSms {
                    id: format!("{}", 50_000 + g),
                    campaign_id: format!("c{g}"),
                    to: format!("7705{g:07}"),
                    text: "Ваш результат готов".into(),
                    from: None,
                    taken_at: at(g),
                    status: "DELIVRD".into(),
                })
            });
        }
    }
    for i in 0..2000 {
        books.resend.hold(SentEmail {
            id: format!("other-{i}"),
            to: vec![format!("someone{i}@mail.ru")],
            subject: None,
            created_at: start + chrono::TimeDelta::seconds(18 * i),
            last_event: "delivered".into(),
        });
    }
}

pub(crate) async fn reconcile_rate(cluster: &Cluster) -> Vec<Row> {
    let client = database(cluster, "bench_reconcile").await;
    let books = Arc::new(Books::default());
    books.window.limit.store(RESEND_LIMIT, Ordering::Relaxed);
    let start = chrono::Utc::now() - chrono::TimeDelta::days(2);
    load(&client, &books, start).await;
    let app = Router::new()
        .route("/emails", axum::routing::get(email_list))
        .route("/service/message/list", post(sms_list))
        .with_state(Arc::clone(&books));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let since = start.to_rfc3339();
    let until = (start + chrono::TimeDelta::hours(11)).to_rfc3339();
    let t0 = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["reconcile", "--since", &since, "--until", &until, "--yes"])
        .env("DATABASE_URL", cluster.url("bench_reconcile"))
        .env("RESEND_API_KEY", "re_bench")
        .env("RESEND_API_URL", &url)
        .env("MOBIZON_API_KEY", "kz_bench")
        .env("MOBIZON_API_URL", &url)
        .env("LEADRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run leadrelay reconcile");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tally = stdout
        .lines()
        .find(|l| l.contains(" found, "))
        .unwrap_or("no tally")
        .to_string();
    if !out.status.success() {
        println!(
            "reconcile failed: {}{}",
            stdout.lines().last().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let recorded: i64 = client
        .query_one(
            "select count(*) from notification_jobs where reconciled_at is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let email_reads = books.email_reads.load(Ordering::Relaxed);
    let sms_reads = books.sms_reads.load(Ordering::Relaxed);
    vec![row(
        "reconcile, 1,000 leads (Resend 5 req/s, 100 a page; default share 0.5)",
        format!(
            "{:.1} leads/s ({:.0} s; {recorded} found and recorded; {tally})",
            LEADS as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        ),
        format!(
            "{email_reads} Resend list pages ({} refused with 429), {sms_reads} Mobizon look-ups",
            books.window.refused.load(Ordering::Relaxed)
        ),
        format!(
            "{:.2} s per Mobizon look-up",
            took.as_secs_f64() / sms_reads.max(1) as f64
        ),
        "figure only",
    )]
}
