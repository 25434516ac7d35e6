//! An SMS is never sent twice: after an attempt with no answer the worker
//! looks the message up at Mobizon (`message/list`) before sending again.
//! Mobizon's stand-in keeps a book of what it took and lists it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use leadrelay::worker::sms_lookup::UnknownOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::app::{
    MobizonLike, NO_DELAY, Providers, ResendLike, ServeProcess, config, count, eventually,
    ops_page, start, unfinished,
};
use crate::harness::{fresh_db, insert_as_landing};

const PHONE: &str = "+7 (705) 123-45-67";
const DIGITS: &str = "77051234567";

async fn lead_with_phone(client: &tokio_postgres::Client, phone: &str) -> uuid::Uuid {
    insert_as_landing(
        client,
        Some("Айгерим"),
        Some("aigerim@example.com"),
        Some(phone),
        Some("proftest_main"),
        None,
    )
    .await
}

/// Status, provider ids, recovery time and history of a lead's SMS job.
struct SmsJob {
    status: String,
    message_id: Option<String>,
    campaign_id: Option<String>,
    recovered: bool,
    unknown_since: bool,
    errors: String,
}

async fn sms_job(client: &tokio_postgres::Client, lead: uuid::Uuid) -> SmsJob {
    let row = client
        .query_one(
            "select status, provider_message_id, provider_campaign_id, recovered_at is not null,
                    outcome_unknown_since is not null, errors::text
               from notification_jobs where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    SmsJob {
        status: row.get(0),
        message_id: row.get(1),
        campaign_id: row.get(2),
        recovered: row.get(3),
        unknown_since: row.get(4),
        errors: row.get(5),
    }
}

async fn sms_ended(client: &tokio_postgres::Client, lead: uuid::Uuid, status: &str) {
    eventually(
        Duration::from_secs(40),
        &format!("the SMS job {status}"),
        || async { sms_job(client, lead).await.status == status },
    )
    .await;
}

/// Mobizon's stand-in with its book, answering the first send only after
/// `hang_for` (the message taken at once).
async fn mobizon_answering_the_first_send_late(hang_for: Duration) -> Providers {
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    providers
        .mount_mobizon(
            MobizonLike::new(Duration::ZERO)
                .into_book(&providers.book)
                .hanging(|n| n == 1, hang_for),
        )
        .await;
    providers
}

#[tokio::test]
async fn an_sms_taken_but_answered_after_the_timeout_is_found_and_not_sent_again() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // PROVIDER_TIMEOUT is 2 s in the tests' worker
    let providers = mobizon_answering_the_first_send_late(Duration::from_secs(6)).await;
    let app = start(config(&db.url, &providers)).await;
    let lead = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, lead, "sent").await;

    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1, "one SMS reached Mobizon: {taken:?}");
    assert_eq!(taken[0].to, DIGITS);
    assert_eq!(providers.sms().await.len(), 1);
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert_eq!(
        job.campaign_id.as_deref(),
        Some(taken[0].campaign_id.as_str())
    );
    assert!(job.recovered, "recovered_at says a look-up found it");
    assert!(!job.unknown_since, "the doubt is cleared");
    assert!(job.errors.contains("mobizon: timed out"), "{}", job.errors);
    let lookups = providers.mobizon_requests("list").await;
    assert_eq!(lookups.len(), 1);
    let criteria: HashMap<String, String> = url::form_urlencoded::parse(&lookups[0].body)
        .into_owned()
        .collect();
    assert_eq!(criteria["criteria[to]"], DIGITS);
    assert_eq!(criteria["criteria[text]"], taken[0].text);
    // the lead's own flag, as for any sent SMS; the item's state as its delivery state
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where sms_sent and sms_error is null"
        )
        .await,
        1
    );
    eventually(Duration::from_secs(10), "the found item's state", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and delivery_status = 'accepted'",
        )
        .await
            == 1
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", app.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("leadrelay_sms_lookups_total{outcome=\"found\"}")),
        "{metrics}"
    );
    // the ops page lists it, phone masked
    let page = ops_page(&app).await;
    let section = &page[page.find("SMS found by a look-up").expect("the section")..];
    assert!(section.contains(&taken[0].id), "{section}");
    assert!(!section.contains(DIGITS), "the phone is masked: {section}");
    // and `leadrelay status` says so
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["status", &lead.to_string()])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("found at Mobizon by a look-up, not sent again"),
        "{text}"
    );
    assert!(text.contains("template v1"), "{text}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_gateways_504_after_mobizon_took_the_sms_is_found_not_sent_again() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    let book = providers.book.clone();
    let mobizon = MobizonLike::new(Duration::ZERO).into_book(&book);
    let sends = AtomicUsize::new(0);
    Mock::given(method("POST"))
        .and(path("/service/message/sendsmsmessage"))
        .respond_with(move |request: &Request| {
            // the first send is taken, and the gateway answers 504
            let answer = wiremock::Respond::respond(&mobizon, request);
            if sends.fetch_add(1, Ordering::SeqCst) == 0 {
                ResponseTemplate::new(504).set_body_string("<html>504 Gateway Time-out</html>")
            } else {
                answer
            }
        })
        .mount(&providers.mobizon)
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, lead, "sent").await;
    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert!(job.recovered);
    assert!(job.errors.contains("HTTP 504"), "{}", job.errors);
    app.shutdown().await;
}

/// A TCP front for Mobizon's stand-in on `listener`: connections pass
/// through, except that the answer on the first one is cut in the middle of
/// its body (after `200` and the headers) and the connection closed.
async fn cutting_front(listener: TcpListener, upstream: SocketAddr) {
    let connections = Arc::new(AtomicUsize::new(0));
    while let Ok((client, _)) = listener.accept().await {
        let cut = connections.fetch_add(1, Ordering::SeqCst) == 0;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            if !cut {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                return;
            }
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = server_read.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&chunk[..n]);
                if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n")
                    && answer.len() > end + 4 + 10
                {
                    let body = answer.len() - end - 4;
                    answer.truncate(end + 4 + body / 2);
                    break;
                }
            }
            assert!(answer.starts_with(b"HTTP/1.1 200"));
            let _ = client_write.write_all(&answer).await;
            let _ = client_write.shutdown().await;
        });
    }
}

#[tokio::test]
async fn a_body_cut_short_after_200_is_an_unknown_outcome_and_the_sms_is_found() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::with_delays(Duration::ZERO, Duration::ZERO).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    tokio::spawn(cutting_front(listener, *providers.mobizon.address()));
    let mut config = config(&db.url, &providers);
    config.mobizon.api_url = format!("http://{front}");
    let app = start(config).await;
    let lead = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, lead, "sent").await;
    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert!(job.recovered);
    assert!(job.errors.contains("cut short"), "{}", job.errors);
    app.shutdown().await;
}

#[tokio::test]
async fn a_look_up_that_fails_twice_is_tried_again_and_the_sms_is_never_sent_blind() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = mobizon_answering_the_first_send_late(Duration::from_secs(6)).await;
    Mock::given(method("POST"))
        .and(path("/service/message/list"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&providers.mobizon)
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, lead, "sent").await;
    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(providers.sms().await.len(), 1, "no send while in doubt");
    assert_eq!(providers.mobizon_requests("list").await.len(), 3);
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert!(job.recovered);
    assert_eq!(
        job.errors.matches("looking it up failed").count(),
        2,
        "{}",
        job.errors
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_sms_refused_before_any_byte_goes_again_without_a_look_up() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::with_delays(Duration::ZERO, Duration::ZERO).await;
    // Nothing listens on this port until the first attempt was refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config(&db.url, &providers);
    config.mobizon.api_url = format!("http://127.0.0.1:{port}");
    let app = start(config).await;
    let lead = lead_with_phone(&client, PHONE).await;
    eventually(Duration::from_secs(20), "a refused attempt", || async {
        sms_job(&client, lead)
            .await
            .errors
            .contains("could not connect")
    })
    .await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let upstream = *providers.mobizon.address();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    sms_ended(&client, lead, "sent").await;
    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1);
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert!(!job.recovered);
    assert!(
        providers.mobizon_requests("list").await.is_empty(),
        "a refused connection took nothing: no look-up"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_worker_killed_while_mobizon_holds_the_request_finds_the_sms_after_restart() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = mobizon_answering_the_first_send_late(Duration::from_secs(60)).await;
    let env = [("JOB_LEASE", "3s"), ("PROVIDER_TIMEOUT", "1500ms")];
    let mut first = ServeProcess::start(&db.url, &providers, &env);
    let lead = lead_with_phone(&client, PHONE).await;
    eventually(Duration::from_secs(20), "Mobizon took the SMS", || async {
        !providers.book.taken().is_empty()
    })
    .await;
    first.kill_9();
    assert_eq!(sms_job(&client, lead).await.status, "sending");

    let _second = ServeProcess::start(&db.url, &providers, &env);
    sms_ended(&client, lead, "sent").await;
    let taken = providers.book.taken();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let job = sms_job(&client, lead).await;
    assert_eq!(job.message_id.as_deref(), Some(taken[0].id.as_str()));
    assert!(job.recovered);
    assert!(job.errors.contains("lease expired"), "{}", job.errors);
}

#[tokio::test]
async fn sms_unknown_outcome_fail_leaves_it_to_a_person_and_resend_sends_again() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();

    let providers = mobizon_answering_the_first_send_late(Duration::from_secs(6)).await;
    let mut fail = config(&db.url, &providers);
    fail.worker.sms_unknown_outcome = UnknownOutcome::Fail;
    let app = start(fail).await;
    let lead = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, lead, "failed").await;
    let job = sms_job(&client, lead).await;
    assert!(
        job.errors.contains("SMS_UNKNOWN_OUTCOME=fail"),
        "{}",
        job.errors
    );
    assert!(!job.unknown_since, "leadrelay retry then sends it again");
    assert_eq!(providers.book.taken().len(), 1);
    assert!(providers.mobizon_requests("list").await.is_empty());
    app.shutdown().await;

    let providers = mobizon_answering_the_first_send_late(Duration::from_secs(6)).await;
    let mut resend = config(&db.url, &providers);
    resend.worker.sms_unknown_outcome = UnknownOutcome::Resend;
    let app = start(resend).await;
    let lead = lead_with_phone(&client, "+7 701 000 00 01").await;
    sms_ended(&client, lead, "sent").await;
    assert_eq!(
        providers.book.taken().len(),
        2,
        "today's behaviour: sent again"
    );
    assert!(providers.mobizon_requests("list").await.is_empty());
    app.shutdown().await;
}

/// Many leads, the worker killed again and again, and Mobizon taking a few
/// percent of the messages only to answer after the timeout: no phone gets
/// two SMS, no job is lost.
#[tokio::test]
async fn under_kills_and_late_answers_no_phone_gets_two_sms_and_no_job_is_lost() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    providers
        .mount_mobizon(
            MobizonLike::new(Duration::from_millis(250))
                .into_book(&providers.book)
                .hanging(|n| n % 25 == 0, Duration::from_secs(3)),
        )
        .await;
    let env = [
        ("JOB_LEASE", "3s"),
        ("PROVIDER_TIMEOUT", "1s"),
        ("WORKER_CONCURRENCY", "8"),
        ("MOBIZON_MAX_RPS", "500"),
        ("LEADRELAY_LOG", "warn"),
    ];
    const LEADS: usize = 200;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "insert into landing_leads (name, email, phone, source)
             select 'Lead ' || g, 'lead' || g || '@example.com', '+7 705 ' || lpad(g::text, 7, '0'), 'proftest_main'
               from generate_series(1, {LEADS}) g"
        ))
        .await
        .unwrap();
    let mut kills = 0;
    for _ in 0..6 {
        let mut serve = ServeProcess::start(&db.url, &providers, &env);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        serve.kill_9();
        kills += 1;
    }
    let _last = ServeProcess::start(&db.url, &providers, &env);
    eventually(Duration::from_secs(120), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;

    let taken = providers.book.taken();
    let mut per_phone: HashMap<&str, Vec<&str>> = HashMap::new();
    for sms in &taken {
        per_phone.entry(&sms.to).or_default().push(&sms.id);
    }
    let twice: Vec<_> = per_phone.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "phones with two SMS: {twice:?}");
    assert_eq!(per_phone.len(), LEADS, "every phone got its SMS");
    let recorded: Vec<(String, String)> = client
        .query(
            "select l.phone, j.provider_message_id from notification_jobs j join landing_leads l on l.id = j.lead_id
              where j.channel = 'sms' and j.status = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(recorded.len(), LEADS, "no job lost");
    for (phone, message_id) in &recorded {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(
            per_phone[digits.as_str()],
            vec![message_id.as_str()],
            "the job holds its phone's one SMS"
        );
    }
    let lookups = providers.mobizon_requests("list").await.len();
    let recovered = count(
        &client,
        "select count(*) from notification_jobs where recovered_at is not null",
    )
    .await;
    eprintln!(
        "{LEADS} leads, {kills} kills, {} SMS sent, {lookups} look-ups, {recovered} recovered by a look-up, in {:.1} s",
        taken.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(lookups >= 1 && recovered >= 1, "the faults were met");
}

#[tokio::test]
async fn a_look_up_never_adopts_an_sms_made_before_the_attempt_began_such_as_a_deleted_leads() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    // A lead of two days ago got its SMS, then was deleted (forgotten): the
    // message is still in Mobizon's list, same phone, same text.
    let app = start(config(&db.url, &providers)).await;
    let gone = lead_with_phone(&client, PHONE).await;
    sms_ended(&client, gone, "sent").await;
    app.shutdown().await;
    let old_id = sms_job(&client, gone).await.message_id.unwrap();
    client
        .execute("delete from landing_leads where id = $1", &[&gone])
        .await
        .unwrap();
    providers.book.edit(|taken| {
        for sms in taken.iter_mut() {
            sms.taken_at = chrono::Utc::now() - chrono::Duration::days(2);
        }
    });

    // Today's lead of the same person: its first attempt got no answer.
    let lead = lead_with_phone(&client, PHONE).await;
    client
        .execute(
            "update notification_jobs set status = 'due', attempts = 1, outcome_unknown_since = now() - interval '1 minute',
                    errors = '[{\"error\": \"timed out\"}]'
              where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    let app = start(config(&db.url, &providers)).await;
    sms_ended(&client, lead, "sent").await;
    app.shutdown().await;
    let job = sms_job(&client, lead).await;
    assert_ne!(
        job.message_id.as_deref(),
        Some(old_id.as_str()),
        "not the old SMS"
    );
    assert!(!job.recovered, "sent, not found");
    assert_eq!(providers.book.taken().len(), 2);
    assert!(
        !providers.mobizon_requests("list").await.is_empty(),
        "it was looked up first"
    );
}

#[tokio::test]
async fn a_look_up_takes_nothing_while_another_job_is_sending_to_the_same_phone() {
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::{FoundRecord, Queue};
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let first = lead_with_phone(&client, PHONE).await;
    let second = lead_with_phone(&client, PHONE).await;
    let pool = leadrelay::store::pool(&db.url, 4).await.unwrap();
    let queue = Queue::new(pool, "lookup-test".into());
    let claimed = queue
        .claim(Channel::Sms, 10, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "both SMS in flight");
    let looking = claimed.iter().find(|j| j.lead_id == second).unwrap();
    // the first job's request made message 501; its answer is not recorded
    // yet: the second job's look-up must not take it
    let found = queue
        .record_found(
            looking.id,
            &looking.lock,
            &[("501".into(), Some("c501".into()))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(found, FoundRecord::Busy);
    assert_eq!(sms_job(&client, second).await.status, "sending");
    assert_eq!(sms_job(&client, first).await.message_id, None);
}
