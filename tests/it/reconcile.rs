//! `leadrelay reconcile` and `backfill`'s provider check, against stand-ins
//! that hold messages "sent by the system before leadrelay".

use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::app::{
    Providers, SentEmail, TakenSms, config, count, eventually, leadrelay_cli,
    leadrelay_cli_with_providers as leadrelay, start, unfinished,
};
use crate::harness::{enqueue_trigger, fresh_db, incident_fixture, insert_incident_leads};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command` over the incident's day with `--yes`; its output, once
/// it succeeded.
fn run_on_the_day(db_url: &str, providers: &Providers, command: &str) -> String {
    let out = leadrelay(
        db_url,
        providers,
        &[&[command][..], &WINDOW, &["--yes"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// Asserts the output says `words`.
fn says(output: &str, words: &str) {
    assert!(output.contains(words), "{words:?} not in:\n{output}");
}

const DAY: &str = "2026-11-20";
const WINDOW: [&str; 4] = ["--since", "2026-11-20", "--until", "2026-11-21"];

fn at(hhmm: &str) -> DateTime<Utc> {
    format!("{DAY}T{hhmm}:00Z").parse().unwrap()
}

/// The incident's four leads as they arrived that day, before leadrelay
/// (no jobs), at the fixture's times.
async fn incident_before_leadrelay(client: &tokio_postgres::Client) -> Vec<uuid::Uuid> {
    enqueue_trigger(client, false).await;
    let ids = insert_incident_leads(client).await;
    for (id, lead) in ids.iter().zip(incident_fixture().leads) {
        client
            .execute(
                "update landing_leads set created_at = $2 where id = $1",
                &[id, &at(&lead.submitted_at)],
            )
            .await
            .unwrap();
    }
    enqueue_trigger(client, true).await;
    ids
}

fn old_email(id: &str, to: &str, sent: DateTime<Utc>, last_event: &str) -> SentEmail {
    SentEmail {
        id: id.into(),
        to: vec![to.into()],
        subject: Some("Тест пройден".into()),
        created_at: sent,
        last_event: last_event.into(),
    }
}

fn old_sms(id: &str, digits: &str, sent: DateTime<Utc>) -> TakenSms {
    TakenSms {
        id: id.into(),
        campaign_id: format!("c-{id}"),
        to: digits.into(),
        text: "Ваш результат готов".into(),
        from: None,
        taken_at: sent,
        status: "DELIVRD".into(),
    }
}

/// What the system before leadrelay sent, 10 minutes after each lead:
/// Айгерим an email only (to her address as she typed it in another case),
/// Алия an SMS only, Ерлан both, Нурлан (whose phone cannot be sent)
/// neither.
fn hold_what_the_old_system_sent(providers: &Providers) {
    providers.emails_book.hold(old_email(
        "old-email-aigerim",
        "Aigerim.Test0@gmail.com",
        at("12:17"),
        "delivered",
    ));
    providers.emails_book.hold(old_email(
        "old-email-erlan",
        "erlan1990test@mail.ru",
        at("15:19"),
        "opened",
    ));
    providers.book.edit(|taken| {
        taken.push(old_sms("9001", "77027654321", at("14:46")));
        taken.push(old_sms("9002", "77771112233", at("15:19")));
    });
}

type JobRow = (String, String, Option<String>, bool, Option<String>);

/// channel, status, provider id, reconciled, delivery state of a lead's jobs.
async fn jobs_of(client: &tokio_postgres::Client, lead: uuid::Uuid) -> Vec<JobRow> {
    client
        .query(
            "select channel, status, provider_message_id, reconciled_at is not null, delivery_status
             from notification_jobs where lead_id = $1 and channel <> 'lead_tracking' order by channel",
            &[&lead],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn reconcile_records_what_the_old_system_sent_sends_the_rest_once_and_a_second_run_changes_nothing()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    hold_what_the_old_system_sent(&providers);

    let dry = leadrelay(
        &db.url,
        &providers,
        &[&["reconcile"][..], &WINDOW, &["--dry-run"]].concat(),
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let report = text(&dry);
    assert!(report.contains("4 lead(s)"), "{report}");
    assert!(
        report.contains("found at Resend: old-email-aigerim of 2026-11-20 12:17 UTC, delivered"),
        "{report}"
    );
    assert!(report.contains("found at Mobizon: 9002"), "{report}");
    assert!(
        report.contains("4 found, 3 not found, 0 ambiguous, 0 unknown, 1 unusable"),
        "{report}"
    );
    // contacts masked as in the logs
    assert!(
        !report.contains("aigerim.test0@gmail.com") && report.contains("a***@gmail.com"),
        "{report}"
    );
    assert!(!report.contains("77027654321"), "{report}");
    assert!(report.contains("dry run: nothing was changed"), "{report}");
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        0
    );
    // the malformed phone is never looked up
    for request in providers.mobizon_requests("list").await {
        let body = String::from_utf8_lossy(&request.body).to_string();
        assert!(!body.contains("7476123456"), "{body}");
    }

    let real = run_on_the_day(&db.url, &providers, "reconcile");
    says(&real, "recorded 4 message(s) found at the providers");
    let found = |id: &str, state: &str| Some(id.to_string()).zip(Some(state.to_string()));
    let row = |channel: &str, status: &str, id: Option<(String, String)>| -> JobRow {
        match id {
            Some((id, state)) => (channel.into(), status.into(), Some(id), true, Some(state)),
            None => (channel.into(), status.into(), None, false, None),
        }
    };
    assert_eq!(
        jobs_of(&client, leads[0]).await,
        vec![
            row("email", "sent", found("old-email-aigerim", "delivered")),
            row("sms", "due", None)
        ]
    );
    let nurlan = jobs_of(&client, leads[1]).await;
    assert_eq!(
        (nurlan[0].0.as_str(), nurlan[0].1.as_str()),
        ("email", "due")
    );
    assert_eq!(
        (nurlan[1].0.as_str(), nurlan[1].1.as_str()),
        ("sms", "invalid")
    );
    assert_eq!(
        jobs_of(&client, leads[2]).await,
        vec![
            row("email", "due", None),
            row("sms", "sent", found("9001", "delivered"))
        ]
    );
    assert_eq!(
        jobs_of(&client, leads[3]).await,
        vec![
            row("email", "sent", found("old-email-erlan", "opened")),
            row("sms", "sent", found("9002", "delivered"))
        ]
    );
    // mirrored onto the lead at the provider's time
    let mirrored: (bool, DateTime<Utc>, Option<String>) = {
        let r = client
            .query_one(
                "select email_sent, email_sent_at, email_delivery_status from landing_leads where id = $1",
                &[&leads[0]],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(mirrored, (true, at("12:17"), Some("delivered".into())));
    // every job written carries an audit row of the operator
    let unaudited = client
        .query_one(
            "select count(*) from notification_jobs j where j.channel <> 'lead_tracking' and not exists (
               select 1 from ops_audit a where j.id = any(a.job_ids) and a.actor = 'cli:operator'
                 and a.action = 'reconcile')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(unaudited, 0);

    // the worker sends exactly the missing ones, once
    let app = start(config(&db.url, &providers)).await;
    eventually(
        Duration::from_secs(20),
        "the missing messages sent",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let emails = providers.emails().await;
    let sent_to: Vec<String> = emails
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["to"].to_string())
        .collect();
    assert_eq!(emails.len(), 2, "{sent_to:?}");
    assert!(
        sent_to.iter().any(|t| t.contains("nurlan0000@mail.ru")),
        "{sent_to:?}"
    );
    assert!(
        sent_to.iter().any(|t| t.contains("Aliya.Test1@gmail.com")),
        "{sent_to:?}"
    );
    let sms = providers.sms().await;
    assert_eq!(sms.len(), 1);
    assert!(String::from_utf8_lossy(&sms[0].body).contains("77051234567"));
    app.shutdown().await;

    // `status` shows the mark
    let status = leadrelay_cli(&db.url, &["status", &leads[3].to_string()]);
    says(
        &text(&status),
        "found at the provider by reconciliation, not sent by leadrelay",
    );

    // a second run changes nothing
    let jobs = count(&client, "select count(*) from notification_jobs").await;
    let audits = count(&client, "select count(*) from ops_audit").await;
    let again = run_on_the_day(&db.url, &providers, "reconcile");
    says(&again, "0 lead(s)");
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        jobs
    );
    assert_eq!(
        count(&client, "select count(*) from ops_audit").await,
        audits
    );
}

#[tokio::test]
async fn an_ambiguous_lead_and_a_provider_that_cannot_be_asked_get_nothing_sent() {
    // two emails to one address after the lead arrived
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    providers.emails_book.hold(old_email(
        "first",
        "aigerim.test0@gmail.com",
        at("12:17"),
        "delivered",
    ));
    providers.emails_book.hold(old_email(
        "again-by-hand",
        "aigerim.test0+x@gmail.com",
        at("16:00"),
        "delivered",
    ));
    let out = run_on_the_day(&db.url, &providers, "reconcile");
    says(&out, "ambiguous: several messages to this address");
    says(&out, "first of 2026-11-20 12:17 UTC");
    let email_jobs = client
        .query_one(
            "select count(*) from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&leads[0]],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(email_jobs, 0, "nothing is written, so nothing is sent");
    says(&out, "1 message(s) left alone");

    // Resend refuses to list (a key that may only send), Mobizon fails
    let db = fresh_db().await;
    let client = db.client().await;
    incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/emails"))
        .respond_with(
            wiremock::ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "statusCode": 401, "name": "restricted_api_key",
            "message": "This API key is restricted to only send emails"})),
        )
        .with_priority(1)
        .mount(&providers.resend)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/service/message/list"))
        .respond_with(wiremock::ResponseTemplate::new(500).set_body_string("Internal Server Error"))
        .with_priority(1)
        .mount(&providers.mobizon)
        .await;
    let out = run_on_the_day(&db.url, &providers, "reconcile");
    let report = out;
    assert!(report.contains("may not list sent emails"), "{report}");
    assert!(
        report.contains("unknown: mobizon look-up: HTTP 500"),
        "{report}"
    );
    assert!(
        report.contains("0 found, 0 not found, 0 ambiguous, 7 unknown, 1 unusable"),
        "{report}"
    );
    assert_eq!(
        count(&client, "select count(*) from notification_jobs where channel in ('email', 'sms') and status <> 'invalid'").await,
        0
    );
    assert!(providers.emails().await.is_empty() && providers.sms().await.is_empty());
}

#[tokio::test]
async fn the_walk_pages_back_to_the_windows_start_within_resends_rate_limit() {
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    client
        .execute("delete from landing_leads where id <> $1", &[&leads[0]])
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    // 2,500 emails to others, one a minute back from the newest; the lead's
    // own at index 1,950 (page 20 of 100 a page)
    let newest = at("12:17") + TimeDelta::minutes(1950);
    for i in 0..2500i64 {
        let to = if i == 1950 {
            "aigerim.test0@gmail.com".to_string()
        } else {
            format!("someone{i}@mail.ru")
        };
        providers.emails_book.hold(old_email(
            &format!("e{i:04}"),
            &to,
            newest - TimeDelta::minutes(i),
            "delivered",
        ));
    }
    providers
        .list_window
        .limit
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let window = ["--since", "2026-11-20 12:00", "--until", "2026-11-20 13:00"];
    let out = leadrelay(
        &db.url,
        &providers,
        &[&["reconcile"][..], &window, &["--dry-run"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    says(&text(&out), "found at Resend: e1950");
    let reads = providers.email_list_reads().await;
    // page 20 holds the window's start: the walk stops there
    assert_eq!(reads.len(), 20, "pages read");
    assert_eq!(
        providers
            .list_window
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "more than 2 requests in a second"
    );
    assert!(
        reads
            .iter()
            .all(|r| r.url.query().unwrap_or("").contains("limit=100"))
    );
}

#[tokio::test]
async fn a_webhook_a_day_later_applies_to_the_job_reconcile_wrote() {
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    hold_what_the_old_system_sent(&providers);
    let app = start(config(&db.url, &providers)).await;
    // a report of the old system's email before leadrelay knew it: pending
    let clicked = signed_resend(
        &app,
        "msg_before",
        "email.clicked",
        "old-email-erlan",
        at("16:00"),
    )
    .await;
    assert!(clicked.status().is_success());
    run_on_the_day(&db.url, &providers, "reconcile");
    let email_state = |lead: uuid::Uuid| {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    "select j.delivery_status, l.email_delivery_status from notification_jobs j
                     join landing_leads l on l.id = j.lead_id where j.lead_id = $1 and j.channel = 'email'",
                    &[&lead],
                )
                .await
                .unwrap();
            (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1))
        }
    };
    assert_eq!(
        email_state(leads[3]).await,
        (Some("clicked".into()), Some("clicked".into())),
        "the pending report applies once the job is recorded"
    );
    let opened = signed_resend(
        &app,
        "msg_a_day_later",
        "email.opened",
        "old-email-aigerim",
        at("12:17") + TimeDelta::days(1),
    )
    .await;
    assert!(opened.status().is_success());
    assert_eq!(
        email_state(leads[0]).await,
        (Some("opened".into()), Some("opened".into()))
    );
    // the status API says the system before leadrelay sent it
    let message = crate::app::lead_status_message(&app, leads[0], "email").await;
    assert!(message["reconciled_at"].is_string(), "{message}");
    assert_eq!(message["provider_message_id"], "old-email-aigerim");
    let sms = crate::app::lead_status_message(&app, leads[0], "sms").await;
    assert!(sms["reconciled_at"].is_null(), "{sms}");
    app.shutdown().await;
}

/// A Resend event for `email_id`, signed as Svix signs it, posted to `app`.
async fn signed_resend(
    app: &leadrelay::serve::Application,
    svix_id: &str,
    event_type: &str,
    email_id: &str,
    occurred: DateTime<Utc>,
) -> reqwest::Response {
    let event = serde_json::json!({
        "type": event_type,
        "created_at": occurred.to_rfc3339(),
        "data": {"email_id": email_id, "to": ["someone@mail.ru"]}
    });
    crate::app::post_resend_event(app, svix_id, &event).await
}

#[tokio::test]
async fn backfill_asks_the_providers_first_unless_told_not_to() {
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    // without the providers' keys it refuses, and says how to go on
    let out = leadrelay_cli(&db.url, &[&["backfill"][..], &WINDOW, &["--yes"]].concat());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("RESEND_API_KEY") && text(&out).contains("--no-provider-check"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        0
    );

    let providers = Providers::healthy().await;
    hold_what_the_old_system_sent(&providers);
    let out = run_on_the_day(&db.url, &providers, "backfill");
    says(&out, "recorded 4 message(s)");
    assert_eq!(
        jobs_of(&client, leads[3])
            .await
            .iter()
            .filter(|j| j.3)
            .count(),
        2
    );
    let audited = count(
        &client,
        "select count(*) from ops_audit where action = 'backfill'",
    )
    .await;
    assert!(audited >= 4, "{audited}");
}

#[tokio::test]
async fn the_console_asks_the_providers_for_one_lead_behind_a_confirmation_and_audits_it() {
    use crate::console::{get, post, sign_in};
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    hold_what_the_old_system_sent(&providers);
    let app = start(config(&db.url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    let (cookie, csrf) = sign_in(&base, None).await;
    let lead = leads[3];
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(
        page.contains(&format!("/ops/leads/{lead}/reconcile")),
        "{page}"
    );
    let (status, confirm) = get(&base, &format!("/ops/leads/{lead}/reconcile"), &cookie).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Ask Resend and Mobizon?"), "{confirm}");

    // another session's token, or none: nothing asked, nothing written
    let refused = post(
        &base,
        &format!("/ops/leads/{lead}/reconcile"),
        &cookie,
        &[("csrf", "forged")],
    )
    .await;
    assert_eq!(refused.status(), 403);
    assert!(providers.email_list_reads().await.is_empty());
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        0
    );

    let done = post(
        &base,
        &format!("/ops/leads/{lead}/reconcile"),
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(done.status(), 200);
    let report = done.text().await.unwrap();
    assert!(
        report.contains("found at Resend: old-email-erlan"),
        "{report}"
    );
    assert!(report.contains("found at Mobizon: 9002"), "{report}");
    assert_eq!(
        jobs_of(&client, lead).await.iter().filter(|j| j.3).count(),
        2,
        "both recorded as found"
    );
    let audited = count(
        &client,
        "select count(*) from ops_audit where actor = 'console' and action = 'reconcile' and session_id is not null",
    )
    .await;
    // the two found, and the dashboard row's job created for them
    assert_eq!(audited, 3);
    // only that lead was asked about
    assert_eq!(
        count(
            &client,
            "select count(distinct lead_id) from notification_jobs"
        )
        .await,
        1
    );
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(page.contains("found at Resend by reconciliation"), "{page}");
    assert!(
        page.contains("sent by the system before leadrelay"),
        "{page}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_lead_whose_only_rule_is_the_dashboards_still_gets_its_row_synced_by_backfill() {
    let db = fresh_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into notification_rules (source_pattern, channel, template, delay)
             values ('dashboard_only%', 'lead_tracking', 'proftest', interval '0')",
        )
        .await
        .unwrap();
    enqueue_trigger(&client, false).await;
    let lead = crate::harness::insert_as_landing(
        &client,
        Some("Тимур"),
        Some("timur@mail.ru"),
        Some("87051234599"),
        Some("dashboard_only_form"),
        None,
    )
    .await;
    enqueue_trigger(&client, true).await;
    let providers = Providers::healthy().await;
    let out = leadrelay(
        &db.url,
        &providers,
        &[
            "backfill",
            "--since",
            "2020-01-01",
            "--source",
            "dashboard%",
            "--yes",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let channels: Vec<String> = client
        .query(
            "select channel from notification_jobs where lead_id = $1",
            &[&lead],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(channels, ["lead_tracking"]);
    assert!(
        providers.email_list_reads().await.is_empty(),
        "nothing to ask a provider about"
    );
}

#[tokio::test]
async fn a_console_question_that_outlasts_a_page_changes_nothing_and_says_what_to_run() {
    use crate::console::{post, sign_in};
    let db = fresh_db().await;
    let client = db.client().await;
    let leads = incident_before_leadrelay(&client).await;
    let providers = Providers::healthy().await;
    // a long list (40 pages of other people's emails since the lead
    // arrived), each page a second slow: longer than a page can wait
    for i in 0..4000i64 {
        providers.emails_book.hold(old_email(
            &format!("other-{i:04}"),
            &format!("other{i}@mail.ru"),
            at("12:30") + TimeDelta::seconds(i),
            "delivered",
        ));
    }
    struct Slow(crate::app::ResendListing);
    impl wiremock::Respond for Slow {
        fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
            self.0.respond(request).set_delay(Duration::from_secs(1))
        }
    }
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/emails"))
        .respond_with(Slow(crate::app::ResendListing {
            book: providers.emails_book.clone(),
            window: Default::default(),
        }))
        .with_priority(1)
        .mount(&providers.resend)
        .await;
    let app = start(config(&db.url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    let (cookie, csrf) = sign_in(&base, None).await;
    let answer = post(
        &base,
        &format!("/ops/leads/{}/reconcile", leads[0]),
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(answer.status(), 504);
    let page = answer.text().await.unwrap();
    assert!(
        page.contains("Nothing was changed") && page.contains("leadrelay reconcile --since"),
        "{page}"
    );
    assert_eq!(
        count(&client, "select count(*) from notification_jobs").await,
        0
    );
    app.shutdown().await;
}
