//! Bursts of due emails through Resend's batch endpoint, against a real
//! PostgreSQL and a mock Resend that enforces its idempotency rules.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::app::{
    Providers, ResendLike, ServeProcess, config, count, eventually, start, unfinished,
};
use crate::harness::{TestDb, fresh_db, insert_as_landing};

/// Only email rules, due at once.
pub const EMAIL_ONLY: &str = "update public.notification_rules set delay = interval '0';
update public.notification_rules set enabled = false where channel <> 'email'";

/// `n` leads in one statement: their email jobs are due together.
pub async fn burst(client: &tokio_postgres::Client, n: i32) {
    client
        .execute(
            "insert into public.landing_leads (name, email, phone, source)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 123 45 67', 'proftest_main'
             from generate_series(1, $1) g",
            &[&n],
        )
        .await
        .unwrap();
}

/// A fresh database with only email rules and `n` leads due together.
async fn email_burst(n: i32) -> (TestDb, tokio_postgres::Client) {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(EMAIL_ONLY).await.unwrap();
    burst(&client, n).await;
    (db, client)
}

/// Runs the service with batches of up to `batch_size` until no job is
/// left to do, then stops it.
async fn send_everything(
    db: &TestDb,
    client: &tokio_postgres::Client,
    providers: &Providers,
    batch_size: usize,
) {
    let mut cfg = config(&db.url, providers);
    cfg.resend.batch_size = batch_size;
    let app = start(cfg).await;
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(client).await == 0
    })
    .await;
    app.shutdown().await;
}

/// The batch endpoint answers `answer`, whatever it is sent.
async fn batch_endpoint_answers(providers: &Providers, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/emails/batch"))
        .respond_with(answer)
        .mount(&providers.resend)
        .await;
}

pub fn key_of(r: &Request) -> String {
    r.headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn batch_requests(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.url.path() == "/emails/batch")
        .collect()
}

pub fn recipients_of(r: &Request) -> Vec<String> {
    let emails: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    emails
        .iter()
        .map(|e| e["to"][0].as_str().unwrap().to_string())
        .collect()
}

/// The requests were all the same batch request: one key, one body (the
/// mock would have answered 409 otherwise, but say it plainly). Returns the key.
fn the_one_batch(requests: &[Request]) -> String {
    assert!(requests.iter().all(|r| r.url.path() == "/emails/batch"));
    let bodies: HashSet<&Vec<u8>> = requests.iter().map(|r| &r.body).collect();
    assert_eq!(bodies.len(), 1, "sent again with another body");
    let keys: HashSet<String> = requests.iter().map(key_of).collect();
    assert_eq!(keys.len(), 1, "sent again under another key");
    keys.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_burst_goes_out_in_batches_no_larger_than_the_batch_size_and_a_lone_lead_alone() {
    let (db, client) = email_burst(25).await;
    let providers = Providers::healthy().await;
    let mut cfg = config(&db.url, &providers);
    cfg.resend.batch_size = 10;
    let app = start(cfg).await;
    eventually(Duration::from_secs(20), "every email sent", || async {
        unfinished(&client).await == 0
    })
    .await;

    let requests = providers.emails().await;
    let batches = batch_requests(&requests);
    assert_eq!(batches.len(), 3, "25 emails in batches of at most 10");
    assert_eq!(requests.len(), 3, "and no single requests");
    let mut seen = HashSet::new();
    for r in &batches {
        let to = recipients_of(r);
        assert!(to.len() <= 10);
        for address in to {
            assert!(seen.insert(address.clone()), "{address} twice");
        }
    }
    assert_eq!(seen.len(), 25);

    // Each job records its own email id, in the order of its batch, and
    // names the request that carried it.
    let rows = client
        .query(
            "select id, batch_key, provider_message_id, status from notification_jobs order by id",
            &[],
        )
        .await
        .unwrap();
    let mut position: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let key: String = row.get(1);
        let message_id: String = row.get(2);
        let status: String = row.get(3);
        let i = position.entry(key.clone()).or_default();
        assert_eq!(status, "sent");
        assert_eq!(message_id, format!("email-{key}-{i}"));
        *i += 1;
    }
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where email_sent and email_error is null"
        )
        .await,
        25
    );

    // One lead on its own takes the single endpoint, under its job's key.
    let lead = insert_as_landing(
        &client,
        Some("Айгерим"),
        Some("aigerim@gmail.com"),
        None,
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(10), "the lone email sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let requests = providers.emails().await;
    let last = requests.last().unwrap();
    assert_eq!(last.url.path(), "/emails");
    let (key, batch_key): (String, Option<String>) = {
        let row = client
            .query_one(
                "select idempotency_key, batch_key from notification_jobs where lead_id = $1",
                &[&lead],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(key_of(last), key);
    assert_eq!(
        key,
        format!("leadrelay-{lead}-proftest_result"),
        "unique across databases"
    );
    assert_eq!(batch_key, None);
    app.shutdown().await;
}

/// Answers like Resend but loses the answer to the first `n` batch requests
/// after processing them (a 502 from a proxy in front): the emails of those
/// requests went out.
struct LosesFirstAnswers {
    inner: ResendLike,
    lost: AtomicUsize,
    n: usize,
}

impl Respond for LosesFirstAnswers {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let answer = self.inner.respond(request);
        if self.lost.fetch_add(1, Ordering::SeqCst) < self.n {
            return ResponseTemplate::new(502).set_body_string("<html>bad gateway</html>");
        }
        answer
    }
}

#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_sent_again_with_the_same_key_and_body() {
    let (db, client) = email_burst(12).await;
    let providers = Providers::empty().await;
    providers
        .mount_resend(LosesFirstAnswers {
            inner: ResendLike::new(Duration::ZERO),
            lost: AtomicUsize::new(0),
            n: 2,
        })
        .await;
    send_everything(&db, &client, &providers, 100).await;

    let requests = providers.emails().await;
    assert_eq!(requests.len(), 3, "two lost answers, then the answer");
    let key = the_one_batch(&requests);
    let rows = client
        .query(
            "select provider_message_id, attempts, jsonb_array_length(errors) from notification_jobs order by id",
            &[],
        )
        .await
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let message_id: String = row.get(0);
        assert_eq!(message_id, format!("email-{key}-{i}"));
        assert_eq!(row.get::<_, i32>(1), 3, "three attempts, together");
        assert_eq!(row.get::<_, i32>(2), 2, "two errors on record");
    }
}

#[tokio::test]
async fn a_batch_resend_refuses_is_dissolved_and_each_email_goes_alone() {
    let (db, client) = email_burst(5).await;
    let providers = Providers::empty().await;
    batch_endpoint_answers(
        &providers,
        ResponseTemplate::new(422).set_body_json(serde_json::json!({
            "statusCode": 422, "name": "validation_error",
            "message": "The `to` field of email 3 is invalid."})),
    )
    .await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    send_everything(&db, &client, &providers, 100).await;

    let requests = providers.emails().await;
    assert_eq!(batch_requests(&requests).len(), 1);
    let singles: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == "/emails")
        .collect();
    assert_eq!(singles.len(), 5, "then each email on its own");
    let rows = client
        .query(
            "select idempotency_key, status, batch_key, provider_message_id, errors->0->>'error' from notification_jobs order by id",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let key: String = row.get(0);
        assert_eq!(row.get::<_, String>(1), "sent");
        assert_eq!(
            row.get::<_, Option<String>>(2),
            None,
            "no longer in a batch"
        );
        assert_eq!(row.get::<_, String>(3), format!("email-{key}"));
        let error: String = row.get(4);
        assert!(
            error.contains("batch refused") && error.contains("email 3"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn members_of_a_batch_that_are_due_wait_for_the_rest_and_it_goes_whole() {
    let (db, client) = email_burst(4).await;
    // A batch from an earlier attempt whose members came back apart: three
    // are due, one waits for its retry time (as after a manual edit).
    client
        .batch_execute(
            "update notification_jobs
                set batch_key = 'leadrelay-batch-earlier', attempts = 1,
                    errors = '[{\"attempt\": 1, \"error\": \"lease expired: outcome unknown\"}]',
                    status = case when id = (select max(id) from notification_jobs) then 'scheduled' else 'due' end,
                    due_at = case when id = (select max(id) from notification_jobs)
                                  then now() + interval '2 seconds' else now() end",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    send_everything(&db, &client, &providers, 100).await;

    let requests = providers.emails().await;
    assert_eq!(requests.len(), 1, "one request, with every member");
    assert_eq!(key_of(&requests[0]), "leadrelay-batch-earlier");
    assert_eq!(recipients_of(&requests[0]).len(), 4);
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where errors::text like '%waiting for the rest%'"
        )
        .await,
        3,
        "the due members waited, without using an attempt"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where attempts = 2"
        )
        .await,
        4
    );
}

/// Kills the real binary while a batch request is in flight and starts it
/// again: the batch is rescued when its lease ends and sent again with the
/// same key and body, so Resend (the mock enforces its rules) sends nothing
/// twice and every job records the first answer's email id.
#[tokio::test]
async fn a_worker_killed_during_a_batch_request_sends_no_email_twice() {
    let (db, client) = email_burst(30).await;
    let providers = Providers::with_delays(Duration::from_millis(800), Duration::ZERO).await;
    let env = [
        ("JOB_LEASE", "2s"),
        ("PROVIDER_TIMEOUT", "1s"),
        ("RESEND_BATCH_SIZE", "100"),
    ];
    let mut first = ServeProcess::start(&db.url, &providers, &env);
    eventually(
        Duration::from_secs(20),
        "a batch request in flight",
        || async { !providers.emails().await.is_empty() },
    )
    .await;
    first.kill_9();
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sending'"
        )
        .await,
        30,
        "the kill left the batch in flight"
    );

    let _second = ServeProcess::start(&db.url, &providers, &env);
    eventually(
        Duration::from_secs(30),
        "every job finished after the restart",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let requests = providers.emails().await;
    assert!(requests.len() >= 2, "sent again after the restart");
    let key = the_one_batch(&requests);
    let rows = client
        .query(
            "select provider_message_id, status, errors::text from notification_jobs order by id",
            &[],
        )
        .await
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, String>(1), "sent");
        assert_eq!(row.get::<_, String>(0), format!("email-{key}-{i}"));
        assert!(row.get::<_, String>(2).contains("lease expired"));
    }
}

/// Resend's 409 for a key it knows with another body means a batch under
/// that key was accepted before: its emails most likely went out. Sending
/// them again one by one could deliver them twice, so the jobs fail with the
/// provider's words instead, for a person to look at.
#[tokio::test]
async fn a_batch_resend_already_accepted_with_other_contents_is_recorded_as_probably_sent_and_never_sent_again()
 {
    let (db, client) = email_burst(3).await;
    let providers = Providers::empty().await;
    batch_endpoint_answers(
        &providers,
        ResponseTemplate::new(409).set_body_json(serde_json::json!({
            "statusCode": 409, "name": "invalid_idempotent_request",
            "message": "Same idempotency key used with a different request payload."})),
    )
    .await;
    send_everything(&db, &client, &providers, 100).await;
    assert_eq!(providers.emails().await.len(), 1, "no other request");
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs j join landing_leads l on l.id = j.lead_id
              where j.status = 'sent' and j.provider_message_id is null and l.email_sent
                and j.sent_unconfirmed like '%most likely went out%invalid_idempotent_request%'"
        )
        .await,
        3,
        "sent, probably: the key Resend holds went out with its first body"
    );
    // a retry has nothing to send again
    let retried =
        crate::app::leadrelay_cli(&db.url, &["retry", "--failed-since", "2000-01-01", "--yes"]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status <> 'sent'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_batch_waiting_for_its_retry_still_goes_after_batches_are_turned_off() {
    let (db, client) = email_burst(5).await;
    // First run: batches of up to 100; Resend fails the batch once.
    let failing = Providers::empty().await;
    batch_endpoint_answers(
        &failing,
        ResponseTemplate::new(500).set_body_json(
            serde_json::json!({"statusCode": 500, "name": "internal_server_error", "message": "try again"}),
        ),
    )
    .await;
    let mut cfg = config(&db.url, &failing);
    cfg.resend.batch_size = 100;
    let app = start(cfg).await;
    eventually(Duration::from_secs(20), "the batch failed once", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'email' and batch_key is not null and attempts >= 1 and status in ('scheduled', 'due')").await == 5
    })
    .await;
    app.shutdown().await;
    assert!(!failing.emails().await.is_empty());
    let key: String = client
        .query_one(
            "select distinct batch_key from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Second run: an operator set RESEND_BATCH_SIZE=1.
    let healthy = Providers::empty().await;
    healthy.mount_resend(ResendLike::new(Duration::ZERO)).await;
    send_everything(&db, &client, &healthy, 1).await;
    let requests = healthy.emails().await;
    assert_eq!(
        the_one_batch(&requests),
        key,
        "the batch went again, whole, with its key"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'"
        )
        .await,
        5
    );
}
