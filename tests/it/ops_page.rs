//! The ops page, in a real browser (Debian's Chromium driven by Playwright),
//! and over plain HTTP for its access rules.

use std::process::Command;
use std::time::Duration;

use crate::app::{
    ADMIN_TOKEN, LEAD_TRACKING_TABLE, NO_DELAY, Providers, RESEND_WEBHOOK_SECRET, config,
    eventually, start, unfinished,
};
use crate::harness::{fresh_db, insert_incident_leads, insert_proftest_lead};

const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

#[tokio::test]
async fn a_person_signs_in_and_sees_leads_failures_and_the_funnel_in_chromium() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
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
    let key = leadrelay::ingest::svix::SigningKey::parse(RESEND_WEBHOOK_SECRET).unwrap();
    let http = reqwest::Client::new();
    for (i, lead) in leads.iter().enumerate() {
        let email_id: String = client
            .query_one("select provider_message_id from notification_jobs where lead_id = $1 and channel = 'email'", &[lead])
            .await
            .unwrap()
            .get(0);
        let kind = if i == 2 {
            "email.bounced"
        } else {
            "email.delivered"
        };
        let body = serde_json::to_vec(&serde_json::json!({"type": kind, "created_at": chrono::Utc::now().to_rfc3339(), "data": {"email_id": email_id}})).unwrap();
        let ts = chrono::Utc::now().timestamp().to_string();
        let id = format!("msg_ops_{i}");
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

    assert!(
        std::path::Path::new(BROWSER_DIR)
            .join("node_modules/playwright-core")
            .exists(),
        "run scripts/test (it installs Chromium and playwright-core), or: apt-get install chromium && (cd tests/browser && npm ci)"
    );
    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ops-page.png");
    let base = format!("http://{}", app.local_addr());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(BROWSER_DIR)
            .args(["ops.mjs", &base, ADMIN_TOKEN, screenshot])
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
