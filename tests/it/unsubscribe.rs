//! One-click unsubscribe (RFC 8058) end to end: the headers every email
//! carries, the link in the body, the mail client's POST and the page's
//! button, what they suppress, and what a bad link cannot do.

use std::time::Duration;

use crate::app::{
    HOUR_DELAY, NO_DELAY, Providers, config, count, eventually, lead_job, start, unfinished,
};
use crate::harness::{fresh_db, insert_proftest_lead_with_phone};

/// The email requests Resend's stand-in received, as JSON.
async fn sent_emails(providers: &Providers) -> Vec<serde_json::Value> {
    providers
        .emails()
        .await
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The path of the link in `List-Unsubscribe: <https://…/unsubscribe/…>`.
fn link_path(email: &serde_json::Value) -> String {
    let header = email["headers"]["List-Unsubscribe"]
        .as_str()
        .expect("List-Unsubscribe");
    let url = header.trim_start_matches('<').trim_end_matches('>');
    assert!(url.starts_with(crate::app::PUBLIC_URL), "{url}");
    url[crate::app::PUBLIC_URL.len()..].to_string()
}

async fn post(app: &leadrelay::serve::Application, path: &str, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", app.local_addr()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(app: &leadrelay::serve::Application, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", app.local_addr()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn suppressed(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(
            "select channel, recipient, reason from notification_suppressions where lifted_at is null order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_one_click_post_suppresses_the_address_and_its_scheduled_and_next_emails_are_cancelled_before_any_request()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let first = insert_proftest_lead_with_phone(
        &client,
        "Айгерим",
        "Aigerim.Test0@gmail.com",
        "+7 705 400 00 01",
    )
    .await;
    eventually(Duration::from_secs(15), "the first email sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let emails = sent_emails(&providers).await;
    assert_eq!(emails.len(), 1);
    let email = &emails[0];
    assert_eq!(
        email["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    let path = link_path(email);
    let url = format!("{}{path}", crate::app::PUBLIC_URL);
    // the link in the body too: the seeded template carries it
    assert!(
        email["html"]
            .as_str()
            .unwrap()
            .contains(&format!("href=\"{url}\"")),
        "{email}"
    );
    assert!(email["text"].as_str().unwrap().contains(&url), "{email}");
    assert!(
        email["html"]
            .as_str()
            .unwrap()
            .contains("Отписаться от писем")
    );

    // another lead of the same person, its email scheduled for later
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let scheduled = insert_proftest_lead_with_phone(
        &client,
        "Айгерим",
        "aigerim.test0+2@gmail.com",
        "+7 705 400 00 02",
    )
    .await;

    // the mail client's one-click: the exact body RFC 8058 prescribes
    let (status, _) = post(&app, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200);
    let (status, _) = post(&app, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200, "a replay is harmless");
    assert_eq!(
        suppressed(&client).await,
        vec![(
            "email".into(),
            "aigerimtest0@gmail.com".into(),
            "unsubscribed".into()
        )]
    );
    let by_lead: uuid::Uuid = client
        .query_one("select lead_id from notification_suppressions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(by_lead, first);

    // the scheduled email comes due: cancelled before its request
    client
        .execute(
            "update notification_jobs set due_at = now() where lead_id = $1 and status = 'scheduled'",
            &[&scheduled],
        )
        .await
        .unwrap();
    client.batch_execute(NO_DELAY).await.unwrap();
    let next = insert_proftest_lead_with_phone(
        &client,
        "Айгерим",
        "AIGERIM.TEST0@GMAIL.COM",
        "+7 705 400 00 03",
    )
    .await;
    eventually(Duration::from_secs(15), "both claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    for lead in [scheduled, next] {
        let row = client
            .query_one(
                "select status, cancelled_by from notification_jobs where lead_id = $1 and channel = 'email'",
                &[&lead],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
            ("cancelled".to_string(), Some("suppressed".to_string()))
        );
        assert_eq!(
            lead_job(&client, lead, "sms").await.1,
            "sent",
            "the phone was not asked about"
        );
    }
    assert_eq!(providers.emails().await.len(), 1, "no second email");
    app.shutdown().await;
}

#[tokio::test]
async fn a_forged_cut_or_other_recipients_link_gets_400_and_changes_nothing_and_the_page_can_stop_the_sms_too()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let lead =
        insert_proftest_lead_with_phone(&client, "Алия", "aliya@mail.ru", "+7 702 765 43 21").await;
    eventually(Duration::from_secs(15), "sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let path = link_path(&sent_emails(&providers).await[0]);
    let token = path.trim_start_matches("/unsubscribe/").to_string();
    let (payload, mac) = token.split_once('.').unwrap();
    // a link for another recipient, signed with another deployment's key
    let other =
        leadrelay::messages::unsubscribe::Links::new(b"someone else's secret, long enough", None)
            .token(&leadrelay::messages::unsubscribe::Target {
                lead,
                channel: leadrelay::domain::Channel::Email,
                recipient: "victim@mail.ru".into(),
            });
    let swapped = format!("{}.{mac}", other.split_once('.').unwrap().0);
    for bad in [
        format!("/unsubscribe/{}", &token[..token.len() - 4]),
        format!("/unsubscribe/{payload}"),
        format!("/unsubscribe/{other}"),
        format!("/unsubscribe/{swapped}"),
        format!("/unsubscribe/{}", "A".repeat(900)),
        "/unsubscribe/%00%3C%3E".to_string(),
    ] {
        let (status, body) = post(&app, &bad, "List-Unsubscribe=One-Click").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("Ничего не изменено"), "{body}");
        assert_eq!(get(&app, &bad).await.0, 400, "{bad}");
    }
    assert_eq!(
        count(&client, "select count(*) from notification_suppressions").await,
        0
    );

    // the page: one button, and the choice to stop the SMS to the lead's phone
    let (status, page) = get(&app, &path).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<button") && page.contains("a***@mail.ru"),
        "{page}"
    );
    assert!(
        page.contains("name=sms") && page.contains("+7 702 *** ** 21"),
        "{page}"
    );
    assert_eq!(
        count(&client, "select count(*) from notification_suppressions").await,
        0,
        "a GET changes nothing"
    );
    let (status, done) = post(&app, &path, "sms=on&confirm=1").await;
    assert_eq!(status, 200);
    assert!(done.contains("Вы отписаны"), "{done}");
    assert_eq!(
        suppressed(&client).await,
        vec![
            (
                "email".into(),
                "aliya@mail.ru".into(),
                "unsubscribed".into()
            ),
            ("sms".into(), "77027654321".into(), "unsubscribed".into())
        ]
    );
    let (_, again) = get(&app, &path).await;
    assert!(again.contains("Вы уже отписаны"), "{again}");
    // an oversized body is refused
    let (status, _) = post(&app, &path, &"x".repeat(5000)).await;
    assert_eq!(status, 413);
    app.shutdown().await;
}

#[tokio::test]
async fn a_rule_marked_transactional_sends_its_email_without_the_headers_or_the_link() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute(
            "update notification_rules set params = params || '{\"transactional\": true}' where channel = 'email'",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    insert_proftest_lead_with_phone(&client, "Ерлан", "erlan@mail.ru", "+7 777 111 22 33").await;
    eventually(Duration::from_secs(15), "sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let email = &sent_emails(&providers).await[0];
    assert!(email.get("headers").is_none(), "{email}");
    assert!(
        !email["html"].as_str().unwrap().contains("unsubscribe"),
        "{email}"
    );
    app.shutdown().await;
}
