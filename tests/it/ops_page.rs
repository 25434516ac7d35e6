//! The ops page, in a real browser (Debian's Chromium driven by Playwright),
//! and over plain HTTP for its access rules.

use std::process::Command;
use std::time::Duration;

use crate::app::{
    ADMIN_TOKEN, HOUR_DELAY, LEAD_TRACKING_TABLE, NO_DELAY, Providers, RESEND_WEBHOOK_SECRET,
    TestApp, config, count, eventually, lead_job, start, unfinished,
};
use crate::harness::{fresh_db, insert_as_landing, insert_incident_leads, insert_proftest_lead};

const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

#[tokio::test]
async fn a_person_signs_in_and_sees_leads_failures_and_the_funnel_in_chromium() {
    let TestApp {
        db: _db,
        client,
        providers: _providers,
        app,
    } = TestApp::start(&[NO_DELAY, LEAD_TRACKING_TABLE], Providers::healthy().await).await;
    let leads = insert_incident_leads(&client).await;
    insert_proftest_lead(
        &client,
        "<script>window.__leadrelay_xss=1</script>",
        "x@mail.ru",
    )
    .await;
    eventually(Duration::from_secs(20), "all sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    // Delivery reports: all delivered but Алия's email, which bounced.
    report_email_outcomes(&client, &app, &leads).await;

    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ops-page.png");
    run_browser("ops.mjs", &app, screenshot, "{}").await;
    app.shutdown().await;
}

/// Delivery reports through the signed webhook: every email delivered but
/// the third lead's, which bounced (with Resend's reason).
async fn report_email_outcomes(
    client: &tokio_postgres::Client,
    app: &leadrelay::serve::Application,
    leads: &[uuid::Uuid],
) {
    let key = leadrelay::ingest::svix::SigningKey::parse(RESEND_WEBHOOK_SECRET).unwrap();
    let http = reqwest::Client::new();
    for (i, lead) in leads.iter().enumerate() {
        let email_id: String = client
            .query_one("select provider_message_id from notification_jobs where lead_id = $1 and channel = 'email'", &[lead])
            .await
            .unwrap()
            .get(0);
        let event = if i == 2 {
            serde_json::json!({"type": "email.bounced", "created_at": chrono::Utc::now().to_rfc3339(),
                "data": {"email_id": email_id, "bounce": {"message": "Mailbox does not exist", "type": "Permanent"}}})
        } else {
            serde_json::json!({"type": "email.delivered", "created_at": chrono::Utc::now().to_rfc3339(), "data": {"email_id": email_id}})
        };
        let body = serde_json::to_vec(&event).unwrap();
        let ts = chrono::Utc::now().timestamp().to_string();
        let id = format!("msg_ops_{i}_{lead}");
        let response = http
            .post(format!("http://{}/webhooks/resend", app.local_addr()))
            .header("svix-id", &id)
            .header("svix-timestamp", &ts)
            .header("svix-signature", key.signature(&id, &ts, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Runs a script of `tests/browser` in Chromium against `app`; it prints
/// what it saw and fails on any unmet expectation.
async fn run_browser(
    script: &'static str,
    app: &leadrelay::serve::Application,
    screenshot: &'static str,
    ids: &str,
) {
    assert!(
        std::path::Path::new(BROWSER_DIR)
            .join("node_modules/playwright-core")
            .exists(),
        "run scripts/test (it installs Chromium and playwright-core), or: apt-get install chromium && (cd tests/browser && npm ci)"
    );
    let base = format!("http://{}", app.local_addr());
    let ids = ids.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(BROWSER_DIR)
            .env("CONSOLE_IDS", ids)
            .args([script, &base, ADMIN_TOKEN, screenshot])
            .output()
            .expect("node is installed")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(screenshot).unwrap().len() > 10_000,
        "a screenshot for people to look at"
    );
}

#[tokio::test]
async fn an_operator_finds_a_lead_reads_its_timeline_and_acts_on_it_in_chromium() {
    let TestApp {
        db: _db,
        client,
        providers,
        app,
    } = TestApp::start(&[NO_DELAY], Providers::healthy().await).await;
    let leads = insert_incident_leads(&client).await;
    eventually(Duration::from_secs(20), "all sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    report_email_outcomes(&client, &app, &leads).await;
    eventually(Duration::from_secs(10), "the reports applied", || async {
        count(
            &client,
            "select count(*) from notification_events where job_id is not null",
        )
        .await
            == 4
    })
    .await;
    // Leads whose messages wait an hour: one to search for and cancel, one
    // whose email failed (to retry), one to forge forms against, one hostile.
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let search_lead = insert_as_landing(
        &client,
        Some("Сауле"),
        Some("saule@mail.ru"),
        Some("+7 (705) 904-44-67"),
        Some("proftest_main"),
        None,
    )
    .await;
    let failed_lead = insert_as_landing(
        &client,
        Some("Данияр"),
        Some("daniyar@mail.ru"),
        Some("87017778899"),
        Some("proftest_main"),
        None,
    )
    .await;
    let forgery_lead = insert_as_landing(
        &client,
        Some("Асель"),
        Some("asel@mail.ru"),
        Some("87015556677"),
        Some("proftest_main"),
        None,
    )
    .await;
    let hostile_lead = insert_as_landing(
        &client,
        Some("<img src=x onerror=window.__leadrelay_xss=1>"),
        Some("h@mail.ru"),
        Some("87012223344"),
        Some("proftest_main"),
        None,
    )
    .await;
    // a name that would read backwards, and a queue of 500 waiting leads
    let rtl_lead = insert_as_landing(
        &client,
        Some("\u{202E}txt.exe Алихан"),
        Some("rtl@mail.ru"),
        Some("87013334400"),
        Some("proftest_main"),
        None,
    )
    .await;
    client
        .batch_execute(
            "insert into landing_leads (name, email, phone, source)
             select 'Queue ' || g, 'queue' || g || '@mail.ru', '8701' || lpad(g::text, 7, '0'), 'proftest_queue'
             from generate_series(1, 500) g;
             -- arrived yesterday, still waiting: out of the last-50 list, in the queue
             update landing_leads set created_at = now() - interval '1 day' where source = 'proftest_queue';",
        )
        .await
        .unwrap();
    // the bounced lead's address, corrected: the page sends its email again
    client
        .execute(
            "update landing_leads set email = 'alia.fixed@mail.ru' where id = $1",
            &[&leads[2]],
        )
        .await
        .unwrap();
    let (failed_job, _) = lead_job(&client, failed_lead, "email").await;
    client
        .execute(
            "update notification_jobs set status = 'failed', finished_at = now(), attempts = 8, last_error = 'Resend 401: API key is invalid' where id = $1",
            &[&failed_job],
        )
        .await
        .unwrap();
    let (cancel_job, _) = lead_job(&client, search_lead, "sms").await;
    let (forgery_job, _) = lead_job(&client, forgery_lead, "email").await;
    let ids = serde_json::json!({
        "searchLead": search_lead, "cancelJob": cancel_job,
        "bouncedLead": leads[2], "invalidLead": leads[1],
        "failedLead": failed_lead, "failedJob": failed_job,
        "forgeryLead": forgery_lead, "forgeryJob": forgery_job,
        "hostileLead": hostile_lead, "rtlLead": rtl_lead,
    });
    let emails_before = providers.emails().await.len();
    let sms_before = providers.sms().await.len();
    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ops-console.png");
    run_browser("console.mjs", &app, screenshot, &ids.to_string()).await;

    // what the page did, seen from the database and the stand-in providers
    eventually(
        Duration::from_secs(10),
        "the retried email sent",
        || async { lead_job(&client, failed_lead, "email").await.1 == "sent" },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the bounced email sent again",
        || async { count(&client, &format!("select count(*) from notification_jobs where lead_id = '{}' and channel = 'email' and status = 'sent' and delivery_status is null", leads[2])).await == 1 },
    )
    .await;
    let emails = providers.emails().await;
    assert_eq!(
        emails.len(),
        emails_before + 2,
        "the retry and the send-again, once each"
    );
    let to: Vec<serde_json::Value> = emails[emails_before..]
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["to"].clone())
        .collect();
    assert!(
        to.contains(&serde_json::json!(["daniyar@mail.ru"])),
        "{to:?}"
    );
    assert!(
        to.contains(&serde_json::json!(["alia.fixed@mail.ru"])),
        "{to:?}"
    );
    client
        .batch_execute("delete from landing_leads where source = 'proftest_queue'")
        .await
        .unwrap();
    assert_eq!(lead_job(&client, search_lead, "sms").await.1, "cancelled");
    assert_eq!(
        lead_job(&client, forgery_lead, "email").await.1,
        "scheduled"
    );
    client
        .batch_execute("update notification_jobs set due_at = now() - interval '1 second' where status = 'scheduled' and channel = 'sms' or status = 'cancelled'; select promote_due_notification_jobs();")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the other SMS sent", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'sms' and status in ('scheduled', 'due', 'sending')").await == 0
    })
    .await;
    let sms = providers.sms().await;
    assert!(
        sms[sms_before..]
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("77059044467")),
        "the cancelled SMS was never sent"
    );
    assert_eq!(
        count(&client, "select count(*) from ops_audit where action in ('retry', 'cancel', 'send_again') and cardinality(changed_job_ids) = 1").await,
        3,
        "the two actions, audited; the forged ones never reached the database"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from ops_sessions where revoked_at is not null"
        )
        .await,
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_ops_page_is_closed_without_the_token_and_open_with_it() {
    let db = fresh_db().await;
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{base}/ops"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("action=/ops/login") && !page.contains("Last leads"));
    let wrong = http
        .post(format!("{base}/ops/login"))
        .form(&[("token", "nope-nope-nope-nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = http
        .post(format!("{base}/ops/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 303);
    let cookie = right
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(ADMIN_TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap();
    let page = http
        .get(format!("{base}/ops"))
        .header("cookie", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Last leads"));
    let forged = http
        .get(format!("{base}/ops"))
        .header("cookie", "leadrelay_ops=0000")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!forged.contains("Last leads"));
    let bearer = http
        .get(format!("{base}/ops"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(bearer.contains("Funnel"));
    app.shutdown().await;
}
