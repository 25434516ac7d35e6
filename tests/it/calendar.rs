//! Send windows on working days through the gate: a message due on a day
//! its rule is closed waits for the next open day's opening, whatever path
//! made it due, and says so.

use std::time::Duration;

use crate::app::{NO_DELAY, Providers, config, eventually, lead_job, start};
use crate::harness::{fresh_db, insert_proftest_lead_with_phone};

#[tokio::test]
async fn a_message_due_on_a_closed_day_waits_for_the_next_open_days_opening() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // the SMS rule open every day but today (in Almaty), all day
    client
        .batch_execute(
            "update notification_rules
                set send_days = array(select d::smallint from generate_series(1, 7) d
                                       where d <> extract(isodow from now() at time zone 'Asia/Almaty')),
                    time_zone = 'Asia/Almaty'
              where channel = 'sms'",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let lead =
        insert_proftest_lead_with_phone(&client, "Сауле", "saule@mail.ru", "+7 705 500 00 01")
            .await;
    eventually(Duration::from_secs(15), "the email sent and the SMS held", || async {
        lead_job(&client, lead, "email").await.1 == "sent"
            && client
                .query_one(
                    "select held_until is not null from notification_jobs where lead_id = $1 and channel = 'sms'",
                    &[&lead],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
    })
    .await;
    let row = client
        .query_one(
            "select status, held_until, hold_reason,
                    ((now() at time zone 'Asia/Almaty')::date + 1)::timestamp at time zone 'Asia/Almaty'
             from notification_jobs where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    let (status, held, reason, tomorrow): (
        String,
        chrono::DateTime<chrono::Utc>,
        String,
        chrono::DateTime<chrono::Utc>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(status, "scheduled");
    assert_eq!(held, tomorrow, "tomorrow's opening, at midnight Almaty");
    assert!(
        reason.contains("outside the send window all day Asia/Almaty on"),
        "{reason}"
    );
    assert!(providers.sms().await.is_empty());
    app.shutdown().await;
}
