//! The enqueue trigger, the rules and the promotion, through the same INSERT
//! the Node landing sends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use leadrelay::store;
use uuid::Uuid;

use crate::harness::{self, fresh_db, incident_fixture, insert_as_landing, insert_proftest_lead};

/// name, email, phone, source as the landing sends them.
type LandingRow<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

struct JobRow {
    channel: String,
    status: String,
    recipient: Option<String>,
    due_at: DateTime<Utc>,
    last_error: Option<String>,
}

async fn jobs_of(client: &tokio_postgres::Client, lead: Uuid) -> Vec<JobRow> {
    client
        .query(
            "select channel, status, recipient, due_at, last_error from notification_jobs where lead_id = $1 and channel in ('email', 'sms') order by channel",
            &[&lead],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| JobRow {
            channel: r.get(0),
            status: r.get(1),
            recipient: r.get(2),
            due_at: r.get(3),
            last_error: r.get(4),
        })
        .collect()
}

async fn created_at(client: &tokio_postgres::Client, lead: Uuid) -> DateTime<Utc> {
    client
        .query_one(
            "select created_at from landing_leads where id = $1",
            &[&lead],
        )
        .await
        .expect("lead")
        .get(0)
}

#[tokio::test]
async fn each_incident_lead_gets_one_email_job_and_one_sms_job_due_ten_minutes_after_it_was_created()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    let fixture = incident_fixture();
    assert!(fixture.source.starts_with("proftest"));
    for (i, lead) in fixture.leads.iter().enumerate() {
        let id = insert_as_landing(
            &client,
            Some(&lead.name),
            Some(&lead.email),
            Some(&lead.phone),
            Some(&fixture.source),
            Some(&fixture.metadata_example),
        )
        .await;
        let created = created_at(&client, id).await;
        let jobs = jobs_of(&client, id).await;
        assert_eq!(
            jobs.iter().map(|j| j.channel.as_str()).collect::<Vec<_>>(),
            ["email", "sms"],
            "lead {i}"
        );
        for job in &jobs {
            assert_eq!(
                job.due_at - created,
                chrono::Duration::minutes(10),
                "lead {i} {}",
                job.channel
            );
        }
        let email = &jobs[0];
        assert_eq!(email.status, "scheduled", "lead {i}");
        assert_eq!(email.recipient.as_deref(), Some(lead.email.as_str()));
        let sms = &jobs[1];
        if i == 1 {
            // "+7 (476) 123-45-6" has ten digits: saved, never sendable.
            assert_eq!(sms.status, "invalid");
            assert_eq!(sms.recipient, None);
            let reason = sms.last_error.as_deref().unwrap_or_default();
            assert!(reason.contains("10 digits"), "{reason}");
            let mirrored: Option<String> = client
                .query_one("select sms_error from landing_leads where id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(mirrored.as_deref(), Some(reason));
        } else {
            assert_eq!(sms.status, "scheduled", "lead {i}");
            let digits = sms.recipient.clone().unwrap_or_default();
            assert_eq!(digits.len(), 11, "{digits}");
            assert!(digits.starts_with('7'));
        }
    }
    let count: i64 = client
        .query_one("select count(*) from landing_leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4);
}

#[tokio::test]
async fn hostile_rows_are_always_saved_and_unusable_recipients_are_marked_invalid_with_a_reason() {
    let db = fresh_db().await;
    let client = db.client().await;
    let huge = "Я".repeat(100_000);
    let huge_email = format!("{}@gmail.com", "a".repeat(100_000));
    let metadata =
        serde_json::json!({"nested": {"deep": [1, 2, {"x": "'; drop table landing_leads; --"}]}});
    let cases: Vec<LandingRow> = vec![
        (Some("Null contacts"), None, None, Some("proftest_main")),
        (
            Some(&huge),
            Some("big@name.kz"),
            Some("+7 705 123 45 67"),
            Some("proftest_main"),
        ),
        (
            Some("Garbage phone"),
            Some("ok@mail.ru"),
            Some("call me maybe"),
            Some("proftest_main"),
        ),
        (
            Some("O'Brien \"quoted\" 😀🎉"),
            Some("emoji😀@x"),
            Some("+7 (705) 1😀23-45-67"),
            Some("proftest_main"),
        ),
        (Some("No source"), Some("a@b.kz"), Some("87051234567"), None),
        (
            Some("Huge email"),
            Some(&huge_email),
            Some("8 705 123 4567"),
            Some("proftest_x"),
        ),
        (None, Some(""), Some("   "), Some("proftest")),
        (
            Some("Tabs\tand\nnewlines\r\n"),
            Some(" spaced@mail.ru "),
            Some("+7-705-123-45-67"),
            Some("proftest_main"),
        ),
        (
            Some("SQL"),
            Some("x@y.kz'); delete from notification_jobs; --"),
            Some("7' or '1'='1"),
            Some("proftest%"),
        ),
    ];
    let mut ids = Vec::new();
    for (name, email, phone, source) in &cases {
        ids.push(insert_as_landing(&client, *name, *email, *phone, *source, Some(&metadata)).await);
    }
    let saved: i64 = client
        .query_one("select count(*) from landing_leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(saved, cases.len() as i64);

    let jobs = jobs_of(&client, ids[0]).await;
    assert_eq!(
        jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>(),
        ["invalid", "invalid"]
    );
    assert_eq!(jobs[0].last_error.as_deref(), Some("email is missing"));
    assert_eq!(jobs[1].last_error.as_deref(), Some("phone is missing"));

    let jobs = jobs_of(&client, ids[1]).await;
    assert!(jobs.iter().all(|j| j.status == "scheduled"));
    assert_eq!(jobs[1].recipient.as_deref(), Some("77051234567"));

    let jobs = jobs_of(&client, ids[2]).await;
    assert_eq!(jobs[0].status, "scheduled");
    assert_eq!(jobs[1].status, "invalid");
    assert!(
        jobs[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("characters other than digits")
    );

    let jobs = jobs_of(&client, ids[3]).await;
    assert_eq!(
        jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>(),
        ["invalid", "invalid"]
    );
    assert_eq!(
        jobs[0].last_error.as_deref(),
        Some("email is not an address of the form name@domain.tld")
    );

    assert!(
        jobs_of(&client, ids[4]).await.is_empty(),
        "a null source matches no rule"
    );

    let jobs = jobs_of(&client, ids[5]).await;
    assert_eq!(jobs[0].status, "invalid");
    assert_eq!(
        jobs[0].last_error.as_deref(),
        Some("email is longer than 254 characters")
    );
    assert_eq!(
        jobs[1].recipient.as_deref(),
        Some("77051234567"),
        "a leading 8 becomes 7"
    );

    let jobs = jobs_of(&client, ids[6]).await;
    assert_eq!(
        jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>(),
        ["invalid", "invalid"]
    );

    let jobs = jobs_of(&client, ids[7]).await;
    assert_eq!(
        jobs[0].recipient.as_deref(),
        Some("spaced@mail.ru"),
        "the address is trimmed"
    );
    assert_eq!(jobs[1].recipient.as_deref(), Some("77051234567"));

    let jobs = jobs_of(&client, ids[8]).await;
    assert_eq!(
        jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>(),
        ["invalid", "invalid"]
    );
    let total: i64 = client
        .query_one("select count(*) from notification_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total, 24,
        "8 matching leads x 3 channels (email, sms, lead_tracking), nothing deleted"
    );
}

#[tokio::test]
async fn a_lead_is_saved_even_when_enqueueing_its_jobs_fails() {
    let db = fresh_db().await;
    let client = db.client().await;
    // Break the jobs table the way a bad manual change might.
    client
        .batch_execute(
            "alter table notification_jobs add constraint broken check (channel = 'nothing')",
        )
        .await
        .unwrap();
    let id = insert_proftest_lead(&client, "Still saved", "a@b.kz").await;
    let saved: i64 = client
        .query_one("select count(*) from landing_leads where id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(saved, 1);
    assert!(jobs_of(&client, id).await.is_empty());
}

#[tokio::test]
async fn a_source_no_rule_matches_gets_no_job_and_rule_changes_apply_to_the_next_lead() {
    let db = fresh_db().await;
    let client = db.client().await;
    let other = insert_as_landing(
        &client,
        Some("A"),
        Some("a@b.kz"),
        Some("87051234567"),
        Some("webinar"),
        None,
    )
    .await;
    assert!(jobs_of(&client, other).await.is_empty());

    client
        .batch_execute("update notification_rules set delay = interval '30 seconds' where source_pattern = 'proftest%' and channel = 'email'")
        .await
        .unwrap();
    client
        .batch_execute("update notification_rules set enabled = false where source_pattern = 'proftest%' and channel = 'sms'")
        .await
        .unwrap();
    let lead = insert_proftest_lead(&client, "B", "b@b.kz").await;
    let jobs = jobs_of(&client, lead).await;
    assert_eq!(jobs.len(), 1, "sms rule disabled");
    assert_eq!(jobs[0].channel, "email");
    client
        .batch_execute(
            "update notification_rules set enabled = false where channel = 'lead_tracking'",
        )
        .await
        .unwrap();
    assert_eq!(
        jobs[0].due_at - created_at(&client, lead).await,
        chrono::Duration::seconds(30)
    );

    // A rule with no delay makes the job due at once. The insert sends no
    // NOTIFY (it would serialise concurrent landing commits): the worker's
    // sweep finds it.
    client
        .batch_execute("update notification_rules set delay = interval '0', enabled = true where channel <> 'lead_tracking'")
        .await
        .unwrap();
    let (_listener, mut notifications) = listen(&db.url).await;
    let lead = insert_proftest_lead(&client, "C", "c@b.kz").await;
    let jobs = jobs_of(&client, lead).await;
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.status == "due"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), notifications.recv())
            .await
            .is_err(),
        "the landing's insert notifies nobody"
    );
}

#[tokio::test]
async fn promotion_makes_exactly_the_due_jobs_due_and_wakes_each_of_their_channels_once() {
    let db = fresh_db().await;
    let client = db.client().await;
    let (listener, mut notifications) = listen(&db.url).await;
    let mut leads = Vec::new();
    for i in 0..5 {
        leads.push(insert_proftest_lead(&client, &format!("L{i}"), "a@b.kz").await);
    }
    // Leads 0 and 1 were created 11 minutes ago; the others just now.
    client
        .execute(
            "update notification_jobs set due_at = now() - interval '1 minute' where lead_id = any($1)",
            &[&vec![leads[0], leads[1]]],
        )
        .await
        .unwrap();
    let promoted: i32 = client
        .query_one("select promote_due_notification_jobs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(promoted, 4);
    let due: Vec<i64> = client
        .query(
            "select id from notification_jobs where status = 'due' and channel <> 'lead_tracking' order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(due.len(), 4);
    let scheduled: i64 = client
        .query_one(
            "select count(*) from notification_jobs where status = 'scheduled'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scheduled, 6);
    // One wake-up per channel that got due jobs, named by its payload: the
    // worker claims what is due, so 10,000 promoted jobs are two messages,
    // not 10,000. (The insert notified nobody: see the test above.)
    let mut heard = Vec::new();
    while let Ok(Some(payload)) =
        tokio::time::timeout(Duration::from_millis(500), notifications.recv()).await
    {
        heard.push(payload);
    }
    heard.sort();
    assert_eq!(heard, ["email", "sms"]);
    let again: i32 = client
        .query_one("select promote_due_notification_jobs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "nothing is promoted twice");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), notifications.recv())
            .await
            .is_err(),
        "a promotion of nothing wakes nobody"
    );
    drop(listener);
}

#[tokio::test]
async fn an_expired_lease_returns_its_job_to_due_and_a_job_out_of_attempts_fails() {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_proftest_lead(&client, "L", "a@b.kz").await;
    client
        .execute(
            "update notification_jobs set status = 'sending', attempts = 1, locked_by = 'dead-worker', locked_until = now() - interval '1 second' where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap();
    client
        .execute(
            "update notification_jobs set status = 'sending', attempts = max_attempts, locked_by = 'dead-worker', locked_until = now() - interval '1 second' where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    let promoted: i32 = client
        .query_one("select promote_due_notification_jobs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(promoted, 1);
    let jobs = jobs_of(&client, lead).await;
    assert_eq!(jobs[0].status, "due");
    assert!(
        jobs[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("lease expired")
    );
    assert_eq!(jobs[1].status, "failed");
}

#[tokio::test]
async fn deleting_a_lead_deletes_its_jobs() {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_proftest_lead(&client, "Forget me", "a@b.kz").await;
    client
        .execute("delete from landing_leads where id = $1", &[&lead])
        .await
        .unwrap();
    assert!(jobs_of(&client, lead).await.is_empty());
}

#[tokio::test]
async fn pg_cron_really_runs_the_promotion_in_the_test_cluster() {
    let cluster = harness::cluster();
    if !cluster.has_pg_cron() {
        panic!(
            "pg_cron is not installed: apt-get install postgresql-15-cron (the test command does it)"
        );
    }
    harness::prepare_database(cluster, harness::CRON_DB).await;
    let client = store::connect(&cluster.url(harness::CRON_DB))
        .await
        .unwrap();
    let jobs: i64 = client
        .query_one(
            "select count(*) from cron.job where jobname = 'promote-due-notification-jobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 1);
    // pg_cron runs the sweep's own promotion (pgTAP 03 holds what it
    // promotes and what it leaves to the claims)
    let command: String = client
        .query_one(
            "select command from cron.job where jobname = 'promote-due-notification-jobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(command, leadrelay::store::queue::PROMOTE);
    let lead = insert_proftest_lead(&client, "Cron", "a@b.kz").await;
    client
        .execute(
            "update notification_jobs set due_at = now() - interval '61 seconds' where lead_id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    // pg_cron 1.4 runs every minute; 1.5+ every 5 seconds. It marks a run
    // succeeded only after the promotion has committed, so the jobs can be
    // seen due a moment before the run's row says so: wait for both.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (mut due, mut runs) = (0_i64, 0_i64);
    while std::time::Instant::now() < deadline {
        let row = client
            .query_one(
                "select (select count(*) from notification_jobs where lead_id = $1 and status = 'due' and channel <> 'lead_tracking'), \
                        (select count(*) from cron.job_run_details d join cron.job j using (jobid) \
                          where j.jobname = 'promote-due-notification-jobs' and d.status = 'succeeded')",
                &[&lead],
            )
            .await
            .unwrap();
        (due, runs) = (row.get(0), row.get(1));
        if due == 2 && runs >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(due, 2, "pg_cron did not promote within 90 s");
    assert!(runs >= 1, "pg_cron promoted but recorded no succeeded run");
    let history = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql/04_pg_cron_history.sql"
    ))
    .unwrap();
    let rows = client.simple_query(&history).await.unwrap();
    assert!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count()
            >= 2,
        "sql/04 shows the job and its runs"
    );
}

/// A LISTEN connection whose notifications arrive on a channel.
pub async fn listen(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute("listen notification_jobs")
        .await
        .unwrap();
    (client, rx)
}
