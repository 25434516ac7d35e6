//! The worker against a real PostgreSQL and local mock providers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::app::{
    LEAD_TRACKING_TABLE, MobizonLike, NO_DELAY, Providers, ResendLike, ServeProcess, TestApp,
    config, count, eventually, start, unfinished,
};
use crate::harness::{
    self, fresh_db, insert_as_landing, insert_incident_leads, insert_proftest_lead,
};

async fn one_lead(client: &tokio_postgres::Client) -> uuid::Uuid {
    insert_as_landing(
        client,
        Some("Айгерим"),
        Some("aigerim.test0@gmail.com"),
        Some("+7 (705) 123-45-67"),
        Some("proftest_main"),
        None,
    )
    .await
}

async fn job(
    client: &tokio_postgres::Client,
    lead: uuid::Uuid,
    channel: &str,
) -> tokio_postgres::Row {
    client
        .query_one(
            "select status, attempts, last_error, provider_message_id, errors::text from notification_jobs where lead_id = $1 and channel = $2",
            &[&lead, &channel],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn the_incident_leads_get_their_email_and_sms_and_the_malformed_phone_is_invalid_with_no_request()
 {
    let TestApp {
        db: _db,
        client,
        providers,
        app,
    } = TestApp::start(&[LEAD_TRACKING_TABLE, NO_DELAY], Providers::healthy().await).await;
    let leads = insert_incident_leads(&client).await;

    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;

    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'sent'"
        )
        .await,
        3
    );
    let invalid = job(&client, leads[1], "sms").await;
    assert_eq!(invalid.get::<_, String>(0), "invalid");
    assert!(invalid.get::<_, String>(2).contains("10 digits"));
    assert_eq!(invalid.get::<_, i32>(1), 0, "no attempt was made");

    // Resend: one request per email job, keyed by the job, from the configured sender.
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 4);
    let email_jobs: Vec<(String, String)> = client
        .query("select idempotency_key, provider_message_id from notification_jobs where channel = 'email' order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let keys: HashSet<String> = emails
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (key, message_id) in &email_jobs {
        assert!(keys.contains(key));
        assert_eq!(message_id, &format!("email-{key}"));
    }
    // the key every claim fixes is the SQL function's
    let differing = count(
        &client,
        "select count(*) from notification_jobs where channel = 'email'
          and idempotency_key is distinct from leadrelay.idempotency_key(lead_id, template, null)",
    )
    .await;
    assert_eq!(
        differing, 0,
        "the claim's key differs from leadrelay.idempotency_key()"
    );
    let body: serde_json::Value = serde_json::from_slice(&emails[0].body).unwrap();
    assert_eq!(body["subject"], "Тест пройден. Получить продукт");
    assert_eq!(body["from"], "Академия <hello@academy.kz>");
    assert!(
        body["html"]
            .as_str()
            .unwrap()
            .contains("https://academy.kz/product")
    );
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("https://academy.kz/product")
    );
    assert_eq!(
        emails[0].headers.get("authorization").unwrap(),
        "Bearer re_test_key"
    );

    // Mobizon: three requests, international digits, the key in the query.
    let sms = providers.sms().await;
    assert_eq!(sms.len(), 3);
    let recipients: HashSet<String> = sms
        .iter()
        .map(|r| {
            let form: HashMap<String, String> = url_form(&r.body);
            assert_eq!(form["from"], "Academy");
            assert!(form["text"].contains("https://academy.kz/product"));
            assert!(r.url.query().unwrap().contains("apiKey=kz_test_key"));
            assert!(r.url.query().unwrap().contains("output=json"));
            form["recipient"].clone()
        })
        .collect();
    assert_eq!(
        recipients,
        HashSet::from([
            "77051234567".to_string(),
            "77027654321".into(),
            "77771112233".into()
        ])
    );

    // The mirror, in landing_leads.
    assert_eq!(count(&client, "select count(*) from landing_leads where email_sent and email_sent_at is not null and email_error is null").await, 4);
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where sms_sent and sms_sent_at is not null"
        )
        .await,
        3
    );
    let sms_error: Option<String> = client
        .query_one(
            "select sms_error from landing_leads where id = $1",
            &[&leads[1]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sms_error.unwrap().contains("10 digits"));

    // The dashboard: one row per lead, with the final flags.
    assert_eq!(
        count(&client, "select count(*) from lead_tracking").await,
        4
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from lead_tracking where email_sent and source = 'proftest_main'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from lead_tracking where email_sent and source = 'proftest'"
        )
        .await,
        4
    );
    assert_eq!(
        count(&client, "select count(*) from lead_tracking where sms_sent").await,
        3
    );
    let linked: i64 = client
        .query_one(
            "select count(*) from lead_tracking t join landing_leads l on t.metadata->>'landing_lead_id' = l.id::text where t.metadata->>'utm_source' = 'instagram'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(linked, 4);
    app.shutdown().await;
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_next_attempt_succeeds() {
    let TestApp { db: _db, client, providers, app } =
        TestApp::start(&[NO_DELAY], Providers::resend_fails_once(ResponseTemplate::new(500).set_body_json(
        serde_json::json!({"statusCode": 500, "name": "internal_server_error", "message": "boom"}),
    ))
    .await).await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "email sent", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "sent"
    })
    .await;
    let row = job(&client, lead, "email").await;
    assert_eq!(row.get::<_, i32>(1), 2);
    assert!(
        row.get::<_, String>(4)
            .contains("resend 500 internal_server_error: boom")
    );
    assert_eq!(providers.emails().await.len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_waits_for_retry_after_and_does_not_count_as_an_attempt() {
    let TestApp { db: _db, client, providers: _providers, app } =
        TestApp::start(&[NO_DELAY], Providers::resend_fails_once(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .set_body_json(serde_json::json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"})),
        )
    .await).await;
    let started = Instant::now();
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "email sent", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "sent"
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 2 was honoured"
    );
    let row = job(&client, lead, "email").await;
    assert_eq!(row.get::<_, i32>(1), 1, "the 429 did not use up an attempt");
    assert!(row.get::<_, String>(4).contains("rate_limit_exceeded"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_permanent_4xx_fails_the_job_at_once_with_the_providers_message_and_the_sms_still_goes() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(422).set_body_json(
            serde_json::json!({"statusCode": 422, "name": "validation_error", "message": "The `to` field is invalid."}),
        ))
        .mount(&providers.resend)
        .await;
    providers
        .mount_mobizon(MobizonLike::new(Duration::ZERO))
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "both finished", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "failed"
            && job(&client, lead, "sms").await.get::<_, String>(0) == "sent"
    })
    .await;
    let row = job(&client, lead, "email").await;
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(
        row.get::<_, String>(2),
        "resend 422 validation_error: The `to` field is invalid."
    );
    assert_eq!(providers.emails().await.len(), 1, "no retry");
    let mirror: (bool, Option<String>) = {
        let r = client
            .query_one(
                "select email_sent, email_error from landing_leads where id = $1",
                &[&lead],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        mirror,
        (
            false,
            Some("resend 422 validation_error: The `to` field is invalid.".into())
        )
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_timeout_is_retried_with_the_same_idempotency_key_and_body() {
    let TestApp {
        db: _db,
        client,
        providers,
        app,
    } = TestApp::start(
        &[NO_DELAY],
        Providers::resend_fails_once(ResendLike::new(Duration::from_secs(4))).await,
    )
    .await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "email sent", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "sent"
    })
    .await;
    let row = job(&client, lead, "email").await;
    assert_eq!(row.get::<_, i32>(1), 2);
    assert!(row.get::<_, String>(4).contains("resend: timed out"));
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 2);
    assert_eq!(
        emails[0].headers.get("idempotency-key"),
        emails[1].headers.get("idempotency-key")
    );
    assert_eq!(
        emails[0].body, emails[1].body,
        "the retry's body is the first one's"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_email_provider_does_not_hold_up_the_sms() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::with_delays(Duration::from_secs(3), Duration::ZERO).await;
    let mut cfg = config(&db.url, &providers);
    cfg.worker.provider_timeout = Duration::from_secs(10);
    cfg.worker.lease = Duration::from_secs(30);
    let app = start(cfg).await;
    let mut leads = Vec::new();
    for _ in 0..4 {
        leads.push(one_lead(&client).await);
    }
    eventually(Duration::from_secs(10), "every SMS sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'sent'",
        )
        .await
            == 4
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'"
        )
        .await,
        0,
        "the SMS went out while the emails were still waiting for Resend"
    );
    eventually(Duration::from_secs(20), "every email sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'",
        )
        .await
            == 4
    })
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn mobizon_codes_decide_between_retry_and_failure() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    // First a general service error (temporary), then a validation error (permanent).
    Mock::given(method("POST"))
        .and(path("/service/message/sendsmsmessage"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"code": 999, "data": [], "message": "Service error"}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&providers.mobizon)
        .await;
    Mock::given(method("POST"))
        .and(path("/service/message/sendsmsmessage"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"code": 1, "data": {"recipient": "Номер получателя указан неверно"}, "message": "Ошибка валидации"}),
        ))
        .mount(&providers.mobizon)
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "sms failed", || async {
        job(&client, lead, "sms").await.get::<_, String>(0) == "failed"
    })
    .await;
    let row = job(&client, lead, "sms").await;
    assert_eq!(row.get::<_, i32>(1), 2);
    let error: String = row.get(2);
    assert!(
        error.contains("mobizon code 1: Ошибка валидации"),
        "{error}"
    );
    assert!(row.get::<_, String>(4).contains("mobizon code 999"));
    app.shutdown().await;
}

#[tokio::test]
async fn temporary_failures_stop_after_max_attempts_with_the_last_error() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("alter table notification_jobs alter column max_attempts set default 3")
        .await
        .unwrap();
    let providers = Providers::empty().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .mount(&providers.resend)
        .await;
    providers
        .mount_mobizon(MobizonLike::new(Duration::ZERO))
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "email failed", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "failed"
    })
    .await;
    let row = job(&client, lead, "email").await;
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(
        row.get::<_, String>(2),
        "gave up after 3 attempts; last error: resend 503: upstream unavailable"
    );
    assert_eq!(providers.emails().await.len(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn lead_tracking_rows_go_to_the_tracking_database_when_it_is_another_one() {
    let db = fresh_db().await;
    let tracking = harness::empty_db().await;
    let tracking_client = tracking.client().await;
    tracking_client
        .batch_execute(LEAD_TRACKING_TABLE)
        .await
        .unwrap();
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let mut cfg = config(&db.url, &providers);
    cfg.lead_tracking_database_url = Some(leadrelay::domain::Secret::new(tracking.url.clone()));
    let app = start(cfg).await;
    let lead = one_lead(&client).await;
    eventually(
        Duration::from_secs(20),
        "tracking row with both flags",
        || async {
            count(
                &tracking_client,
                "select count(*) from lead_tracking where email_sent and sms_sent",
            )
            .await
                == 1
                && unfinished(&client).await == 0
        },
    )
    .await;
    let row = tracking_client
        .query_one("select full_name, email, phone, source, metadata->>'landing_lead_id' from lead_tracking", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Айгерим");
    assert_eq!(row.get::<_, String>(1), "aigerim.test0@gmail.com");
    assert_eq!(row.get::<_, String>(2), "+7 (705) 123-45-67");
    assert_eq!(row.get::<_, String>(3), "proftest");
    assert_eq!(row.get::<_, String>(4), lead.to_string());
    assert_eq!(
        count(&tracking_client, "select count(*) from lead_tracking").await,
        1,
        "one row however often it syncs"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_tracking_database_that_is_down_delays_the_row_but_loses_nothing() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // No lead_tracking table yet: every sync fails like an unreachable database.
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let lead = one_lead(&client).await;
    eventually(
        Duration::from_secs(10),
        "a failed sync is scheduled again",
        || async {
            let row = job(&client, lead, "lead_tracking").await;
            row.get::<_, String>(0) == "scheduled"
                && row
                    .get::<_, Option<String>>(2)
                    .is_some_and(|e| e.contains("lead_tracking"))
        },
    )
    .await;
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    eventually(Duration::from_secs(20), "the row arrives", || async {
        count(
            &client,
            "select count(*) from lead_tracking where email_sent and sms_sent",
        )
        .await
            == 1
    })
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight_and_gives_back_what_was_not_sent() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("update notification_rules set enabled = false where channel <> 'email'")
        .await
        .unwrap();
    let providers = Providers::with_delays(Duration::from_millis(1500), Duration::ZERO).await;
    let mut cfg = config(&db.url, &providers);
    cfg.resend.max_rps = 1.0;
    cfg.worker.concurrency = 3;
    cfg.worker.provider_timeout = Duration::from_secs(5);
    cfg.worker.lease = Duration::from_secs(30);
    let app = start(cfg).await;
    for _ in 0..3 {
        one_lead(&client).await;
    }
    // One request is in flight; the other two wait for their pacing slot.
    eventually(Duration::from_secs(5), "a request in flight", || async {
        !providers.emails().await.is_empty()
    })
    .await;
    app.shutdown().await;
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sending'"
        )
        .await,
        0
    );
    let sent = count(
        &client,
        "select count(*) from notification_jobs where status = 'sent'",
    )
    .await;
    assert!(sent >= 1, "the request in flight was finished and recorded");
    assert_eq!(
        sent as usize,
        providers.emails().await.len(),
        "every request made was recorded"
    );
    let released = count(
        &client,
        "select count(*) from notification_jobs where status = 'due' and attempts = 0",
    )
    .await;
    assert_eq!(
        sent + released,
        3,
        "the rest went back unsent, without using an attempt"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_database_without_the_migrations() {
    let db = harness::empty_db().await;
    let providers = Providers::healthy().await;
    let err = match leadrelay::serve::Application::build(config(&db.url, &providers)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started on an unmigrated database"),
    };
    assert!(err.contains("run `leadrelay migrate`"), "{err}");
}

#[test]
fn serve_with_missing_configuration_stops_with_one_line_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("RESEND_API_KEY", "re_x")
        .env("EMAIL_FROM", "a@b.kz")
        .env("MOBIZON_API_KEY", "kz")
        .env(
            "RESEND_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .env("MOBIZON_WEBHOOK_TOKEN", "mobizon-token-0123456789")
        .env("ADMIN_TOKEN", "admin-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "leadrelay: configuration error: PRODUCT_URL is not set"
    );
}

/// Kills the real binary with SIGKILL while emails and SMS are in flight, starts
/// it again, and checks that nothing is lost and no email is sent twice.
#[tokio::test]
async fn a_worker_killed_mid_flight_loses_nothing_and_sends_no_email_twice() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers =
        Providers::with_delays(Duration::from_millis(700), Duration::from_millis(700)).await;
    let env = [
        ("JOB_LEASE", "3s"),
        ("PROVIDER_TIMEOUT", "1500ms"),
        ("WORKER_CONCURRENCY", "4"),
    ];
    let mut first = ServeProcess::start(&db.url, &providers, &env);
    let mut leads = Vec::new();
    for i in 0..20 {
        leads.push(
            insert_as_landing(
                &client,
                Some(&format!("Lead {i}")),
                Some(&format!("lead{i}@mail.ru")),
                Some("+7 705 123 45 67"),
                Some("proftest_main"),
                None,
            )
            .await,
        );
    }
    eventually(Duration::from_secs(20), "some sent and some in flight", || async {
        count(&client, "select count(*) from notification_jobs where status = 'sent' and channel = 'email'").await >= 2
            && count(&client, "select count(*) from notification_jobs where status = 'sending'").await >= 1
    })
    .await;
    first.kill_9();
    let in_flight = count(
        &client,
        "select count(*) from notification_jobs where status = 'sending'",
    )
    .await;
    assert!(in_flight >= 1, "the kill left jobs in flight");

    let _second = ServeProcess::start(&db.url, &providers, &env);
    eventually(
        Duration::from_secs(60),
        "every job finished after the restart",
        || async { unfinished(&client).await == 0 },
    )
    .await;

    // No lead without its messages.
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status <> 'sent'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where not (email_sent and sms_sent)"
        )
        .await,
        0
    );
    assert_eq!(
        count(&client, "select count(*) from lead_tracking").await,
        20
    );

    // No email twice: every retried request carried its job's key and body, so
    // Resend (the mock enforces its rules) answered with the first email id.
    let emails = providers.emails().await;
    let mut per_key: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for r in &emails {
        per_key
            .entry(
                r.headers
                    .get("idempotency-key")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default()
            .push(r.body.clone());
    }
    assert_eq!(per_key.len(), 20, "one key per email job");
    assert!(
        per_key
            .values()
            .all(|bodies| bodies.windows(2).all(|w| w[0] == w[1]))
    );
    let recorded: Vec<(String, String)> = client
        .query(
            "select idempotency_key, provider_message_id from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (key, message_id) in recorded {
        assert_eq!(
            message_id,
            format!("email-{key}"),
            "one message recorded per job"
        );
    }
    let rescued = count(
        &client,
        "select count(*) from notification_jobs where errors::text like '%lease expired%'",
    )
    .await;
    assert!(
        rescued >= 1,
        "the jobs in flight came back through lease expiry"
    );
}

#[tokio::test]
async fn two_serve_processes_share_the_work_and_send_every_job_once() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers =
        Providers::with_delays(Duration::from_millis(20), Duration::from_millis(20)).await;
    let _a = ServeProcess::start(&db.url, &providers, &[]);
    let _b = ServeProcess::start(&db.url, &providers, &[]);
    for i in 0..60 {
        insert_proftest_lead(&client, &format!("L{i}"), &format!("l{i}@mail.ru")).await;
    }
    eventually(Duration::from_secs(60), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 60, "each email requested once");
    let keys: HashSet<_> = emails
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().clone())
        .collect();
    assert_eq!(keys.len(), 60);
    assert_eq!(providers.sms().await.len(), 60, "each SMS requested once");
    assert_eq!(
        count(&client, "select count(*) from lead_tracking").await,
        60
    );
}

/// A database restart while the service runs: nothing is lost and the
/// listener reconnects by itself.
#[tokio::test]
async fn a_database_restart_loses_nothing_and_the_listener_comes_back() {
    let cluster = harness::new_cluster();
    harness::prepare_database(&cluster, "restart").await;
    let url = cluster.url("restart");
    let client = leadrelay::store::connect(&url).await.unwrap();
    client.batch_execute(NO_DELAY).await.unwrap();
    // five leads of one person on purpose: the policies would cancel four
    client.batch_execute(harness::POLICIES_OFF).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers = Providers::healthy().await;
    let mut cfg = config(&url, &providers);
    // A long sweep: after the restart, only the listener's reconnect (and its
    // sweep) can pick the new leads up quickly.
    cfg.worker.sweep_interval = Duration::from_secs(120);
    let app = start(cfg).await;
    insert_proftest_lead(&client, "Before", "before@mail.ru").await;
    eventually(Duration::from_secs(20), "first lead done", || async {
        unfinished(&client).await == 0
    })
    .await;
    drop(client);

    cluster
        .stop(leadrelay::store::cluster::StopMode::Fast)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart().unwrap();

    let client = leadrelay::store::connect(&url).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the listener reconnected",
        || async { app.listener.reconnects() >= 1 && app.listener.is_connected() },
    )
    .await;
    // New leads whose time comes now: the promotion (pg_cron's job) notifies,
    // and only a listener that came back hears it before the 120 s sweep.
    client
        .batch_execute("update notification_rules set delay = interval '1 hour'")
        .await
        .unwrap();
    for i in 0..5 {
        insert_proftest_lead(&client, &format!("After {i}"), "after@mail.ru").await;
    }
    let after = Instant::now();
    client
        .batch_execute(
            "update notification_jobs set status = 'scheduled', due_at = now() where status in ('scheduled', 'due');
             select promote_due_notification_jobs();",
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "leads after the restart done",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    assert!(after.elapsed() < Duration::from_secs(20));
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sent'"
        )
        .await,
        18
    );
    assert_eq!(providers.emails().await.len(), 6);
    app.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly_and_leaves_no_job_in_flight() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers =
        Providers::with_delays(Duration::from_millis(500), Duration::from_millis(500)).await;
    let mut serve = ServeProcess::start(&db.url, &providers, &[("PROVIDER_TIMEOUT", "5s")]);
    for i in 0..5 {
        insert_proftest_lead(&client, &format!("L{i}"), "a@mail.ru").await;
    }
    eventually(Duration::from_secs(10), "requests in flight", || async {
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sending'",
        )
        .await
            >= 1
    })
    .await;
    let started = Instant::now();
    let status = serve.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped within the grace period"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sending'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_job_whose_lease_ran_out_during_a_long_retry_after_is_given_back_not_sent_twice() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("update notification_rules set enabled = (channel = 'email')")
        .await
        .unwrap();
    let providers = Providers::resend_fails_once(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "20")
                .set_body_json(serde_json::json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"})),
        )
    .await;
    let mut cfg = config(&db.url, &providers);
    cfg.worker.concurrency = 1;
    cfg.resend.max_rps = 1.0;
    // a lease of 10 s + 2 s per request round + pacing = 16 s: the other jobs
    // wait out the 20 s pause past their lease
    let app = start(cfg).await;
    for _ in 0..3 {
        one_lead(&client).await;
    }
    eventually(Duration::from_secs(60), "every email sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sent'",
        )
        .await
            == 3
    })
    .await;
    let emails = providers.emails().await;
    let keys: Vec<_> = emails
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().clone())
        .collect();
    let distinct: HashSet<_> = keys.iter().collect();
    assert_eq!(
        emails.len(),
        4,
        "one 429, then one request per email: {keys:?}"
    );
    assert_eq!(distinct.len(), 3);
    app.shutdown().await;
}

/// Landing inserts send no notification; the sweeper's one-second glance
/// finds a job due at once long before the sweep interval (30 s here).
#[tokio::test]
async fn a_job_due_at_once_is_sent_within_seconds_whatever_the_sweep_interval() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let mut cfg = config(&db.url, &providers);
    cfg.worker.sweep_interval = Duration::from_secs(30);
    let app = start(cfg).await;
    // past the sweep at start-up
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    one_lead(&client).await;
    eventually(Duration::from_secs(5), "the email and SMS sent", || async {
        providers.emails().await.len() == 1 && providers.sms().await.len() == 1
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    app.shutdown().await;
}

#[tokio::test]
async fn provider_text_with_nul_bytes_never_stops_an_outcome_being_recorded_nor_sends_twice() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    // Resend refuses the email with NUL in its words; Mobizon takes the SMS
    // and names it with an id that holds a NUL.
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(422).set_body_json(
            serde_json::json!({"statusCode": 422, "name": "validation_error\u{0}", "message": "The `to`\u{0} field is invalid.\u{0}"}),
        ))
        .mount(&providers.resend)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"code": 0, "data": {"campaignId": "77", "messageId": "9\u{0}1", "status": 2}, "message": ""}),
        ))
        .mount(&providers.mobizon)
        .await;
    let app = start(config(&db.url, &providers)).await;
    let lead = one_lead(&client).await;
    eventually(Duration::from_secs(20), "both recorded", || async {
        job(&client, lead, "email").await.get::<_, String>(0) == "failed"
            && job(&client, lead, "sms").await.get::<_, String>(0) == "sent"
    })
    .await;
    let email = job(&client, lead, "email").await;
    let error: String = email.get(2);
    assert!(error.contains("field is invalid"), "{error}");
    assert!(!error.contains('\u{0}'), "{error:?}");
    let sms = job(&client, lead, "sms").await;
    let message_id: String = sms.get(3);
    assert!(
        message_id.starts_with('9') && message_id.ends_with('1') && !message_id.contains('\u{0}'),
        "{message_id:?}"
    );
    // Longer than a lease would take to run out: nothing is sent again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(providers.sms().await.len(), 1, "the SMS went once");
    assert_eq!(providers.emails().await.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn two_databases_on_one_resend_team_never_share_an_idempotency_key() {
    // Two environments (or a rebuilt database) whose jobs have the same ids,
    // against one Resend that remembers every key for 24 hours.
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    providers
        .mount_mobizon(MobizonLike::new(Duration::ZERO))
        .await;
    let mut ids = Vec::new();
    for email in ["first@mail.ru", "second@mail.ru"] {
        let db = fresh_db().await;
        let client = db.client().await;
        client.batch_execute(NO_DELAY).await.unwrap();
        let app = start(config(&db.url, &providers)).await;
        let lead = insert_proftest_lead(&client, "Twin", email).await;
        eventually(Duration::from_secs(20), "the email recorded", || async {
            job(&client, lead, "email").await.get::<_, String>(0) != "due"
                && job(&client, lead, "email").await.get::<_, String>(0) != "sending"
                && job(&client, lead, "email").await.get::<_, String>(0) != "scheduled"
        })
        .await;
        let row = job(&client, lead, "email").await;
        assert_eq!(
            row.get::<_, String>(0),
            "sent",
            "{email}: {:?}",
            row.get::<_, Option<String>>(2)
        );
        ids.push(
            client
                .query_one(
                    "select id from notification_jobs where lead_id = $1 and channel = 'email'",
                    &[&lead],
                )
                .await
                .unwrap()
                .get::<_, i64>(0),
        );
        app.shutdown().await;
    }
    assert_eq!(ids[0], ids[1], "the same job id in both databases");
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 2);
    let keys: HashSet<&str> = emails
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "two keys: {keys:?}");
}

#[tokio::test]
async fn an_answer_that_comes_after_the_lease_ran_out_is_kept_while_no_other_claim_began() {
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::{Outcome, Queue};
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    insert_proftest_lead(&client, "Late", "late@mail.ru").await;
    insert_proftest_lead(&client, "Later", "later@mail.ru").await;
    let pool = leadrelay::store::pool(&db.url, 4).await.unwrap();
    let first = Queue::new(pool.clone(), "first-worker".into());
    let second = Queue::new(pool, "second-worker".into());
    let jobs = first
        .claim(Channel::Sms, 10, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    // Both leases run out while the database is away; the rescue puts the
    // jobs back. Then another worker claims one of them again.
    client
        .batch_execute(
            "update notification_jobs set locked_until = now() - interval '1 second' where status = 'sending';
             select promote_due_notification_jobs();",
        )
        .await
        .unwrap();
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'due'"
        )
        .await,
        2
    );
    let reclaimed = second
        .claim(Channel::Sms, 1, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    let (taken, untouched): (Vec<_>, Vec<_>) = jobs.iter().partition(|j| j.id == reclaimed[0].id);
    // The first worker's answers arrive now.
    let sent = |id: &str| Outcome::Sent {
        provider_message_id: id.to_string(),
        campaign_id: None,
    };
    assert!(
        first
            .record(untouched[0].id, &untouched[0].lock, &sent("late-1"))
            .await
            .unwrap(),
        "no other claim began: the known send is kept"
    );
    assert!(
        !first
            .record(taken[0].id, &taken[0].lock, &sent("late-2"))
            .await
            .unwrap(),
        "another claim began: its outcome is its own"
    );
    let rows: Vec<(i64, String, Option<String>)> = client
        .query("select id, status, provider_message_id from notification_jobs where channel = 'sms' order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let untouched_row = rows.iter().find(|r| r.0 == untouched[0].id).unwrap();
    assert_eq!(
        (untouched_row.1.as_str(), untouched_row.2.as_deref()),
        ("sent", Some("late-1"))
    );
    let taken_row = rows.iter().find(|r| r.0 == taken[0].id).unwrap();
    assert_eq!(
        (taken_row.1.as_str(), taken_row.2.as_deref()),
        ("sending", None)
    );
    // The claimed-again job cannot be claimed a third time while it is held,
    // and the kept one is not claimed at all.
    let third = first
        .claim(Channel::Sms, 10, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert!(third.is_empty());
}

#[tokio::test]
async fn a_job_in_hand_whose_lead_is_deleted_meanwhile_is_not_sent() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("update notification_rules set enabled = (channel = 'sms')")
        .await
        .unwrap();
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResendLike::new(Duration::ZERO))
        .await;
    // one request at a time, each taking 1.5 s: the second job waits in hand
    providers
        .mount_mobizon(MobizonLike::new(Duration::from_millis(1500)))
        .await;
    let mut cfg = config(&db.url, &providers);
    cfg.worker.concurrency = 1;
    cfg.worker.provider_timeout = Duration::from_secs(4);
    let kept = insert_proftest_lead(&client, "Kept", "kept@mail.ru").await;
    let forgotten = insert_proftest_lead(&client, "Forget me", "forget@mail.ru").await;
    let app = start(cfg).await;
    eventually(Duration::from_secs(10), "both SMS jobs in hand", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'sending'",
        )
        .await
            == 2
    })
    .await;
    // the person asks to be forgotten while their SMS waits for a slot
    client
        .execute("delete from landing_leads where id = $1", &[&forgotten])
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the kept lead's SMS sent",
        || async { job(&client, kept, "sms").await.get::<_, String>(0) == "sent" },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sms = providers.sms().await;
    assert_eq!(sms.len(), 1, "only the kept lead's SMS went");
    app.shutdown().await;
}

#[tokio::test]
async fn claims_carry_the_leads_metadata_only_for_the_dashboard_row() {
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::Queue;
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let big = serde_json::json!({"answers": vec![1; 20_000]});
    insert_as_landing(
        &client,
        Some("Big"),
        Some("big@mail.ru"),
        Some("87051234567"),
        Some("proftest_main"),
        Some(&big),
    )
    .await;
    let pool = leadrelay::store::pool(&db.url, 2).await.unwrap();
    let queue = Queue::new(pool, "metadata-test".into());
    let email = queue
        .claim(Channel::Email, 10, Duration::from_secs(30), false)
        .await
        .unwrap();
    assert_eq!(email.len(), 1);
    assert_eq!(
        email[0].lead.as_ref().unwrap().metadata,
        None,
        "an email does not need it"
    );
    let tracking = queue
        .claim(Channel::LeadTracking, 10, Duration::from_secs(30), false)
        .await
        .unwrap();
    assert_eq!(tracking.len(), 1);
    assert_eq!(
        tracking[0].lead.as_ref().unwrap().metadata.as_ref(),
        Some(&big)
    );
}

/// Takes each email like Resend (remembering its body under its key) but
/// loses the answer while `losing` is set: the email probably went.
struct LosesAnswers {
    inner: ResendLike,
    losing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl wiremock::Respond for LosesAnswers {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let answer = self.inner.respond(request);
        if self.losing.load(std::sync::atomic::Ordering::SeqCst) {
            ResponseTemplate::new(502)
        } else {
            answer
        }
    }
}

#[tokio::test]
async fn a_retry_sends_what_the_first_attempt_sent_though_the_name_and_link_changed_since() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("update notification_rules set enabled = (channel = 'email')")
        .await
        .unwrap();
    let losing = Arc::new(AtomicBool::new(true));
    let providers = Providers::empty().await;
    providers
        .mount_resend(LosesAnswers {
            inner: ResendLike::new(Duration::ZERO),
            losing: Arc::clone(&losing),
        })
        .await;
    let lead = insert_proftest_lead(&client, "Айгерим", "aigerim@mail.ru").await;
    let app = start(config(&db.url, &providers)).await;
    eventually(Duration::from_secs(10), "the first attempt", || async {
        !providers.emails().await.is_empty()
    })
    .await;
    app.shutdown().await;
    // Meanwhile the name is corrected and the product page moves.
    client
        .execute(
            "update landing_leads set name = 'Aigerim' where id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    losing.store(false, Ordering::SeqCst);
    let mut cfg = config(&db.url, &providers);
    cfg.product_url = "https://academy.kz/new-product".into();
    let app = start(cfg).await;
    eventually(Duration::from_secs(20), "the email finished", || async {
        !matches!(
            job(&client, lead, "email")
                .await
                .get::<_, String>(0)
                .as_str(),
            "due" | "sending" | "scheduled"
        )
    })
    .await;
    let row = job(&client, lead, "email").await;
    assert_eq!(
        row.get::<_, String>(0),
        "sent",
        "{:?}",
        row.get::<_, Option<String>>(2)
    );
    let bodies: std::collections::HashSet<Vec<u8>> = providers
        .emails()
        .await
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies.len(), 1, "every attempt sent the same email");
    let body = String::from_utf8(bodies.into_iter().next().unwrap()).unwrap();
    assert!(
        body.contains("Айгерим") && body.contains("https://academy.kz/product"),
        "{body}"
    );
    app.shutdown().await;
}

/// Two outcome statements that share leads (an email batch recorded while
/// the same leads' SMS are) take the leads' locks in one order: neither is
/// the victim of a deadlock, whatever order each names its jobs in.
#[tokio::test]
async fn outcomes_of_the_same_leads_recorded_at_once_never_deadlock() {
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::{ClaimedJob, Queue};
    let db = fresh_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "update notification_rules set enabled = (channel <> 'lead_tracking'), delay = interval '0';
             insert into landing_leads (name, email, phone, source)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', '+7 705 ' || lpad(g::text, 7, '0'), 'proftest_main'
             from generate_series(1, 400) g;",
        )
        .await
        .unwrap();
    let pool = leadrelay::store::pool(&db.url, 4).await.unwrap();
    let queue = Queue::new(pool, "deadlock-test".into());
    let lease = Duration::from_secs(600);
    let mut emails = queue
        .claim(Channel::Email, 400, lease, false)
        .await
        .unwrap();
    let mut sms = queue.claim(Channel::Sms, 400, lease, false).await.unwrap();
    assert_eq!((emails.len(), sms.len()), (400, 400));
    emails.sort_by_key(|j| j.lead_id);
    sms.sort_by_key(|j| j.lead_id);
    let record = |jobs: Vec<&ClaimedJob>, channel: Channel| {
        let queue = queue.clone();
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let locks: Vec<String> = jobs.iter().map(|j| j.lock.clone()).collect();
        let message_ids: Vec<String> = ids.iter().map(|id| format!("msg-{id}")).collect();
        let campaigns = vec![None; ids.len()];
        async move {
            queue
                .record_sent_batch(channel, &ids, &message_ids, &locks, &campaigns)
                .await
        }
    };
    for (email_round, sms_round) in emails.chunks(50).zip(sms.chunks(50)) {
        // the same 50 leads: the emails in one order, the SMS in the other
        let (by_email, by_sms) = tokio::join!(
            record(email_round.iter().collect(), Channel::Email),
            record(sms_round.iter().rev().collect(), Channel::Sms),
        );
        assert_eq!(by_email.expect("the email outcomes are recorded").len(), 50);
        assert_eq!(by_sms.expect("the SMS outcomes are recorded").len(), 50);
    }
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where email_sent and sms_sent"
        )
        .await,
        400
    );
}

/// Answers as the stand-in `inner` does, and writes down when each request
/// came.
struct Stamped<R> {
    inner: R,
    at: std::sync::Arc<std::sync::Mutex<Vec<std::time::SystemTime>>>,
}

impl<R: wiremock::Respond> wiremock::Respond for Stamped<R> {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        if let Ok(mut at) = self.at.lock() {
            at.push(std::time::SystemTime::now());
        }
        self.inner.respond(request)
    }
}

#[tokio::test]
async fn messages_due_at_one_moment_go_at_it_and_never_before() {
    // The lanes are told of a moment a little ahead and claim its jobs
    // before it: each request is held until the moment.
    use std::sync::{Arc, Mutex};
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(crate::app::HOUR_DELAY).await.unwrap();
    let providers = Providers::empty().await;
    let emails = Arc::new(Mutex::new(Vec::new()));
    let sms = Arc::new(Mutex::new(Vec::new()));
    providers
        .mount_resend(Stamped {
            inner: ResendLike::new(Duration::ZERO),
            at: Arc::clone(&emails),
        })
        .await;
    providers
        .mount_mobizon(Stamped {
            inner: MobizonLike::new(Duration::ZERO),
            at: Arc::clone(&sms),
        })
        .await;
    let app = start(config(&db.url, &providers)).await;
    // a first lead sent at once: the service's first requests (connections,
    // templates) are behind it
    let first = harness::insert_proftest_lead_with_phone(
        &client,
        "Первый",
        "first@mail.ru",
        "+7 705 400 01 00",
    )
    .await;
    client
        .execute(
            "update notification_jobs set due_at = now() where lead_id = $1",
            &[&first],
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the first lead's messages", || async {
        count(&client, "select count(*) from notification_jobs where status = 'sent' and channel in ('email', 'sms')").await == 2
    })
    .await;
    emails.lock().unwrap().clear();
    sms.lock().unwrap().clear();
    for i in 0..30 {
        harness::insert_proftest_lead_with_phone(
            &client,
            &format!("Момент {i}"),
            &format!("moment{i}@mail.ru"),
            &format!("+7 705 400 00 {i:02}"),
        )
        .await;
    }
    let due: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "with due as (
               update notification_jobs set due_at = date_trunc('milliseconds', now()) + interval '2 seconds'
                where status = 'scheduled' and channel in ('email', 'sms') returning due_at)
             select max(due_at) from due",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(20), "all 60 messages sent", || async {
        count(&client, "select count(*) from notification_jobs where status = 'sent' and channel in ('email', 'sms')").await == 62
    })
    .await;
    let due: std::time::SystemTime = due.into();
    let emails = emails.lock().unwrap().clone();
    let sms = sms.lock().unwrap().clone();
    assert!(
        !emails.is_empty() && sms.len() >= 30,
        "{} email requests, {} SMS",
        emails.len(),
        sms.len()
    );
    for at in emails.iter().chain(&sms) {
        let late = at
            .duration_since(due)
            .unwrap_or_else(|e| panic!("a request went {:?} before its moment", e.duration()));
        assert!(late < Duration::from_secs(2), "{late:?} late");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_lease_that_runs_out_while_moments_keep_coming_is_rescued() {
    // Moments closer together than the sweeper's glances: every pass of
    // the sweeper is one, and each still promotes and rescues.
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::Queue;
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(crate::app::HOUR_DELAY).await.unwrap();
    // only the worker promotes here
    client
        .batch_execute(
            "do $$ begin
               if exists (select 1 from pg_extension where extname = 'pg_cron') then
                 perform cron.unschedule(jobid) from cron.job where jobname = 'promote-due-notification-jobs';
               end if;
             end $$",
        )
        .await
        .unwrap();
    let lost = insert_proftest_lead(&client, "Ушёл", "gone@mail.ru").await;
    client
        .execute(
            "update notification_jobs set due_at = now() - interval '1 second'
              where lead_id = $1 and channel = 'email'",
            &[&lost],
        )
        .await
        .unwrap();
    let pool = leadrelay::store::pool(&db.url, 2).await.unwrap();
    let dead = Queue::new(pool, "a-worker-that-died".into());
    let held = dead
        .claim(Channel::Email, 1, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    for i in 0..40 {
        harness::insert_proftest_lead_with_phone(
            &client,
            &format!("Поток {i}"),
            &format!("stream{i}@mail.ru"),
            &format!("+7 705 400 02 {i:02}"),
        )
        .await;
    }
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    // a moment every 150 ms for six seconds; the dead worker's lease runs
    // out after 1.5 s
    client
        .batch_execute(
            "with l as (select id, row_number() over (order by id) as n from landing_leads where source = 'proftest_main' and name like 'Поток %')
             update notification_jobs j set due_at = now() + interval '300 milliseconds' + (l.n * interval '150 milliseconds')
               from l where j.lead_id = l.id and j.status = 'scheduled';
             update notification_jobs set locked_until = now() + interval '1500 milliseconds'
              where status = 'sending' and locked_by like 'a-worker-that-died%';",
        )
        .await
        .unwrap();
    let started = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the rescued email sent",
        || async { crate::app::lead_job(&client, lost, "email").await.1 == "sent" },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "rescued {:?} after the lease's end was set, while moments came",
        started.elapsed()
    );
    app.shutdown().await;
}
