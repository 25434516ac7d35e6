//! One gate for every path that puts a message on its way: a retry (the
//! CLI's and the console's bulk one), "send now", a job already due when its
//! window closed, a scheduled job claimed at its moment without a
//! promotion, and the retry of an email batch whose outcome is unknown.
//! Each test here failed before the gate moved into the claim.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wiremock::{Request, Respond, ResponseTemplate};

use crate::app::{
    HOUR_DELAY, NO_DELAY, Providers, ResendLike, config, count, eventually, lead_job,
    leadrelay_cli, start, unfinished,
};
use crate::batches::{EMAIL_ONLY, burst, key_of, recipients_of};
use crate::console::{get, listed_jobs, post, sign_in};
use crate::harness::{self, fresh_db, insert_proftest_lead_with_phone, shipped_db};

/// Resend and Mobizon refusing every request as a wrong API key does.
async fn wrong_keys() -> Providers {
    let providers = Providers::empty().await;
    providers
        .mount_resend(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "statusCode": 401, "name": "invalid_api_key", "message": "API key is invalid"})))
        .await;
    providers
        .mount_mobizon(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"code": 1, "data": "apiKey", "message": "Неверный ключ API"}),
        ))
        .await;
    providers
}

/// Waits until both the email and the SMS of `lead` are `status`.
async fn both_messages_end(
    client: &tokio_postgres::Client,
    lead: uuid::Uuid,
    status: &str,
    what: &str,
) {
    eventually(Duration::from_secs(20), what, || async {
        lead_job(client, lead, "email").await.1 == status
            && lead_job(client, lead, "sms").await.1 == status
    })
    .await;
}

/// The SMS rule's window opens an hour from now (Almaty time).
const SMS_WINDOW_IN_AN_HOUR: &str = "update notification_rules
   set send_window_start = (now() at time zone 'Asia/Almaty' + interval '1 hour')::time,
       send_window_end = (now() at time zone 'Asia/Almaty' + interval '2 hours')::time
 where channel = 'sms'";

async fn sms_job(client: &tokio_postgres::Client, lead: uuid::Uuid) -> (i64, String, bool) {
    let row = client
        .query_one(
            "select id, status, held_until > now() + interval '50 minutes' and hold_reason like '%outside the send window%'
               from notification_jobs where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get::<_, Option<bool>>(2).unwrap_or(false),
    )
}

#[tokio::test]
async fn a_bulk_retry_of_a_lead_whose_person_got_the_messages_meanwhile_sends_them_nothing_twice() {
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // the dashboard row is not part of this story
    client
        .batch_execute(
            "update notification_rules set enabled = false where channel = 'lead_tracking'",
        )
        .await
        .unwrap();

    // 1. The keys are wrong: the first lead fails on both channels.
    let broken = wrong_keys().await;
    let app = start(config(&db.url, &broken)).await;
    let first =
        insert_proftest_lead_with_phone(&client, "Айгерим", "aigerim@mail.ru", "+7 705 904 44 67")
            .await;
    both_messages_end(&client, first, "failed", "both messages failed").await;
    app.shutdown().await;

    // 2. The keys are fixed; 3. the same person fills the test again, typed
    // a little differently, and gets both messages.
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    let second = insert_proftest_lead_with_phone(
        &client,
        "Айгерим",
        " Aigerim+test@mail.ru",
        "8 705 904 44 67",
    )
    .await;
    both_messages_end(&client, second, "sent", "the second lead's messages sent").await;

    // 4. The operator retries the failures the front page lists.
    let (cookie, csrf) = sign_in(&base, None).await;
    let (_, confirm) = get(&base, "/ops/failures/retry", &cookie).await;
    let jobs = listed_jobs(&confirm);
    assert_eq!(jobs.split(',').count(), 2, "the first lead's two failures");
    let r = post(
        &base,
        "/ops/failures/retry",
        &cookie,
        &[("csrf", &csrf), ("jobs", &jobs)],
    )
    .await;
    assert_eq!(r.status(), 200);

    // 5. The gate judges them again: duplicates of what the second lead got.
    both_messages_end(
        &client,
        first,
        "cancelled",
        "the retried messages are judged",
    )
    .await;
    assert_eq!(
        count(
            &client,
            &format!(
                "select count(*) from notification_jobs where lead_id = '{first}' and cancelled_by = 'duplicate'
                   and duplicate_of_lead = '{second}'"
            )
        )
        .await,
        2
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(providers.emails().await.len(), 1, "one email to the person");
    assert_eq!(providers.sms().await.len(), 1, "one SMS to the person");
    app.shutdown().await;
}

#[tokio::test]
async fn a_retry_outside_the_send_window_waits_for_the_opening() {
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let lead =
        insert_proftest_lead_with_phone(&client, "Ночь", "night@mail.ru", "+7 705 111 22 33").await;
    client
        .execute(
            "update notification_jobs set status = 'failed', attempts = 8, finished_at = now(),
                    last_error = 'Mobizon code 1: Неверный ключ API', cleared_at = now()
              where lead_id = $1 and channel = 'sms'",
            &[&lead],
        )
        .await
        .unwrap();
    client.batch_execute(SMS_WINDOW_IN_AN_HOUR).await.unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let (job, _, _) = sms_job(&client, lead).await;
    let out = leadrelay_cli(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(20),
        "the retried SMS waits for its window",
        || async {
            let (_, status, held) = sms_job(&client, lead).await;
            status == "scheduled" && held
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        providers.sms().await.is_empty(),
        "no SMS outside the window"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_job_due_when_its_window_closed_waits_for_the_next_opening_when_the_worker_starts() {
    // Due at 20:55, the worker stopped; the window closed at 21:00; the
    // worker starts at 21:30: the SMS waits for 09:00. (Times as offsets
    // from now: the window opens in an hour.)
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let lead =
        insert_proftest_lead_with_phone(&client, "Поздно", "late@mail.ru", "+7 705 222 33 44")
            .await;
    client
        .batch_execute("select promote_due_notification_jobs()")
        .await
        .unwrap();
    assert_eq!(sms_job(&client, lead).await.1, "due");
    client.batch_execute(SMS_WINDOW_IN_AN_HOUR).await.unwrap();

    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    eventually(
        Duration::from_secs(20),
        "the email goes, the SMS waits",
        || async {
            let (_, status, held) = sms_job(&client, lead).await;
            lead_job(&client, lead, "email").await.1 == "sent" && status == "scheduled" && held
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        providers.sms().await.is_empty(),
        "no SMS outside the window"
    );

    // "Send now" skips a delay, not the window.
    let (job, _, _) = sms_job(&client, lead).await;
    let (cookie, csrf) = sign_in(&format!("http://{}", app.local_addr()), None).await;
    let base = format!("http://{}", app.local_addr());
    let r = post(
        &base,
        &format!("/ops/jobs/{job}/send-now"),
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert!(r.status().is_redirection(), "{}", r.status());
    eventually(Duration::from_secs(20), "sent now, it waits for the window again", || async {
        let (_, status, held) = sms_job(&client, lead).await;
        status == "scheduled" && held
            && count(&client, &format!("select count(*) from ops_audit where action = 'send_now' and {job} = any(changed_job_ids)")).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        providers.sms().await.is_empty(),
        "still no SMS outside the window"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_scheduled_job_whose_moment_passed_is_claimed_as_it_is_through_the_gate() {
    // The claim takes a scheduled job past its moment without the
    // promotion writing it first: the window still holds the SMS, and a job
    // whose moment has not come is not taken.
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::Queue;
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let lead =
        insert_proftest_lead_with_phone(&client, "Момент", "moment@mail.ru", "+7 705 333 44 55")
            .await;
    let later =
        insert_proftest_lead_with_phone(&client, "Позже", "later@mail.ru", "+7 705 333 44 56")
            .await;
    harness::moment_passed(&client, lead).await;
    client.batch_execute(SMS_WINDOW_IN_AN_HOUR).await.unwrap();
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status <> 'scheduled'"
        )
        .await,
        0,
        "nothing promoted"
    );
    let pool = leadrelay::store::pool(&db.url, 2).await.unwrap();
    let queue = Queue::new(pool, "moment-test".into());
    let lease = Duration::from_secs(30);
    let email = queue.claim(Channel::Email, 10, lease, false).await.unwrap();
    assert_eq!(email.len(), 1, "the email past its moment is claimed");
    assert_eq!(email[0].lead_id, lead);
    assert_eq!(lead_job(&client, lead, "email").await.1, "sending");
    let sms = queue.claim(Channel::Sms, 10, lease, false).await.unwrap();
    assert!(sms.is_empty(), "the SMS is outside its window");
    let (_, status, held) = sms_job(&client, lead).await;
    assert!(
        status == "scheduled" && held,
        "{status}: held until the opening"
    );
    assert_eq!(lead_job(&client, later, "email").await.1, "scheduled");
    assert_eq!(lead_job(&client, later, "sms").await.1, "scheduled");
    assert!(
        queue
            .claim(Channel::Email, 10, lease, false)
            .await
            .unwrap()
            .is_empty(),
        "a job whose moment has not come is not claimed"
    );
}

#[tokio::test]
async fn a_job_long_past_its_moment_is_promoted_then_claimed_and_none_falls_between() {
    // The claims look back twice the minute the promotion leaves them, no
    // further (the dead index entries of jobs gone since the last vacuum lie
    // behind): a job 90 s past its moment is claimed as it is, one 3 minutes
    // past is the promotion's, and once promoted it is claimed.
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::{PROMOTE, Queue};
    let db = shipped_db().await;
    let client = db.client().await;
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let past = |lead: uuid::Uuid, by: &'static str| {
        let client = &client;
        async move {
            client
                .execute(
                    "update notification_jobs set due_at = now() - $2::text::interval where lead_id = $1",
                    &[&lead, &by],
                )
                .await
                .unwrap();
        }
    };
    let pool = leadrelay::store::pool(&db.url, 2).await.unwrap();
    let queue = Queue::new(pool, "look-back-test".into());
    // the sweeper's glance looks as far back as the claims, and forward from
    // now to the next moment
    harness::insert_proftest_lead(&client, "Через час", "later@mail.ru").await;
    let old = harness::insert_proftest_lead(&client, "Давно", "old@mail.ru").await;
    past(old, "3 minutes").await;
    let glance = queue.glance().await.unwrap();
    assert!(!glance.any_due, "a job 3 minutes past is the promotion's");
    let next = glance.next_due.expect("the lead's jobs an hour ahead");
    assert!(
        next > Duration::from_secs(3500) && next <= Duration::from_secs(3600),
        "{next:?}"
    );
    let recent = harness::insert_proftest_lead(&client, "Недавно", "recent@mail.ru").await;
    past(recent, "90 seconds").await;
    assert!(
        queue.glance().await.unwrap().any_due,
        "90 s past: claimable"
    );
    let lease = Duration::from_secs(30);
    let first = queue.claim(Channel::Email, 10, lease, false).await.unwrap();
    assert_eq!(
        first.iter().map(|j| j.lead_id).collect::<Vec<_>>(),
        [recent],
        "the claim takes the job 90 s past its moment, and leaves the older one"
    );
    assert_eq!(lead_job(&client, old, "email").await.1, "scheduled");
    client.query_one(PROMOTE, &[]).await.unwrap();
    assert_eq!(lead_job(&client, old, "email").await.1, "due");
    assert_eq!(
        lead_job(&client, recent, "sms").await.1,
        "due",
        "the promotion takes what is past its moment for over a minute"
    );
    let second = queue.claim(Channel::Email, 10, lease, false).await.unwrap();
    assert_eq!(
        second.iter().map(|j| j.lead_id).collect::<Vec<_>>(),
        [old],
        "promoted, it is claimed"
    );
}

#[tokio::test]
async fn a_job_claimed_ahead_of_its_moment_is_held_until_it_however_slow_the_commit() {
    // A claim made ahead of a moment holds each request until the moment,
    // counted by the database (`due_in`). Its commit here takes 300 ms (a
    // deferred trigger sleeping at commit, standing in for a flush under
    // write load): the hold counts from when the row was read, not from
    // after the commit, and still never ends before the moment.
    use leadrelay::domain::Channel;
    use leadrelay::store::queue::Queue;
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let lead =
        insert_proftest_lead_with_phone(&client, "Ahead", "ahead@mail.ru", "+7 705 333 44 57")
            .await;
    let pool = leadrelay::store::pool(&db.url, 2).await.unwrap();
    let queue = Queue::new(pool, "ahead-test".into());
    let set_at = tokio::time::Instant::now();
    client
        .execute(
            "update notification_jobs set due_at = now() + interval '80 milliseconds'
              where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "create function pg_temp_slow_commit() returns trigger language plpgsql as $$
             begin perform pg_sleep(0.3); return null; end $$;
             create constraint trigger slow_commit after update on notification_jobs
               deferrable initially deferred for each row execute function pg_temp_slow_commit();",
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let jobs = queue
        .claim_ahead(
            Channel::Email,
            10,
            Duration::from_secs(30),
            false,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    let returned = tokio::time::Instant::now();
    assert!(
        returned - started >= Duration::from_millis(300),
        "the commit was slow"
    );
    assert_eq!(jobs.len(), 1, "the email due within 100 ms is claimed");
    assert_eq!(
        lead_job(&client, lead, "email").await.1,
        "sending",
        "and committed"
    );
    let until = jobs[0].not_before.expect("held until its moment");
    // the moment, by this clock: set after `set_at`, at most 80 ms after the
    // claim began
    assert!(
        until >= set_at + Duration::from_millis(80),
        "never before the moment"
    );
    // counted from the row, the hold ends near the moment; counted from the
    // commit, 300 ms after the claim began. The slack between the two is for
    // a machine busy with other tests (40 ms was too little on two cores).
    assert!(
        until < started + Duration::from_millis(80) + Duration::from_millis(150),
        "held {:?} past the claim's start: the commit was counted in",
        until - started
    );
}

/// Resend as the stand-in answers (it keeps every key it took), slow enough
/// while `slow` holds that every request times out after Resend took it.
struct SlowWhile {
    inner: ResendLike,
    slow: Arc<AtomicBool>,
}

impl Respond for SlowWhile {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let answer = self.inner.respond(request);
        if self.slow.load(Ordering::SeqCst) {
            answer.set_delay(Duration::from_secs(4))
        } else {
            answer
        }
    }
}

/// For each address, the keys under which Resend took an email to it.
async fn keys_per_address(providers: &Providers) -> HashMap<String, HashSet<String>> {
    let mut keys: HashMap<String, HashSet<String>> = HashMap::new();
    for r in providers.emails().await {
        let to = if r.url.path().ends_with("/batch") {
            recipients_of(&r)
        } else {
            let email: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            vec![email["to"][0].as_str().unwrap().to_string()]
        };
        for address in to {
            keys.entry(address).or_default().insert(key_of(&r));
        }
    }
    keys
}

async fn slow_resend() -> (Providers, Arc<AtomicBool>) {
    let providers = Providers::empty().await;
    let slow = Arc::new(AtomicBool::new(true));
    providers
        .mount_resend(SlowWhile {
            inner: ResendLike::new(Duration::ZERO),
            slow: Arc::clone(&slow),
        })
        .await;
    (providers, slow)
}

#[tokio::test]
async fn a_batch_that_timed_out_although_resend_took_it_is_retried_whole_and_each_address_gets_one_email()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(EMAIL_ONLY).await.unwrap();
    client
        .batch_execute("alter table notification_jobs alter column max_attempts set default 2")
        .await
        .unwrap();
    burst(&client, 3).await;
    let (providers, slow) = slow_resend().await;
    let mut cfg = config(&db.url, &providers);
    cfg.resend.batch_size = 100;
    let app = start(cfg).await;
    eventually(Duration::from_secs(40), "the batch gave up after its attempts", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'email' and status = 'failed' and batch_key is not null").await == 3
    })
    .await;
    slow.store(false, Ordering::SeqCst);
    let one: i64 = client
        .query_one(
            "select min(id) from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = leadrelay_cli(&db.url, &["retry", &one.to_string(), "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(20), "every email sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'",
        )
        .await
            == 3
    })
    .await;
    app.shutdown().await;
    let keys = keys_per_address(&providers).await;
    assert_eq!(keys.len(), 3);
    for (address, keys) in keys {
        assert_eq!(keys.len(), 1, "{address} was sent under {keys:?}: twice");
    }
    assert_eq!(unfinished(&client).await, 0);
}

#[tokio::test]
async fn cancelling_one_email_of_a_batch_in_doubt_is_refused_and_the_batch_goes_again_whole() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(EMAIL_ONLY).await.unwrap();
    burst(&client, 3).await;
    let (providers, slow) = slow_resend().await;
    let mut cfg = config(&db.url, &providers);
    cfg.resend.batch_size = 100;
    let app = start(cfg).await;
    let base = format!("http://{}", app.local_addr());
    eventually(Duration::from_secs(20), "the batch's first attempt timed out", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'email' and batch_key is not null and errors <> '[]'").await == 3
    })
    .await;
    let member: i64 = client
        .query_one(
            "select min(id) from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (cookie, csrf) = sign_in(&base, None).await;
    // The member is between attempts (scheduled or due), when the cancel is
    // refused with the reason, or in one (sending), when a cancel changes
    // nothing (it may already be at the provider): never cancelled.
    let mut refused = String::new();
    for _ in 0..200 {
        let r = post(
            &base,
            &format!("/ops/jobs/{member}/cancel"),
            &cookie,
            &[("csrf", &csrf), ("reason", "wrong person")],
        )
        .await;
        let status = r.status();
        let text = r.text().await.unwrap();
        if status == 409 && text.contains("whose outcome is unknown") {
            refused = text;
            break;
        }
        assert_eq!(
            count(
                &client,
                "select count(*) from notification_jobs where status = 'cancelled'"
            )
            .await,
            0,
            "cancelled ({status}): {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.contains("batch of 3"), "{refused}");
    slow.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "every email sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'",
        )
        .await
            == 3
    })
    .await;
    app.shutdown().await;
    for (address, keys) in keys_per_address(&providers).await {
        assert_eq!(keys.len(), 1, "{address} was sent under {keys:?}");
    }
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'cancelled'"
        )
        .await,
        0
    );
}
