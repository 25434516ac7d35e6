//! The suppression list end to end: the providers' reports fill it (a hard
//! bounce, a complaint; never a soft bounce), operators fill and lift it
//! from the CLI, and the claim obeys it before any request, whichever path
//! made the job due and however many `serve` processes claim at once.

use std::time::Duration;

use crate::app::{
    NO_DELAY, Providers, ServeProcess, config, count, eventually, lead_job,
    leadrelay_cli as leadrelay, start, unfinished,
};
use crate::harness::{fresh_db, insert_proftest_lead_with_phone};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Posts a Resend event to `app`; it must be taken.
async fn report(app: &leadrelay::serve::Application, svix_id: &str, event: serde_json::Value) {
    let answer = crate::app::post_resend_event(app, svix_id, &event).await;
    assert!(answer.status().is_success(), "{}", answer.status());
}

fn event(event_type: &str, email_id: &str, bounce_type: Option<&str>) -> serde_json::Value {
    let mut data = serde_json::json!({"email_id": email_id, "to": ["someone@mail.ru"]});
    if let Some(kind) = bounce_type {
        data["bounce"] = serde_json::json!({"type": kind, "subType": "General", "message": "550 5.1.1 no such user"});
    }
    serde_json::json!({"type": event_type, "created_at": chrono::Utc::now().to_rfc3339(), "data": data})
}

async fn sent_email_id(client: &tokio_postgres::Client, lead: uuid::Uuid) -> String {
    client
        .query_one(
            "select provider_message_id from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0)
}

async fn suppressions(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "select recipient, reason from notification_suppressions where lifted_at is null order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_hard_bounce_and_a_complaint_suppress_a_soft_bounce_does_not_and_the_next_lead_is_cancelled_before_its_request()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let leads = [
        ("Bounced", "gone.away@gmail.com", "+7 705 100 00 01"),
        ("Complained", "angry@mail.ru", "+7 705 100 00 02"),
        ("Delayed", "slow@mail.ru", "+7 705 100 00 03"),
        ("Transient", "full.box@mail.ru", "+7 705 100 00 04"),
    ];
    let mut ids = Vec::new();
    for (name, email, phone) in leads {
        ids.push(insert_proftest_lead_with_phone(&client, name, email, phone).await);
    }
    eventually(Duration::from_secs(15), "the first four sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let emails_before = providers.emails().await.len();
    report(
        &app,
        "msg_hard",
        event(
            "email.bounced",
            &sent_email_id(&client, ids[0]).await,
            Some("Permanent"),
        ),
    )
    .await;
    report(
        &app,
        "msg_spam",
        event(
            "email.complained",
            &sent_email_id(&client, ids[1]).await,
            None,
        ),
    )
    .await;
    report(
        &app,
        "msg_delayed",
        event(
            "email.delivery_delayed",
            &sent_email_id(&client, ids[2]).await,
            None,
        ),
    )
    .await;
    report(
        &app,
        "msg_soft",
        event(
            "email.bounced",
            &sent_email_id(&client, ids[3]).await,
            Some("Transient"),
        ),
    )
    .await;
    assert_eq!(
        suppressions(&client).await,
        vec![
            ("goneaway@gmail.com".to_string(), "hard_bounce".to_string()),
            ("angry@mail.ru".to_string(), "complained".to_string())
        ]
    );

    // the next lead with the bounced address, spelled otherwise
    let again = insert_proftest_lead_with_phone(
        &client,
        "Again",
        " Gone.Away+test@googlemail.com ",
        "+7 705 100 00 05",
    )
    .await;
    let soft_again =
        insert_proftest_lead_with_phone(&client, "Soft", "full.box@mail.ru", "+7 705 100 00 06")
            .await;
    eventually(
        Duration::from_secs(15),
        "the next leads claimed",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let row = client
        .query_one(
            "select j.status, j.cancelled_by, j.last_error, l.email_error
             from notification_jobs j join landing_leads l on l.id = j.lead_id
             where j.lead_id = $1 and j.channel = 'email'",
            &[&again],
        )
        .await
        .unwrap();
    let (status, by, error, mirrored): (String, Option<String>, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (status.as_str(), by.as_deref()),
        ("cancelled", Some("suppressed"))
    );
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("the address bounced"),
        "{error:?}"
    );
    assert_eq!(mirrored, error, "the reason is mirrored onto the lead");
    assert_eq!(
        lead_job(&client, again, "sms").await.1,
        "sent",
        "the phone is not suppressed"
    );
    assert_eq!(
        lead_job(&client, soft_again, "email").await.1,
        "sent",
        "a soft bounce suppresses nothing"
    );
    assert_eq!(
        providers.emails().await.len(),
        emails_before + 1,
        "only the soft-bounced address got its email"
    );

    // a retry passes the same gate: still refused
    let (job, _) = lead_job(&client, again, "email").await;
    let retried = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(retried.status.success(), "{}", text(&retried));
    eventually(Duration::from_secs(15), "the retry claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(lead_job(&client, again, "email").await.1, "cancelled");
    assert_eq!(providers.emails().await.len(), emails_before + 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_operator_suppresses_and_lifts_from_the_cli_with_a_reason_and_an_audit() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // bad input changes nothing
    for args in [
        &[
            "suppress",
            "--email",
            "not an address",
            "--reason",
            "asked by phone",
        ][..],
        &[
            "suppress",
            "--phone",
            "+7 (476) 123-45-6",
            "--reason",
            "asked by phone",
        ],
        &["suppress", "--email", "a@mail.ru", "--reason", "  "],
        &[
            "suppress",
            "--email",
            "a@mail.ru",
            "--phone",
            "87051234567",
            "--reason",
            "x",
        ],
        &["suppress", "--reason", "x"],
    ] {
        let out = leadrelay(&db.url, args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
    }
    assert_eq!(
        count(&client, "select count(*) from notification_suppressions").await,
        0
    );
    assert_eq!(count(&client, "select count(*) from ops_audit").await, 0);

    let out = leadrelay(
        &db.url,
        &[
            "suppress",
            "--phone",
            "8 (705) 200-00-01",
            "--reason",
            "asked by phone, ticket 42",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("suppressed: no SMS goes"),
        "{}",
        text(&out)
    );
    let again = leadrelay(
        &db.url,
        &["suppress", "--phone", "+77052000001", "--reason", "twice"],
    );
    assert!(
        text(&again).contains("already suppressed since"),
        "{}",
        text(&again)
    );

    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let lead =
        insert_proftest_lead_with_phone(&client, "Quiet", "quiet@mail.ru", "+7 705 200 00 01")
            .await;
    eventually(Duration::from_secs(15), "claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(lead_job(&client, lead, "sms").await.1, "cancelled");
    assert_eq!(lead_job(&client, lead, "email").await.1, "sent");
    assert!(providers.sms().await.is_empty());
    let status = leadrelay(&db.url, &["status", "quiet@mail.ru"]);
    assert!(
        text(&status).contains("suppressed sms: operator since"),
        "{}",
        text(&status)
    );
    assert!(
        text(&status).contains("asked by phone, ticket 42"),
        "{}",
        text(&status)
    );

    let lifted = leadrelay(
        &db.url,
        &[
            "unsuppress",
            "--phone",
            "87052000001",
            "--reason",
            "wants the SMS again",
        ],
    );
    assert!(lifted.status.success(), "{}", text(&lifted));
    assert!(
        text(&lifted).contains("lifted (it was operator)"),
        "{}",
        text(&lifted)
    );
    // what was cancelled stays cancelled; a new lead gets its SMS
    let next =
        insert_proftest_lead_with_phone(&client, "Back", "back@mail.ru", "+7 705 200 00 01").await;
    eventually(Duration::from_secs(15), "claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(lead_job(&client, lead, "sms").await.1, "cancelled");
    assert_eq!(lead_job(&client, next, "sms").await.1, "sent");
    let audit: Vec<(String, String)> = client
        .query("select actor, action from ops_audit order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    assert_eq!(
        audit,
        vec![
            (who.clone(), "suppress".to_string()),
            (who.clone(), "suppress".to_string()),
            (who, "unsuppress".to_string())
        ]
    );
    let none = leadrelay(
        &db.url,
        &["unsuppress", "--phone", "87052000001", "--reason", "again"],
    );
    assert!(
        text(&none).contains("not suppressed: nothing was changed"),
        "{}",
        text(&none)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn two_serve_processes_claiming_two_leads_of_a_suppressed_address_send_neither() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let out = leadrelay(
        &db.url,
        &[
            "suppress",
            "--email",
            "twice@gmail.com",
            "--reason",
            "unsubscribed by letter",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let providers = Providers::healthy().await;
    let _first = ServeProcess::start(&db.url, &providers, &[]);
    let _second = ServeProcess::start(&db.url, &providers, &[]);
    // both connected (a listener and a pool connection each) before the
    // jobs come due
    eventually(Duration::from_secs(20), "both workers connected", || async {
        count(
            &client,
            "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
        )
        .await
            >= 4
    })
    .await;
    let mut leads = Vec::new();
    for (i, spelling) in [
        "twice@gmail.com",
        "T.W.I.C.E@gmail.com",
        "twice+form@googlemail.com",
        "Twice@Gmail.com",
    ]
    .iter()
    .enumerate()
    {
        leads.push(
            insert_proftest_lead_with_phone(
                &client,
                "Twice",
                spelling,
                &format!("+7 705 300 00 0{i}"),
            )
            .await,
        );
    }
    eventually(Duration::from_secs(20), "every job claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    for lead in &leads {
        assert_eq!(lead_job(&client, *lead, "email").await.1, "cancelled");
    }
    assert!(
        providers.emails().await.is_empty(),
        "no email to a suppressed address"
    );
    assert_eq!(
        providers.sms().await.len(),
        4,
        "the phones are not suppressed"
    );
}

#[tokio::test]
async fn the_console_shows_suppresses_lifts_and_forgets_behind_confirmations_audited() {
    use crate::console::{get, post, sign_in};
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    let lead =
        insert_proftest_lead_with_phone(&client, "Асель", "asel@mail.ru", "+7 705 600 00 01").await;
    eventually(Duration::from_secs(15), "sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let (cookie, csrf) = sign_in(&base, None).await;
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(page.contains("<b>email</b>: not suppressed"), "{page}");
    let (status, confirm) = get(&base, &format!("/ops/leads/{lead}/suppress/email"), &cookie).await;
    assert_eq!(status, 200);
    assert!(
        confirm.contains("Suppress this lead&#39;s email?"),
        "{confirm}"
    );
    // no reason, or another session's token: nothing
    let refused = post(
        &base,
        &format!("/ops/leads/{lead}/suppress/email"),
        &cookie,
        &[("csrf", &csrf), ("reason", " ")],
    )
    .await;
    assert_eq!(refused.status(), 400);
    let forged = post(
        &base,
        &format!("/ops/leads/{lead}/suppress/email"),
        &cookie,
        &[("csrf", "x"), ("reason", "spam trap")],
    )
    .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(
        count(&client, "select count(*) from notification_suppressions").await,
        0
    );
    let done = post(
        &base,
        &format!("/ops/leads/{lead}/suppress/email"),
        &cookie,
        &[("csrf", &csrf), ("reason", "asked at the front desk")],
    )
    .await;
    assert_eq!(done.status(), 303);
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(
        page.contains("<b>email</b>: suppressed (operator)"),
        "{page}"
    );
    let (_, front) = get(&base, "/ops", &cookie).await;
    assert!(front.contains("operator: 1"), "{front}");
    let audited = count(&client, "select count(*) from ops_audit where actor = 'console' and action = 'suppress' and session_id is not null").await;
    assert_eq!(audited, 1);
    let lifted = post(
        &base,
        &format!("/ops/leads/{lead}/unsuppress/email"),
        &cookie,
        &[("csrf", &csrf), ("reason", "a mistake")],
    )
    .await;
    assert_eq!(lifted.status(), 303);
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_suppressions where lifted_at is null"
        )
        .await,
        0
    );

    // forgetting, from the console
    let (status, confirm) = get(&base, &format!("/ops/leads/{lead}/forget"), &cookie).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("cannot be undone"), "{confirm}");
    let forgot = post(
        &base,
        &format!("/ops/leads/{lead}/forget"),
        &cookie,
        &[("csrf", &csrf), ("lead_row", "on")],
    )
    .await;
    assert_eq!(forgot.status(), 200);
    assert_eq!(
        count(&client, "select count(*) from notification_jobs j where j.recipient is not null or j.sent_params is not null").await,
        0
    );
    let row = client
        .query_one(
            "select email, phone, name from landing_leads where id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2)
        ),
        (None, None, None)
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from ops_audit where action = 'forget' and actor = 'console'"
        )
        .await,
        1
    );
    app.shutdown().await;
}
