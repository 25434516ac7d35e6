//! Delivery policies end to end: a send window holds a message until it
//! opens, one person gets one message however often the form is sent, two
//! `serve` processes never both send to one phone, and `backfill` honours
//! all of it unless told otherwise. Times are set in the data (a window that
//! opens seconds from now, a message sent "25 hours ago"), never slept.

use std::collections::HashMap;
use std::time::Duration;

use crate::app::{
    NO_DELAY, Providers, ServeProcess, config, count, eventually, lead_job, lead_status_message,
    leadrelay_cli as leadrelay, ops_page, start, unfinished,
};
use crate::harness::{insert_proftest_lead_with_phone, shipped_db};

/// The SMS rule's window opens `secs` seconds from now (Almaty time) and
/// stays open an hour.
fn sms_window_opening_in(secs: i64) -> String {
    format!(
        "update notification_rules
            set send_window_start = (now() at time zone 'Asia/Almaty' + interval '{secs} seconds')::time,
                send_window_end = (now() at time zone 'Asia/Almaty' + interval '{secs} seconds' + interval '1 hour')::time
          where channel = 'sms'"
    )
}

#[tokio::test]
async fn a_lead_outside_the_sms_window_gets_its_email_now_and_its_sms_at_the_opening() {
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute(&sms_window_opening_in(4))
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let id =
        insert_proftest_lead_with_phone(&client, "Ночная", "night@mail.ru", "+7 705 111 22 33")
            .await;

    eventually(Duration::from_secs(10), "the email is sent", || async {
        lead_job(&client, id, "email").await.1 == "sent"
    })
    .await;
    // The SMS job is moved to the opening by the promotion that follows (a
    // busy machine may send the email first).
    eventually(Duration::from_secs(10), "the SMS is held for its window", || async {
        client
            .query_one(
                "select held_until is not null from notification_jobs where lead_id = $1 and channel = 'sms'",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    let held = client
        .query_one(
            "select status, held_until, hold_reason, sms_held_until from notification_jobs
               join lead_notification_status s on s.lead_id = notification_jobs.lead_id
              where notification_jobs.lead_id = $1 and channel = 'sms'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(held.get::<_, String>(0), "scheduled");
    let opening: chrono::DateTime<chrono::Utc> = held.get(1);
    let reason: String = held.get(2);
    assert!(
        reason.contains("outside the send window") && reason.contains("Asia/Almaty"),
        "{reason}"
    );
    assert_eq!(
        held.get::<_, Option<chrono::DateTime<chrono::Utc>>>(3),
        Some(opening)
    );
    assert!(
        providers.sms().await.is_empty(),
        "no SMS before the opening"
    );

    // The status API and `leadrelay status` say so while it waits.
    let sms = lead_status_message(&app, id, "sms").await;
    assert!(sms["held_until"].is_string(), "{sms}");
    assert!(sms["hold_reason"].as_str().unwrap().contains("held until"));
    let status = leadrelay(&db.url, &["status", &id.to_string()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("held by the send window: due at"), "{text}");

    eventually(
        Duration::from_secs(15),
        "the SMS is sent at the opening",
        || async { lead_job(&client, id, "sms").await.1 == "sent" },
    )
    .await;
    let sent_at: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "select sent_at from notification_jobs where lead_id = $1 and channel = 'sms'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sent_at >= opening, "sent {sent_at}, window opens {opening}");
    assert!(
        sent_at - opening < chrono::Duration::seconds(5),
        "sent {sent_at}, long after the opening {opening}"
    );
    assert_eq!(providers.sms().await.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn the_same_person_sending_the_form_five_times_gets_one_email_and_one_sms() {
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    // a review's attack: one address and phone, typed five ways, in a row
    let mut leads = Vec::new();
    for (i, (email, phone)) in [
        ("victim@mail.ru", "+7 (705) 904-44-67"),
        ("Victim@Mail.ru", "8 705 904 44 67"),
        (" victim@mail.ru ", "87059044467"),
        ("VICTIM@MAIL.RU", "+77059044467"),
        ("victim@mail.ru", "7 705 904-44-67"),
    ]
    .into_iter()
    .enumerate()
    {
        leads.push(
            insert_proftest_lead_with_phone(&client, &format!("Попытка {i}"), email, phone).await,
        );
    }
    eventually(Duration::from_secs(20), "every job ended", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(providers.emails().await.len(), 1, "one email");
    assert_eq!(providers.sms().await.len(), 1, "one SMS");
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'cancelled' and cancelled_by = 'duplicate'"
        )
        .await,
        8
    );
    // Each cancelled job names the lead that got the message.
    let first_sent: uuid::Uuid = client
        .query_one(
            "select lead_id from notification_jobs where channel = 'sms' and status = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for row in client
        .query(
            "select sms_duplicate_of_lead, sms_error, email_duplicate_of_lead from lead_notification_status
              where sms_status = 'cancelled'",
            &[],
        )
        .await
        .unwrap()
    {
        assert_eq!(row.get::<_, Option<uuid::Uuid>>(0), Some(first_sent));
        assert_eq!(row.get::<_, Option<uuid::Uuid>>(2), Some(first_sent));
        let error: String = row.get(1);
        assert!(
            error.starts_with(&format!("already sent to this recipient for lead {first_sent}"))
                || error.starts_with(&format!(
                    "already being sent to this recipient for lead {first_sent}"
                )),
            "{error}"
        );
    }

    // The ops page shows it as it happens, the recipient masked.
    let page = ops_page(&app).await;
    assert!(
        page.contains("<span class=policy-duplicates>8</span> cancelled as duplicates"),
        "{page}"
    );
    assert!(
        !page.contains("9044467") && !page.contains("victim@"),
        "contacts are masked"
    );

    // A day later (the first messages sent 25 hours ago) the same person
    // gets them again.
    client
        .batch_execute(
            "update notification_jobs set sent_at = now() - interval '25 hours' where status = 'sent'",
        )
        .await
        .unwrap();
    let next_day = insert_proftest_lead_with_phone(
        &client,
        "На следующий день",
        "victim@mail.ru",
        "87059044467",
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the next day's lead is served",
        || async {
            lead_job(&client, next_day, "sms").await.1 == "sent"
                && lead_job(&client, next_day, "email").await.1 == "sent"
        },
    )
    .await;
    assert_eq!(providers.sms().await.len(), 2);
    assert_eq!(providers.emails().await.len(), 2);
    app.shutdown().await;
}

/// Two `serve` processes woken by the same promotion, in 20 rounds: each
/// round's 8 leads are 4 people with two leads each, so one worker's claim
/// of 4 holds one lead of each person and the other worker's claim the
/// other. Each person gets exactly one SMS and one email.
#[tokio::test]
async fn two_serve_processes_claiming_leads_of_one_phone_at_once_send_one_sms() {
    let db = shipped_db().await;
    let client = db.client().await;
    let providers =
        Providers::with_delays(Duration::from_millis(5), Duration::from_millis(5)).await;
    client
        .batch_execute(
            // no dashboard here: its sync would only retry
            "update notification_rules set delay = interval '1 hour';
             update notification_rules set enabled = false where channel = 'lead_tracking';",
        )
        .await
        .unwrap();
    // a claim takes 4 jobs per lane with WORKER_CONCURRENCY=1
    let mut a = ServeProcess::start(&db.url, &providers, &[("WORKER_CONCURRENCY", "1")]);
    let mut b = ServeProcess::start(&db.url, &providers, &[("WORKER_CONCURRENCY", "1")]);
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
    let rounds = 20;
    for round in 0..rounds {
        client
            .execute(
                "insert into landing_leads (name, email, phone, source)
                 select 'Lead ' || g, 'person' || ($1 * 4 + g % 4) || '@mail.ru',
                        '+7 705 000 ' || lpad(($1 * 4 + g % 4)::text, 4, '0'), 'proftest_main'
                 from generate_series(0, 7) g",
                &[&round],
            )
            .await
            .unwrap();
        client
            .batch_execute(
                "update notification_jobs set due_at = now() where status = 'scheduled';
                 select promote_due_notification_jobs();",
            )
            .await
            .unwrap();
        eventually(
            Duration::from_secs(30),
            "the round's jobs ended",
            || async { unfinished(&client).await == 0 },
        )
        .await;
    }
    let mut per_phone: HashMap<String, usize> = HashMap::new();
    for request in providers.sms().await {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        *per_phone.entry(form["recipient"].clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_phone.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "an SMS went twice: {twice:?}");
    assert_eq!(per_phone.len(), rounds as usize * 4, "{per_phone:?}");
    assert_eq!(providers.emails().await.len(), rounds as usize * 4);
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where cancelled_by = 'duplicate'"
        )
        .await,
        rounds as i64 * 8
    );
    a.terminate();
    b.terminate();
}

#[tokio::test]
async fn backfill_at_night_queues_for_the_opening_skips_people_already_served_and_can_ignore_both()
{
    let db = shipped_db().await;
    let client = db.client().await;
    // Y was served two hours ago; X (same person) and Z arrived three days
    // ago, before leadrelay: no jobs.
    let y = insert_proftest_lead_with_phone(&client, "Y", "same@mail.ru", "+7 705 333 44 55").await;
    client
        .execute(
            "update notification_jobs set status = 'sent', sent_at = now() - interval '2 hours', finished_at = now(),
                    cleared_at = now() - interval '2 hours', attempts = 1
              where lead_id = $1 and channel in ('email', 'sms')",
            &[&y],
        )
        .await
        .unwrap();
    let x = insert_proftest_lead_with_phone(&client, "X", "Same@mail.ru", "87053334455").await;
    let z = insert_proftest_lead_with_phone(&client, "Z", "other@mail.ru", "87053334466").await;
    client
        .execute(
            "delete from notification_jobs where lead_id = any($1)",
            &[&vec![x, z]],
        )
        .await
        .unwrap();
    client
        .execute(
            "update landing_leads set created_at = now() - interval '3 days' where id = any($1)",
            &[&vec![x, z]],
        )
        .await
        .unwrap();
    client
        .batch_execute(&sms_window_opening_in(3600))
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;

    let since = (chrono::Utc::now() - chrono::Duration::days(4)).to_rfc3339();
    let out = leadrelay(
        &db.url,
        &[
            "backfill",
            "--since",
            &since,
            "--yes",
            "--no-provider-check",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(20), "emails decided, SMS held", || async {
        lead_job(&client, z, "email").await.1 == "sent"
            && lead_job(&client, x, "email").await.1 == "cancelled"
            && count(
                &client,
                "select count(*) from notification_jobs where channel = 'sms' and status = 'scheduled' and held_until = due_at",
            )
            .await
                == 2
    })
    .await;
    let reason: String = client
        .query_one(
            "select last_error from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&x],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.starts_with(&format!("already sent to this recipient for lead {y}")),
        "{reason}"
    );
    assert_eq!(providers.emails().await.len(), 1, "only Z's email");
    assert!(providers.sms().await.is_empty(), "no SMS at night");

    // An operator who means it: W, the same person again, sent at once.
    let w = insert_proftest_lead_with_phone(&client, "W", "same@mail.ru", "87053334455").await;
    client
        .execute("delete from notification_jobs where lead_id = $1", &[&w])
        .await
        .unwrap();
    let out = leadrelay(
        &db.url,
        &[
            "backfill",
            "--since",
            &since,
            "--yes",
            "--ignore-policies",
            "--no-provider-check",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("policies ignored"));
    eventually(
        Duration::from_secs(20),
        "W is served despite both",
        || async {
            lead_job(&client, w, "email").await.1 == "sent"
                && lead_job(&client, w, "sms").await.1 == "sent"
        },
    )
    .await;
    assert_eq!(providers.sms().await.len(), 1);
    app.shutdown().await;
}
