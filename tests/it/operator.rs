//! `leadrelay backfill`, `status` and `retry`, run as an operator would.

use std::process::Output;

use crate::app::{count, leadrelay_cli as leadrelay};
use crate::harness::{
    enqueue_trigger, fresh_db, insert_as_landing, insert_incident_leads, insert_proftest_lead,
};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The incident's four leads, inserted as they were: before leadrelay, so
/// without jobs; plus one lead that has its jobs and one outside the window.
async fn leads_from_before_leadrelay(client: &tokio_postgres::Client) -> Vec<uuid::Uuid> {
    enqueue_trigger(client, false).await;
    let ids = insert_incident_leads(client).await;
    client
        .execute(
            "update landing_leads set created_at = '2026-11-20 12:07:00+00' where id = any($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let old = insert_proftest_lead(client, "Old", "old@mail.ru").await;
    client
        .execute(
            "update landing_leads set created_at = '2026-10-01 00:00:00+00' where id = $1",
            &[&old],
        )
        .await
        .unwrap();
    enqueue_trigger(client, true).await;
    let served = insert_proftest_lead(client, "Served", "s@mail.ru").await;
    client
        .execute(
            "update landing_leads set created_at = '2026-11-20 13:00:00+00' where id = $1",
            &[&served],
        )
        .await
        .unwrap();
    ids
}

#[tokio::test]
async fn backfill_dry_run_changes_nothing_a_real_run_enqueues_exactly_the_leads_without_jobs_and_a_second_run_nothing()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    let incident = leads_from_before_leadrelay(&client).await;
    let jobs_before = count(&client, "select count(*) from notification_jobs").await;
    assert_eq!(jobs_before, 3, "only the lead served by leadrelay has jobs");

    let window = [
        "--since",
        "2026-11-20",
        "--until",
        "2026-11-21",
        "--no-provider-check",
    ];
    let dry = leadrelay(
        &db.url,
        &[&["backfill"][..], &window, &["--dry-run"]].concat(),
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("4 lead(s)"), "{}", text(&dry));
    assert!(text(&dry).contains("dry run: nothing was changed"));
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        jobs_before
    );

    // Without a terminal and without --yes, nothing happens.
    let unconfirmed = leadrelay(&db.url, &[&["backfill"][..], &window].concat());
    assert!(!unconfirmed.status.success());
    assert!(
        text(&unconfirmed).contains("not confirmed: nothing was changed"),
        "{}",
        text(&unconfirmed)
    );
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        jobs_before
    );

    let real = leadrelay(&db.url, &[&["backfill"][..], &window, &["--yes"]].concat());
    assert!(real.status.success(), "{}", text(&real));
    assert!(
        text(&real).contains(
            "enqueued 11 message(s): due now, or at the opening of their rule's send window;"
        ) && text(&real).contains("1 invalid"),
        "{}",
        text(&real)
    );
    for (i, lead) in incident.iter().enumerate() {
        let rows = client
            .query(
                "select channel, status from notification_jobs where lead_id = $1 order by channel",
                &[lead],
            )
            .await
            .unwrap();
        let states: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let sms = if i == 1 { "invalid" } else { "due" };
        assert_eq!(
            states,
            vec![
                ("email".into(), "due".into()),
                ("lead_tracking".into(), "due".into()),
                ("sms".into(), sms.into())
            ]
        );
    }
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        jobs_before + 12
    );
    assert_eq!(
        count(&client, "select count(*) from landing_leads l where created_at < '2026-11-01' and exists (select 1 from notification_jobs j where j.lead_id = l.id)").await,
        0,
        "the lead outside the window is untouched"
    );

    let again = leadrelay(&db.url, &[&["backfill"][..], &window, &["--yes"]].concat());
    assert!(again.status.success());
    assert!(text(&again).contains("0 lead(s)"), "{}", text(&again));
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        jobs_before + 12
    );
}

#[tokio::test]
async fn backfill_refuses_bad_windows_with_a_clear_message() {
    let db = fresh_db().await;
    let out = leadrelay(&db.url, &["backfill", "--since", "last tuesday", "--yes"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--since \"last tuesday\" is not a time"),
        "{}",
        text(&out)
    );
    let out = leadrelay(
        &db.url,
        &[
            "backfill",
            "--since",
            "2026-11-21",
            "--until",
            "2026-11-20",
            "--yes",
        ],
    );
    assert!(
        text(&out).contains("--until must be after --since"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn status_finds_a_lead_by_id_email_or_phone_and_shows_its_messages() {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_as_landing(
        &client,
        Some("Нурлан"),
        Some("Nurlan0000@mail.ru"),
        Some("+7 (476) 123-45-6"),
        Some("proftest_main"),
        None,
    )
    .await;
    let other = insert_as_landing(
        &client,
        Some("Айгерим"),
        Some("aigerim@gmail.com"),
        Some("+7 (705) 123-45-67"),
        Some("proftest_main"),
        None,
    )
    .await;
    for query in [lead.to_string(), "nurlan0000@MAIL.ru".to_string()] {
        let out = leadrelay(&db.url, &["status", &query]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains(&lead.to_string()), "{t}");
        assert!(t.contains("invalid") && t.contains("10 digits"), "{t}");
        assert!(t.contains("N***@mail.ru"), "contacts are masked: {t}");
        assert!(!t.contains("Nurlan0000@mail.ru"), "{t}");
    }
    let out = leadrelay(&db.url, &["status", "8 705 123 45 67"]);
    assert!(text(&out).contains(&other.to_string()), "{}", text(&out));
    let out = leadrelay(&db.url, &["status", "nobody@nowhere.kz"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no lead matches"), "{}", text(&out));
    let out = leadrelay(&db.url, &["status", "'; drop table landing_leads; --"]);
    assert!(!out.status.success());
    assert_eq!(
        count(&client, "select count(*) from landing_leads").await,
        2
    );
}

#[tokio::test]
async fn retry_puts_failed_jobs_back_to_due_with_fresh_attempts() {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_proftest_lead(&client, "A", "a@mail.ru").await;
    client
        .execute(
            "update notification_jobs set status = 'failed', attempts = 8, finished_at = now(), last_error = 'resend 401 invalid_api_key: API key is invalid' where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap();
    let job: i64 = client
        .query_one(
            "select id from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0);
    let dry = leadrelay(
        &db.url,
        &["retry", "--failed-since", "2020-01-01", "--dry-run"],
    );
    assert!(text(&dry).contains("invalid_api_key"), "{}", text(&dry));
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'failed'"
        )
        .await,
        1
    );
    let out = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let row = client
        .query_one(
            "select status, attempts, last_error from notification_jobs where id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "due");
    assert_eq!(row.get::<_, i32>(1), 0);
    let out = leadrelay(&db.url, &["retry"]);
    assert!(!out.status.success(), "a job or --failed-since is required");
}

#[tokio::test]
async fn cancel_rule_cancels_the_jobs_a_disabled_rule_made_that_were_not_tried_and_nothing_else() {
    let db = fresh_db().await;
    let client = db.client().await;
    insert_proftest_lead(&client, "A", "a@mail.ru").await;
    insert_proftest_lead(&client, "B", "b@mail.ru").await;
    // one SMS already went: it stays as it is
    client
        .batch_execute(
            "update notification_jobs set status = 'sent', sent_at = now(), finished_at = now(), provider_message_id = 'm1'
              where id = (select min(id) from notification_jobs where channel = 'sms');
             update notification_rules set enabled = false where channel = 'sms';",
        )
        .await
        .unwrap();
    let rule: i64 = client
        .query_one(
            "select id from notification_rules where channel = 'sms'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rule_arg = rule.to_string();
    let out = leadrelay(&db.url, &["cancel", "--rule", &rule_arg, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 job(s) not tried yet"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'cancelled'"
        )
        .await,
        0
    );

    let out = leadrelay(&db.url, &["cancel", "--rule", &rule_arg]);
    assert!(
        !out.status.success(),
        "not confirmed without a terminal or --yes"
    );
    let out = leadrelay(&db.url, &["cancel", "--rule", &rule_arg, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'cancelled'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'sent'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&client, "select count(*) from notification_jobs where channel = 'email' and status = 'scheduled'").await,
        2,
        "other rules' jobs are untouched"
    );
    let out = leadrelay(&db.url, &["cancel", "--rule", "999999", "--yes"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no notification rule has id 999999"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn retry_takes_a_corrected_contact_from_the_lead_and_requeues_invalid_jobs_too() {
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = insert_incident_leads(&client).await;
    // The second incident lead's phone has a digit too few: its SMS is invalid.
    let broken = leads[1];
    let job: i64 = client
        .query_one("select id from notification_jobs where lead_id = $1 and channel = 'sms' and status = 'invalid'", &[&broken])
        .await
        .unwrap()
        .get(0);
    let out = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("still unusable"), "{}", text(&out));
    assert_eq!(
        count(
            &client,
            &format!(
                "select count(*) from notification_jobs where id = {job} and status = 'invalid'"
            )
        )
        .await,
        1
    );
    // The marketer corrects the phone in the SQL editor, then retries.
    client
        .execute(
            "update landing_leads set phone = '+7 (747) 123-45-60' where id = $1",
            &[&broken],
        )
        .await
        .unwrap();
    let dry = leadrelay(&db.url, &["retry", &job.to_string(), "--dry-run"]);
    assert!(
        text(&dry).contains("1 failed or invalid job(s)"),
        "{}",
        text(&dry)
    );
    let out = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let row = client
        .query_one(
            "select status, recipient from notification_jobs where id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "due");
    assert_eq!(row.get::<_, String>(1), "77471234560");

    // A failed email whose address was corrected goes to the new address
    // under a key of its own.
    let email_job: i64 = client
        .query_one(
            "select id from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&leads[0]],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "update notification_jobs set status = 'failed', finished_at = now(), attempts = 1, last_error = 'resend 422 validation_error: bad address',
                    idempotency_key = 'leadrelay-old-key' where id = {email_job};
             update landing_leads set email = 'aigerim.fixed@gmail.com' where id = '{}';",
            leads[0]
        ))
        .await
        .unwrap();
    let out = leadrelay(&db.url, &["retry", &email_job.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let row = client
        .query_one(
            "select status, recipient, idempotency_key from notification_jobs where id = $1",
            &[&email_job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "due");
    assert_eq!(row.get::<_, String>(1), "aigerim.fixed@gmail.com");
    assert_ne!(row.get::<_, String>(2), "leadrelay-old-key");
}

#[tokio::test]
async fn a_backfilled_a_retried_and_a_landing_inserted_address_with_odd_white_space_are_one_recipient()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    // a no-break space after the address, an ideographic space before it:
    // both are white space to leadrelay_trim(), neither is to btrim()
    let odd = "\u{3000}Odd.Space@Example.KZ\u{a0}";
    // the landing's own insert
    let landed = insert_proftest_lead(&client, "Landed", odd).await;
    // a lead from before leadrelay, found by the backfill
    enqueue_trigger(&client, false).await;
    let old = insert_proftest_lead(&client, "Backfilled", odd).await;
    enqueue_trigger(&client, true).await;
    let out = leadrelay(
        &db.url,
        &[
            "backfill",
            "--since",
            "2020-01-01",
            "--ignore-policies",
            "--no-provider-check",
            "--yes",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // a failed email whose lead's address was retyped with the same spaces
    let retried = insert_proftest_lead(&client, "Retried", "typo@mail.ru").await;
    client
        .execute(
            "update notification_jobs set status = 'failed', finished_at = now(), last_error = 'refused', failed_because = 'provider'
             where lead_id = $1 and channel = 'email'",
            &[&retried],
        )
        .await
        .unwrap();
    client
        .execute(
            "update landing_leads set email = $2 where id = $1",
            &[&retried, &odd],
        )
        .await
        .unwrap();
    let job: i64 = client
        .query_one(
            "select id from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&retried],
        )
        .await
        .unwrap()
        .get(0);
    let out = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", text(&out));

    let rows = client
        .query(
            "select lead_id, recipient, leadrelay.recipient_key('email', recipient)
             from notification_jobs where channel = 'email' and lead_id = any($1) order by lead_id",
            &[&vec![landed, old, retried]],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "one email job per lead");
    for row in &rows {
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some("Odd.Space@Example.KZ"),
            "lead {}",
            row.get::<_, uuid::Uuid>(0)
        );
        assert_eq!(
            row.get::<_, Option<String>>(2).as_deref(),
            Some("odd.space@example.kz")
        );
    }
}
