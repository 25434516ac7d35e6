//! `leadrelay forget`: afterwards no column of any table of leadrelay's (or
//! the lead's row, with --lead-row, or the dashboard's row) holds the
//! person's email, phone or name; what was not sent is cancelled; the
//! statistics read the same; and a suppression of the person stays, as a
//! hash.

use std::time::Duration;

use crate::app::{
    HOUR_DELAY, LEAD_TRACKING_TABLE, NO_DELAY, Providers, config, count, eventually, lead_job,
    leadrelay_cli as leadrelay, start, unfinished,
};
use crate::harness::{fresh_db, insert_as_landing};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every row of every table in the schemas `public` and `leadrelay` whose
/// text holds one of `needles`: table name and row.
async fn rows_holding(client: &tokio_postgres::Client, needles: &[&str]) -> Vec<(String, String)> {
    let tables = client
        .query(
            "select format('%I.%I', table_schema, table_name) from information_schema.tables
              where table_schema in ('public', 'leadrelay') and table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap();
    let patterns: Vec<String> = needles.iter().map(|n| format!("%{n}%")).collect();
    let mut found = Vec::new();
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(
                &format!("select t::text from {name} t where t::text ilike any($1)"),
                &[&patterns],
            )
            .await
            .unwrap();
        found.extend(rows.iter().map(|r| (name.clone(), r.get::<_, String>(0))));
    }
    found
}

async fn job_counts(
    client: &tokio_postgres::Client,
    except: uuid::Uuid,
) -> Vec<(String, String, Option<String>, i64)> {
    client
        .query(
            "select channel, status, delivery_status, count(*) from notification_jobs
              where lead_id <> $1 group by 1, 2, 3 order by 1, 2, 3",
            &[&except],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn forget_cancels_what_was_not_sent_erases_the_person_everywhere_and_keeps_the_statistics_and_the_suppression()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let metadata = serde_json::json!({"answers": [3, 1, 4], "note": "Зарина Тестова, zarina.forget@gmail.com"});
    let sent = insert_as_landing(
        &client,
        Some("Зарина Тестова"),
        Some("Zarina.Forget@gmail.com"),
        Some("+7 (705) 777-88-99"),
        Some("proftest_main"),
        Some(&metadata),
    )
    .await;
    let other = insert_as_landing(
        &client,
        Some("Other"),
        Some("other@mail.ru"),
        Some("87051112233"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "her messages sent and the dashboard synced",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    // a bounce of her email (a suppression with her address) and an
    // operator's note naming her
    let email_id: String = client
        .query_one("select provider_message_id from notification_jobs where lead_id = $1 and channel = 'email'", &[&sent])
        .await
        .unwrap()
        .get(0);
    let bounce = serde_json::json!({
        "type": "email.bounced", "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": email_id, "to": ["Zarina.Forget@gmail.com"], "bounce": {"type": "Permanent", "message": "zarina.forget@gmail.com: no such user"}}
    });
    let answer = crate::app::post_resend_event(&app, "msg_bounce_zarina", &bounce).await;
    assert!(answer.status().is_success());
    let out = leadrelay(
        &db.url,
        &[
            "suppress",
            "--phone",
            "87057778899",
            "--reason",
            "Зарина Тестова asked by phone",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // a second lead of hers, not sent yet
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let waiting = insert_as_landing(
        &client,
        Some("Зарина Тестова"),
        Some("zarina.forget@gmail.com"),
        Some("87057778899"),
        Some("proftest_main"),
        None,
    )
    .await;
    app.shutdown().await;

    let needles = [
        "zarina.forget",
        "zarinaforget",
        "77057778899",
        "777-88-99",
        "Зарина",
    ];
    assert!(
        !rows_holding(&client, &needles).await.is_empty(),
        "the test's data is there to find"
    );
    let before = job_counts(&client, waiting).await;
    let audits_before = count(&client, "select count(*) from ops_audit").await;

    // without a terminal and without --yes: nothing
    let refused = leadrelay(
        &db.url,
        &["forget", "zarina.forget@gmail.com", "--lead-row"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("a***@")
            || text(&refused).contains("Z***@")
            || text(&refused).contains("z***@"),
        "{}",
        text(&refused)
    );
    assert!(
        !text(&refused).contains("zarina.forget@"),
        "contacts masked: {}",
        text(&refused)
    );
    let out = leadrelay(
        &db.url,
        &["forget", "zarina.forget@gmail.com", "--lead-row", "--yes"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 lead(s) of this person"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("1 lead_tracking row(s) erased"),
        "{}",
        text(&out)
    );

    let left = rows_holding(&client, &needles).await;
    assert!(
        left.is_empty(),
        "still holding the person's data: {left:#?}"
    );
    // what was not sent is cancelled; the statistics of the rest read the same
    assert_eq!(lead_job(&client, waiting, "email").await.1, "cancelled");
    assert_eq!(lead_job(&client, waiting, "sms").await.1, "cancelled");
    assert_eq!(job_counts(&client, waiting).await, before);
    assert_eq!(lead_job(&client, other, "email").await.1, "sent");
    // one audit row more, naming nobody
    assert_eq!(
        count(&client, "select count(*) from ops_audit").await,
        audits_before + 1
    );
    let note: String = client
        .query_one("select reason from ops_audit where action = 'forget'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "a person was forgotten");
    // the suppressions stay, as hashes: a new lead with her address is not emailed
    assert_eq!(count(&client, "select count(*) from notification_suppressions where lifted_at is null and recipient is null").await, 2);
    client.batch_execute(NO_DELAY).await.unwrap();
    let app = start(config(&db.url, &providers)).await;
    let again = insert_as_landing(
        &client,
        Some("Z"),
        Some("zarina.forget+new@gmail.com"),
        Some("87057778899"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(15), "claimed", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(lead_job(&client, again, "email").await.1, "cancelled");
    assert_eq!(lead_job(&client, again, "sms").await.1, "cancelled");
    app.shutdown().await;
}
