//! Webhooks, the status API, health, metrics and the OpenAPI document, over
//! real HTTP against the running application.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::app::{
    ADMIN_TOKEN, LEAD_TRACKING_TABLE, MOBIZON_WEBHOOK_TOKEN, NO_DELAY, Providers,
    RESEND_WEBHOOK_SECRET, ServeProcess, TestApp, config, count, eventually, start, unfinished,
};
use crate::harness::{fresh_db, insert_incident_leads, insert_proftest_lead};
use leadrelay::ingest::svix::SigningKey;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(app: &leadrelay::serve::Application) -> Api {
        Api {
            base: format!("http://{}", app.local_addr()),
            http: reqwest::Client::new(),
        }
    }

    /// Posts a Resend event signed as Svix signs it.
    async fn resend_signed(&self, svix_id: &str, body: &[u8]) -> reqwest::Response {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        self.resend_with(svix_id, &timestamp, None, body).await
    }

    async fn resend_with(
        &self,
        svix_id: &str,
        timestamp: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> reqwest::Response {
        let key = SigningKey::parse(RESEND_WEBHOOK_SECRET).unwrap();
        let signature = signature
            .map(str::to_string)
            .unwrap_or_else(|| key.signature(svix_id, timestamp, body));
        self.http
            .post(format!("{}/webhooks/resend", self.base))
            .header("svix-id", svix_id)
            .header("svix-timestamp", timestamp)
            .header("svix-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn mobizon(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/mobizon?token={token}", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn status(&self, lead: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}/leads/{lead}/status", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

/// name, email_delivery_status, sms_status, sms_delivery_status
type ViewRow = (String, Option<String>, Option<String>, Option<String>);

fn resend_event(event_type: &str, email_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event_type,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": email_id, "from": "hello@academy.kz", "to": ["a@b.kz"], "subject": "Тест пройден. Получить продукт"}
    }))
    .unwrap()
}

fn mobizon_report(event_id: u64, message_id: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "eventId": event_id, "eventType": "sms-delivery-report", "eventCreateTs": "2026-11-24 12:00:00",
        "webhookId": 1, "attempt": 1,
        "data": {"campaignId": 77, "messageId": message_id, "segNum": 1, "statusUpdateTs": "2026-11-24 12:00:00", "status": status, "to": "77051234567"},
        "sign": "ignored"
    })
}

async fn events(client: &tokio_postgres::Client) -> i64 {
    count(client, "select count(*) from notification_events").await
}

#[tokio::test]
async fn a_signed_resend_event_is_stored_once_and_a_redelivery_changes_nothing() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let body = resend_event("email.delivered", "unknown-email-id");
    let first = api.resend_signed("msg_1", &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.json::<serde_json::Value>().await.unwrap()["status"],
        "pending"
    );
    let again = api.resend_signed("msg_1", &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["status"],
        "duplicate"
    );
    assert_eq!(events(&client).await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_signatures_timestamps_headers_and_bodies_are_refused_and_change_nothing() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let body = resend_event("email.delivered", "e1");
    let now = chrono::Utc::now().timestamp();
    let key = SigningKey::parse(RESEND_WEBHOOK_SECRET).unwrap();

    // forged
    let forged = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        api.resend_with("msg_f", &now.to_string(), Some(forged), &body)
            .await
            .status(),
        401
    );
    // stale and future (by more than the 5 minutes allowed, with room for a
    // slow machine between this `now` and the server's)
    for ts in [now - 320, now + 320] {
        assert_eq!(
            api.resend_with("msg_t", &ts.to_string(), None, &body)
                .await
                .status(),
            401
        );
    }
    // one byte altered after signing
    let signature = key.signature("msg_a", &now.to_string(), &body);
    let mut altered = body.clone();
    altered[10] ^= 0x01;
    assert_eq!(
        api.resend_with("msg_a", &now.to_string(), Some(&signature), &altered)
            .await
            .status(),
        401
    );
    // missing headers
    for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
        let mut request = api
            .http
            .post(format!("{}/webhooks/resend", api.base))
            .body(body.clone());
        for (name, value) in [
            ("svix-id", "msg_m".to_string()),
            ("svix-timestamp", now.to_string()),
            (
                "svix-signature",
                key.signature("msg_m", &now.to_string(), &body),
            ),
        ] {
            if name != missing {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(text.contains(missing), "{text}");
    }
    // signed, but malformed or of an unknown type
    assert_eq!(api.resend_signed("msg_j", b"{not json").await.status(), 400);
    // a type Resend adds later is kept and answered 2xx, never refused
    assert_eq!(
        api.resend_signed("msg_u", &resend_event("email.teleported", "e1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        api.resend_signed("msg_n", br#"{"type":"email.delivered","data":{}}"#)
            .await
            .status(),
        400
    );
    // oversized: refused before it is read whole
    let huge = vec![b' '; 2 * 1024 * 1024];
    let response = api.resend_signed("msg_big", &huge).await;
    assert_eq!(response.status(), 413);

    assert_eq!(
        events(&client).await,
        1,
        "only the well-formed event of an unknown type was stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn arbitrary_signed_bytes_never_cause_a_server_error_or_a_stored_event() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261124);
    let valid = resend_event("email.delivered", "e1");
    for i in 0..200 {
        let body: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random::<u8>()).collect()
        } else {
            // a valid event with a few bytes mangled
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random::<u8>();
            }
            b
        };
        let status = api
            .resend_signed(&format!("msg_fuzz_{i}"), &body)
            .await
            .status();
        assert!(
            status.is_client_error() || status == 200,
            "body {i}: {status}"
        );
        let token_status = api
            .http
            .post(format!(
                "{}/webhooks/mobizon?token={MOBIZON_WEBHOOK_TOKEN}",
                api.base
            ))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            token_status.is_client_error() || token_status == 200,
            "mobizon body {i}: {token_status}"
        );
    }
    // Whatever was accepted was a well-formed event (of a known type or
    // not); nothing else was stored, and no unknown type moved a state.
    let stored = events(&client).await;
    let malformed: i64 = count(&client, "select count(*) from notification_events where jsonb_typeof(payload) <> 'object' or (payload ->> 'type' is null and payload ->> 'eventType' is null)").await;
    assert_eq!(malformed, 0, "{stored} stored");
    let moved: i64 = count(&client, "select count(*) from notification_events where delivery_status is not null and event_type not like 'email.%' and event_type not like 'sms-%'").await;
    assert_eq!(moved, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn the_mobizon_webhook_needs_its_token() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let report = mobizon_report(1, "5001", "DELIVRD");
    assert_eq!(
        api.mobizon("wrong-token-wrong-token", &report)
            .await
            .status(),
        401
    );
    let no_token = api
        .http
        .post(format!("{}/webhooks/mobizon", api.base))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(events(&client).await, 0);
    assert_eq!(
        api.mobizon(MOBIZON_WEBHOOK_TOKEN, &report).await.status(),
        200
    );
    let by_path = api
        .http
        .post(format!(
            "{}/webhooks/mobizon/{MOBIZON_WEBHOOK_TOKEN}",
            api.base
        ))
        .json(&mobizon_report(2, "5001", "DELIVRD"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_path.status(), 200);
    assert_eq!(events(&client).await, 2);
    assert_eq!(api.mobizon(MOBIZON_WEBHOOK_TOKEN, &serde_json::json!({"eventId": 3, "eventType": "sms-delivery-report", "data": {"messageId": 1, "status": "LOST"}})).await.status(), 400);
    assert_eq!(
        api.mobizon(
            MOBIZON_WEBHOOK_TOKEN,
            &serde_json::json!({"eventId": 4, "eventType": "voice-report", "data": {}})
        )
        .await
        .status(),
        200
    );
    app.shutdown().await;
}

#[tokio::test]
async fn delivery_states_only_move_forward_and_early_events_wait_for_their_message() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute("update notification_rules set delay = interval '1 hour'; update notification_rules set enabled = false where channel = 'lead_tracking'").await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let api = Api::new(&app);
    let lead = insert_proftest_lead(&client, "A", "a@mail.ru").await;
    // The mock names the email after the job's idempotency key, which its
    // first claim will make of the lead's uuid and the template.
    let email_id = format!("email-leadrelay-{lead}-proftest_result");
    // Out of order, and before the email is even sent.
    assert_eq!(
        api.resend_signed("evt_delivered", &resend_event("email.delivered", &email_id))
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["status"],
        "pending"
    );
    assert_eq!(
        api.resend_signed("evt_sent", &resend_event("email.sent", &email_id))
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["status"],
        "pending"
    );
    client
        .execute(
            "update notification_jobs set due_at = now() where lead_id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    client
        .batch_execute("select promote_due_notification_jobs()")
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the early events applied once the email is sent", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'email' and status = 'sent' and delivery_status = 'delivered'").await == 1
    })
    .await;
    // A late, lesser event changes nothing.
    let late = api
        .resend_signed(
            "evt_delayed",
            &resend_event("email.delivery_delayed", &email_id),
        )
        .await;
    assert_eq!(
        late.json::<serde_json::Value>().await.unwrap()["status"],
        "applied"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where delivery_status = 'delivered'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where email_delivery_status = 'delivered'"
        )
        .await,
        1
    );
    // A bounce after delivery is news: it moves forward, with its reason.
    let bounce = serde_json::to_vec(&serde_json::json!({
        "type": "email.bounced", "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": email_id, "bounce": {"type": "Permanent", "subType": "General", "message": "The recipient's mailbox does not exist."}}
    })).unwrap();
    api.resend_signed("evt_bounced", &bounce).await;
    let row = client
        .query_one(
            "select delivery_status, last_error from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bounced");
    assert_eq!(
        row.get::<_, String>(1),
        "The recipient's mailbox does not exist."
    );
    // No final state replaces another, and "delivered" does not undo a bounce.
    api.resend_signed(
        "evt_delivered_again",
        &resend_event("email.delivered", &email_id),
    )
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where delivery_status = 'bounced'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_events where applied_at is null"
        )
        .await,
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_incident_leads_end_to_end_with_delivery_reports_in_the_status_api_and_the_view() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers = Providers::healthy().await;
    providers.mount_mobizon_statuses("UNDELIV").await;
    let app = start(config(&db.url, &providers)).await;
    let api = Api::new(&app);
    let leads = insert_incident_leads(&client).await;
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;

    let message_id = |lead: uuid::Uuid, channel: &'static str| {
        let client = &client;
        async move {
            client
                .query_one("select provider_message_id from notification_jobs where lead_id = $1 and channel = $2", &[&lead, &channel])
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
        }
    };
    // Emails: three delivered, Алия's bounced. SMS: two delivered, Ерлан's undelivered.
    for (i, lead) in leads.iter().enumerate() {
        let id = message_id(*lead, "email").await.unwrap();
        let kind = if i == 2 {
            "email.bounced"
        } else {
            "email.delivered"
        };
        assert_eq!(
            api.resend_signed(&format!("msg_e2e_{i}"), &resend_event(kind, &id))
                .await
                .status(),
            200
        );
        if let Some(sms_id) = message_id(*lead, "sms").await {
            let status = if i == 3 { "UNDELIV" } else { "DELIVRD" };
            assert_eq!(
                api.mobizon(
                    MOBIZON_WEBHOOK_TOKEN,
                    &mobizon_report(100 + i as u64, &sms_id, status)
                )
                .await
                .status(),
                200
            );
        }
    }

    let status: serde_json::Value = api
        .status(&leads[2].to_string(), Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let email = status["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "email")
        .unwrap();
    assert_eq!(email["status"], "sent");
    assert_eq!(email["delivery_status"], "bounced");
    let sms = status["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "sms")
        .unwrap();
    assert_eq!(sms["delivery_status"], "delivered");
    assert_eq!(
        status["lead"]["email"], "A***@gmail.com",
        "contacts are masked"
    );

    let invalid: serde_json::Value = api
        .status(&leads[1].to_string(), Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let sms = invalid["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "sms")
        .unwrap();
    assert_eq!(sms["status"], "invalid");
    assert!(sms["error"].as_str().unwrap().contains("10 digits"));

    let view: Vec<ViewRow> = client
        .query("select name, email_delivery_status, sms_status, sms_delivery_status from lead_notification_status order by created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        view,
        vec![
            (
                "Айгерим".into(),
                Some("delivered".into()),
                Some("sent".into()),
                Some("delivered".into())
            ),
            (
                "Нурлан".into(),
                Some("delivered".into()),
                Some("invalid".into()),
                None
            ),
            (
                "Алия".into(),
                Some("bounced".into()),
                Some("sent".into()),
                Some("delivered".into())
            ),
            (
                "Ерлан".into(),
                Some("delivered".into()),
                Some("sent".into()),
                Some("undelivered".into())
            ),
        ]
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where email_delivery_status = 'bounced'"
        )
        .await,
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_status_api_needs_the_admin_token_and_answers_400_and_404() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let lead = insert_proftest_lead(&client, "A", "a@mail.ru").await;
    assert_eq!(api.status(&lead.to_string(), None).await.status(), 401);
    assert_eq!(
        api.status(&lead.to_string(), Some("wrong-token-wrong-token"))
            .await
            .status(),
        401
    );
    assert_eq!(
        api.status("not-a-uuid", Some(ADMIN_TOKEN)).await.status(),
        400
    );
    assert_eq!(
        api.status("'%20or%201=1--", Some(ADMIN_TOKEN))
            .await
            .status(),
        400
    );
    assert_eq!(
        api.status(&uuid::Uuid::new_v4().to_string(), Some(ADMIN_TOKEN))
            .await
            .status(),
        404
    );
    let ok = api.status(&lead.to_string(), Some(ADMIN_TOKEN)).await;
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["lead"]["id"], lead.to_string());
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn database_errors_never_reach_the_caller() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    client
        .batch_execute("alter table notification_events rename to notification_events_gone")
        .await
        .unwrap();
    let response = api
        .resend_signed("msg_db", &resend_event("email.delivered", "x"))
        .await;
    assert_eq!(
        response.status(),
        503,
        "the provider delivers it again later"
    );
    let text = response.text().await.unwrap();
    assert_eq!(text, r#"{"error":"temporarily unavailable, try again"}"#);
    app.shutdown().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_are_served() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[NO_DELAY, LEAD_TRACKING_TABLE], Providers::healthy().await).await;
    let api = Api::new(&app);
    assert_eq!(
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    eventually(Duration::from_secs(10), "ready", || async {
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    insert_proftest_lead(&client, "A", "a@mail.ru").await;
    eventually(Duration::from_secs(20), "sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    api.resend_signed("msg_metrics", &resend_event("email.delivered", "nope"))
        .await;
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "leadrelay_jobs{",
        "status=\"due\"",
        "leadrelay_job_gauges_updated_seconds",
        "leadrelay_provider_requests_total{",
        "leadrelay_provider_request_seconds_bucket{",
        "leadrelay_webhook_events_total{",
        "leadrelay_job_outcomes_total{",
        "leadrelay_listener_connected",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let spec: serde_json::Value = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for route in [
        "/webhooks/resend",
        "/webhooks/mobizon",
        "/leads/{id}/status",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(spec["paths"].get(route).is_some(), "{route}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_mobizon_status_poll_fills_in_sms_states_without_a_webhook() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute("update notification_rules set enabled = (channel = 'sms')")
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    Mock::given(method("POST"))
        .and(path("/service/message/getsmsstatus"))
        .respond_with(|request: &wiremock::Request| {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body).into_owned().collect();
            let data: Vec<serde_json::Value> = form
                .iter()
                .filter(|(k, _)| k == "ids[]")
                .map(|(_, id)| serde_json::json!({"id": id, "status": "DELIVRD", "segNum": "1", "statusUpdateTs": "2026-11-24 12:00:00"}))
                .collect();
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"code": 0, "data": data, "message": ""}))
        })
        .mount(&providers.mobizon)
        .await;
    let mut cfg = config(&db.url, &providers);
    cfg.mobizon_poll_interval = Some(Duration::from_millis(300));
    let app = start(cfg).await;
    for _ in 0..3 {
        insert_proftest_lead(&client, "A", "a@mail.ru").await;
    }
    eventually(Duration::from_secs(20), "polled states applied", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'sms' and delivery_status = 'delivered'").await == 3
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where sms_delivery_status = 'delivered'"
        )
        .await,
        3
    );
    let polls_before = providers.mobizon.received_requests().await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls_after = providers.mobizon.received_requests().await.unwrap().len();
    assert_eq!(
        polls_before, polls_after,
        "final states are not asked about again"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn with_mobizon_webhook_secret_set_a_report_needs_a_matching_sign_too() {
    use sha1::{Digest, Sha1};
    let db = fresh_db().await;
    let client = db.client().await;
    let providers = Providers::healthy().await;
    let mut cfg = config(&db.url, &providers);
    cfg.mobizon_webhook_secret = Some(leadrelay::domain::Secret::new("secret123"));
    let app = start(cfg).await;
    let api = Api::new(&app);
    let mut report = mobizon_report(77, "5001", "DELIVRD");
    let sign: String = Sha1::digest(b"77|1|2026-11-24 12:00:00|secret123")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        api.mobizon(MOBIZON_WEBHOOK_TOKEN, &report).await.status(),
        401,
        "the example's sign is wrong"
    );
    report["sign"] = serde_json::Value::String(sign);
    assert_eq!(
        api.mobizon(MOBIZON_WEBHOOK_TOKEN, &report).await.status(),
        200
    );
    assert_eq!(
        api.mobizon("wrong-token-wrong-token", &report)
            .await
            .status(),
        401,
        "the token is still needed"
    );
    assert_eq!(events(&client).await, 1);
    app.shutdown().await;
}

/// `leads` proftest leads whose emails are sent, each with the message id
/// `prefix-<job id>`; their message ids.
async fn sent_emails(client: &tokio_postgres::Client, leads: i32, prefix: &str) -> Vec<String> {
    client
        .execute(
            "update notification_rules set delay = interval '1 hour'",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into landing_leads (name, email, source)
             select 'Lead ' || g, 'lead' || g || '@mail.ru', 'proftest_main' from generate_series(1, $1) g",
            &[&leads],
        )
        .await
        .unwrap();
    client
        .query(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(),
                    provider_message_id = $1 || '-' || id
              where channel = 'email'
             returning provider_message_id",
            &[&prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Many events at once are stored in groups (one statement for many): each
/// is stored once, every redelivery is a duplicate, and each message ends in
/// its most advanced state whatever the order.
#[tokio::test]
async fn a_flood_of_concurrent_events_is_stored_once_each_and_the_best_state_wins() {
    let db = fresh_db().await;
    let client = db.client().await;
    let message_ids = sent_emails(&client, 30, "flood").await;
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let api = std::sync::Arc::new(Api::new(&app));
    let mut posts = Vec::new();
    for (m, message_id) in message_ids.iter().enumerate() {
        for kind in [
            "email.sent",
            "email.delivery_delayed",
            "email.delivered",
            "email.opened",
        ] {
            let body = resend_event(kind, message_id);
            let svix_id = format!("flood_{m}_{kind}");
            // every event twice: Svix redelivers
            posts.push((svix_id.clone(), body.clone()));
            posts.push((svix_id, body));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in (1..posts.len()).rev() {
        posts.swap(i, rng.random_range(0..=i));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (svix_id, body) in posts {
        let api = std::sync::Arc::clone(&api);
        tasks.spawn(async move {
            let response = api.resend_signed(&svix_id, &body).await;
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        });
    }
    let mut answers = std::collections::HashMap::<String, usize>::new();
    while let Some(answer) = tasks.join_next().await {
        *answers.entry(answer.unwrap()).or_default() += 1;
    }
    // A lone event is applied before its answer (or found a duplicate); the
    // groups are answered once stored in the inbox and applied right after.
    assert_eq!(answers.values().sum::<usize>(), 240, "{answers:?}");
    assert!(
        answers
            .keys()
            .all(|a| ["applied", "duplicate", "received"].contains(&a.as_str())),
        "{answers:?}"
    );
    assert!(answers.get("received") >= Some(&2), "{answers:?}");
    eventually(
        Duration::from_secs(10),
        "the stored events applied",
        || async { count(&client, "select count(*) from notification_event_inbox").await == 0 },
    )
    .await;
    assert_eq!(events(&client).await, 120);
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_events where applied_at is null or job_id is null"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs j join landing_leads l on l.id = j.lead_id
             where j.channel = 'email' and j.delivery_status = 'opened' and l.email_delivery_status = 'opened'"
        )
        .await,
        30
    );
    // and they went in groups, not one commit each
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let grouped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leadrelay_webhook_events_grouped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(grouped >= 2.0, "no group of events stored:\n{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn events_a_stopped_run_left_in_the_inbox_are_applied_by_the_next() {
    let db = fresh_db().await;
    let client = db.client().await;
    // what a run answered but did not apply before it stopped
    client
        .batch_execute(
            "update notification_rules set delay = interval '1 hour';
             insert into landing_leads (name, email, source) values ('Left', 'left@mail.ru', 'proftest_main');
             update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(),
                    provider_message_id = 'left-' || id where channel = 'email';
             insert into notification_event_inbox
               (provider, provider_event_id, event_type, provider_message_id, payload, delivery_status, received_at)
             select 'resend', 'left-' || s, 'email.' || s, provider_message_id, '{}', s, now() - interval '1 hour'
               from notification_jobs, unnest(array['sent', 'delivered']) s where channel = 'email';",
        )
        .await
        .unwrap();
    let message_id: String = client
        .query_one(
            "select provider_message_id from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    eventually(Duration::from_secs(10), "the events left applied", || async {
        count(
            &client,
            "select count(*) from notification_jobs j join landing_leads l on l.id = j.lead_id
             where j.channel = 'email' and j.delivery_status = 'delivered' and l.email_delivery_status = 'delivered'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(&client, "select count(*) from notification_event_inbox").await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_events where received_at < now() - interval '59 minutes'"
        )
        .await,
        2,
        "each event keeps the time it was received"
    );
    // with nothing left to apply, a lone event is applied before its answer
    let api = Api::new(&app);
    let opened = api
        .resend_signed("left-opened", &resend_event("email.opened", &message_id))
        .await;
    assert_eq!(
        opened.json::<serde_json::Value>().await.unwrap()["status"],
        "applied"
    );
    app.shutdown().await;
}

/// Kills the real binary with SIGKILL while a flood of events is being
/// answered, starts it again, and checks that every event answered 200 was
/// stored and ends applied: a 2xx means stored, whatever happens next.
#[tokio::test]
async fn every_event_answered_before_a_kill_is_applied_after_the_restart() {
    let db = fresh_db().await;
    let client = db.client().await;
    let message_ids = sent_emails(&client, 500, "kill").await;
    let providers = Providers::healthy().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("LISTEN_ADDR", listen.as_str())];
    let mut first = ServeProcess::start(&db.url, &providers, &env);
    let base = format!("http://{listen}");
    eventually(Duration::from_secs(20), "serve ready", || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let mut posts = Vec::new();
    for (m, message_id) in message_ids.iter().enumerate() {
        for kind in [
            "email.sent",
            "email.delivered",
            "email.opened",
            "email.clicked",
        ] {
            posts.push((format!("kill_{m}_{kind}"), resend_event(kind, message_id)));
        }
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(posts));
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let key = SigningKey::parse(RESEND_WEBHOOK_SECRET).unwrap();
    let mut posters = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (queue, answered, key, base) = (
            std::sync::Arc::clone(&queue),
            std::sync::Arc::clone(&answered),
            key.clone(),
            base.clone(),
        );
        posters.spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let Some((svix_id, body)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let timestamp = chrono::Utc::now().timestamp().to_string();
                let sent = http
                    .post(format!("{base}/webhooks/resend"))
                    .header("svix-id", &svix_id)
                    .header("svix-timestamp", &timestamp)
                    .header("svix-signature", key.signature(&svix_id, &timestamp, &body))
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => answered.lock().unwrap().push(svix_id),
                    // the process is gone: what was not answered is the
                    // provider's to deliver again
                    _ => return,
                }
            }
        });
    }
    // looked at often: the kill must come while the flood goes on
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while answered.lock().unwrap().len() < 150 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was not answered"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.kill_9();
    while posters.join_next().await.is_some() {}
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() < 2000, "the kill came after the whole flood");
    assert!(
        count(&client, "select count(*) from notification_event_inbox").await > 0,
        "the kill found no answered event waiting to be applied"
    );

    let _second = ServeProcess::start(&db.url, &providers, &env);
    eventually(
        Duration::from_secs(20),
        "the inbox applied after the restart",
        || async { count(&client, "select count(*) from notification_event_inbox").await == 0 },
    )
    .await;
    let stored: i64 = client
        .query_one(
            "select count(*) from notification_events
             where provider_event_id = any($1) and applied_at is not null and job_id is not null",
            &[&answered],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored as usize,
        answered.len(),
        "an answered event was lost"
    );
}

/// Strings a foreign mail server or an attacker might put in a report.
fn hostile_string() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        "[a-z]{0,12}",
        Just("\u{0}".to_string()),
        Just("550 5.1.1 \u{0}user unknown\u{0}".to_string()),
        "\\PC{0,24}",
        Just("x".repeat(40_000)),
        Just("\u{202e}\u{200b}<script>{{ '%'}}</script>".to_string()),
    ]
}

/// JSON values with hostile strings, extreme numbers and nesting.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        hostile_string().prop_map(serde_json::Value::from),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!(-1e308)),
        Just(serde_json::json!(9_223_372_036_854_775_808u64)),
        Just(serde_json::json!(i64::MIN)),
        Just(serde_json::json!(5e-324)),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(hostile_string(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(serde_json::json!("bottom\u{0}"), |v, _| {
        serde_json::json!([v])
    })
}

#[tokio::test]
async fn signed_hostile_json_never_gets_a_server_error_and_every_recognised_event_is_stored_once() {
    use proptest::strategy::{Strategy, ValueTree};
    let db = fresh_db().await;
    let client = db.client().await;
    let providers = Providers::healthy().await;
    providers.mount_mobizon_statuses("DELIVRD").await;
    let app = start(config(&db.url, &providers)).await;
    let api = Api::new(&app);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let cases = (hostile_string(), hostile_value(), 0usize..4);
    let mut recognised = Vec::new();
    for i in 0..120 {
        let (text, extra, kind) = cases.new_tree(&mut runner).unwrap().current();
        let extra = if i % 17 == 0 { nested(100) } else { extra };
        // A Resend bounce whose text and extra fields are hostile.
        let svix_id = format!("msg_hostile_{i}");
        let event_type = [
            "email.bounced",
            "email.delivered",
            "email.opened",
            "email.delivery_delayed",
        ][kind];
        let sms_status = ["DELIVRD", "UNDELIV", "EXPIRED", "ACCEPTD"][kind];
        let body = serde_json::to_vec(&serde_json::json!({
            "type": event_type,
            "created_at": "2026-11-24T12:00:00.000Z",
            "data": {"email_id": format!("em-{i}\u{0}"), "to": [text.clone()], "subject": text.clone(),
                     "bounce": {"type": "Permanent", "subType": "General", "message": text.clone()},
                     "extra": extra.clone()}
        }))
        .unwrap();
        for round in 0..2 {
            let status = api.resend_signed(&svix_id, &body).await.status();
            assert_eq!(status, 200, "resend case {i}, round {round}");
        }
        recognised.push(("resend", svix_id));
        // A Mobizon report whose id, text and extra fields are hostile.
        let event_id = format!("ev-{i}\u{0}");
        let report = serde_json::json!({
            "eventId": event_id, "eventType": "sms-delivery-report", "eventCreateTs": "2026-11-24 12:00:00",
            "webhookId": 1, "attempt": 1,
            "data": {"campaignId": 77, "messageId": format!("m-{i}"), "segNum": 1, "statusUpdateTs": "2026-11-24 12:00:00",
                     "status": sms_status, "to": text, "extra": extra},
            "sign": "x"
        });
        for round in 0..2 {
            let status = api.mobizon(MOBIZON_WEBHOOK_TOKEN, &report).await.status();
            assert!(
                status == 200 || status == 413,
                "mobizon case {i}, round {round}: {status}"
            );
            if status == 413 {
                break; // over the body limit: refused whole, nothing stored
            }
            if round == 1 {
                recognised.push((
                    "mobizon",
                    format!("webhook-{}", event_id.replace('\u{0}', "\u{FFFD}")),
                ));
            }
        }
    }
    // Bodies serde cannot read at all (a lone surrogate, numbers past f64,
    // nesting past its limit) are the sender's fault: 4xx, never 5xx.
    for (i, body) in [
        r#"{"type":"email.delivered","created_at":"x","data":{"email_id":"a","s":"\ud800"}}"#
            .to_string(),
        r#"{"type":"email.delivered","created_at":"x","data":{"email_id":"a","n":1e400}}"#
            .to_string(),
        format!(
            r#"{{"type":"email.delivered","data":{{"email_id":"a","deep":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
    ]
    .iter()
    .enumerate()
    {
        let status = api
            .resend_signed(&format!("msg_unreadable_{i}"), body.as_bytes())
            .await
            .status();
        assert!(status.is_client_error(), "unreadable {i}: {status}");
    }
    for (provider, id) in recognised {
        let n = client
            .query_one(
                "select count(*) from notification_events where provider = $1 and provider_event_id = $2",
                &[&provider, &id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(n, 1, "{provider} {id:?} stored once");
    }
    let nul: i64 = count(
        &client,
        "select count(*) from notification_events where payload::text like '%\\u0000%'",
    )
    .await;
    assert_eq!(nul, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_the_database_refuses_for_its_data_gets_422_and_an_outage_gets_503() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    // A constraint the body breaks (class 23): refused as the sender's fault.
    client
        .batch_execute("alter table notification_events add constraint no_tests check (event_type <> 'email.clicked')")
        .await
        .unwrap();
    let response = api
        .resend_signed("msg_refused", &resend_event("email.clicked", "x"))
        .await;
    assert_eq!(response.status(), 422);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("no_tests") && !text.contains("SQLSTATE"),
        "{text}"
    );
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"outcome="unstorable""#), "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn with_the_database_really_down_a_webhook_still_gets_503() {
    let cluster = crate::harness::new_cluster();
    crate::harness::prepare_database(&cluster, "down").await;
    let url = cluster.url("down");
    let providers = Providers::healthy().await;
    let app = start(config(&url, &providers)).await;
    let api = Api::new(&app);
    assert_eq!(
        api.resend_signed("msg_up", &resend_event("email.delivered", "x"))
            .await
            .status(),
        200
    );
    cluster
        .stop(leadrelay::store::cluster::StopMode::Immediate)
        .unwrap();
    let response = api
        .resend_signed("msg_down", &resend_event("email.delivered", "y"))
        .await;
    assert_eq!(
        response.status(),
        503,
        "the provider must deliver it again later"
    );
    cluster.restart().unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = api
            .resend_signed("msg_down", &resend_event("email.delivered", "y"))
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "stored once the database is back");
    app.shutdown().await;
}

#[tokio::test]
async fn a_suppressed_email_ends_in_a_final_failure_with_its_reason_and_suppression_list_events_are_kept()
 {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[], Providers::healthy().await).await;
    let api = Api::new(&app);
    let lead = insert_proftest_lead(&client, "Suppressed", "gone@mail.ru").await;
    client
        .execute(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'em-supp' where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap();
    let response = api
        .resend_signed("msg_supp", &resend_event("email.suppressed", "em-supp"))
        .await;
    assert_eq!(response.status(), 200);
    let row = client
        .query_one(
            "select j.delivery_status, j.last_error, l.email_delivery_status, l.email_error from notification_jobs j join landing_leads l on l.id = j.lead_id where j.provider_message_id = 'em-supp'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "suppressed");
    assert!(row.get::<_, String>(1).contains("suppression list"));
    assert_eq!(row.get::<_, String>(2), "suppressed");
    assert!(row.get::<_, String>(3).contains("suppression list"));
    // a later delivered report does not move it back
    api.resend_signed("msg_supp_late", &resend_event("email.delivered", "em-supp"))
        .await;
    assert_eq!(
        count(&client, "select count(*) from notification_jobs where provider_message_id = 'em-supp' and delivery_status = 'suppressed'").await,
        1
    );
    for (id, t) in [
        ("msg_sa", "suppression.added"),
        ("msg_sr", "suppression.removed"),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({"type": t, "created_at": "2026-11-24T12:00:00Z", "data": {"id": "s1", "email": "gone@mail.ru"}})).unwrap();
        assert_eq!(api.resend_signed(id, &body).await.status(), 200, "{t}");
    }
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains(r#"outcome="unknown_type""#),
        "known types are not counted as unknown"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_mobizon_report_writes_only_our_words_into_the_error_columns() {
    let db = fresh_db().await;
    let client = db.client().await;
    let providers = Providers::healthy().await;
    providers.mount_mobizon_statuses("UNDELIV").await;
    let app = start(config(&db.url, &providers)).await;
    let api = Api::new(&app);
    let lead = insert_proftest_lead(&client, "Forged", "f@mail.ru").await;
    client
        .execute(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = '7001' where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    let mut report = mobizon_report(91, "7001", "UNDELIV");
    report["data"]["bounce"] =
        serde_json::json!({"message": "Call +7 700 000 0000 to unlock your account"});
    report["data"]["failed"] = serde_json::json!({"reason": "visit evil.example"});
    assert_eq!(
        api.mobizon(MOBIZON_WEBHOOK_TOKEN, &report).await.status(),
        200
    );
    let (job_error, lead_error): (String, String) = {
        let row = client
            .query_one("select j.last_error, l.sms_error from notification_jobs j join landing_leads l on l.id = j.lead_id where j.provider_message_id = '7001'", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(job_error, "Mobizon: the SMS was not delivered (UNDELIV)");
    assert_eq!(lead_error, job_error);
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = fresh_db().await;
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let mut slow = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .unwrap();
    slow.write_all(b"POST /webhooks/resend HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // The server closes the connection (perhaps after a 408) once the
    // header-read timeout passes; nothing more is ever sent by us.
    let closed = tokio::time::timeout(
        leadrelay::serve::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        async {
            loop {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        },
    )
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= leadrelay::serve::HEADER_READ_TIMEOUT - Duration::from_secs(1));
    // and the server still serves everyone else
    let health = reqwest::get(format!("http://{}/healthz", app.local_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_failure_report_mobizon_does_not_confirm_changes_nothing_and_one_it_cannot_confirm_now_is_delivered_again()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    let providers = Providers::healthy().await;
    // Mobizon itself says the SMS was delivered.
    providers.mount_mobizon_statuses("DELIVRD").await;
    let app = start(config(&db.url, &providers)).await;
    let api = Api::new(&app);
    let lead = insert_proftest_lead(&client, "Delivered", "d@mail.ru").await;
    client
        .execute(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = '7100', delivery_status = 'delivered' where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    // Someone with the URL posts a failure for it.
    let forged = mobizon_report(501, "7100", "UNDELIV");
    assert_eq!(
        api.mobizon(MOBIZON_WEBHOOK_TOKEN, &forged).await.status(),
        200
    );
    let row = client
        .query_one(
            "select j.delivery_status, j.last_error, l.sms_delivery_status, l.sms_error from notification_jobs j join landing_leads l on l.id = j.lead_id where j.provider_message_id = '7100'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_ne!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("undelivered")
    );
    assert_eq!(row.get::<_, Option<String>>(3), None);
    assert_eq!(
        count(&client, "select count(*) from notification_events where provider_event_id = 'webhook-501' and delivery_status is null").await,
        1,
        "the report is kept for audit, without a state"
    );
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"outcome="unconfirmed""#), "{metrics}");
    app.shutdown().await;

    // Mobizon cannot be asked: 503, so that Mobizon delivers the report again.
    let unreachable = Providers::healthy().await;
    let app = start(config(&db.url, &unreachable)).await;
    let api = Api::new(&app);
    assert_eq!(
        api.mobizon(
            MOBIZON_WEBHOOK_TOKEN,
            &mobizon_report(502, "7100", "EXPIRED")
        )
        .await
        .status(),
        503
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_events where provider_event_id = 'webhook-502'"
        )
        .await,
        0
    );
    app.shutdown().await;
}
