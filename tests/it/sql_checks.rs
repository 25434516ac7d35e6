//! The operator's SQL in sql/: each check runs against the migrated schema,
//! and the worker runs as the least-privilege role of sql/06_worker_role.sql.

use std::time::Duration;

use crate::app::{
    LEAD_TRACKING_TABLE, NO_DELAY, Providers, config, count, eventually, start, unfinished,
};
use crate::harness::{fresh_db, insert_incident_leads};

fn sql(name: &str) -> String {
    std::fs::read_to_string(format!("{}/sql/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn every_operator_check_runs_against_the_schema_and_finds_the_incident_leads() {
    let db = fresh_db().await;
    let client = db.client().await;
    insert_incident_leads(&client).await;
    let rows = client
        .simple_query(&sql("01_did_these_leads_get_their_messages.sql"))
        .await
        .unwrap();
    let found = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(found, 2, "Айгерим by name and email, Алия by phone");
    for file in [
        "02_failures_last_day.sql",
        "03_overdue_jobs.sql",
        "05_funnel.sql",
    ] {
        client
            .simple_query(&sql(file))
            .await
            .unwrap_or_else(|e| panic!("{file}: {}", leadrelay::store::describe(&e)));
    }
    let failures = client
        .simple_query(&sql("02_failures_last_day.sql"))
        .await
        .unwrap();
    assert_eq!(
        failures
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        1,
        "the 10-digit phone"
    );
}

#[tokio::test]
async fn the_worker_runs_as_the_least_privilege_role() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    client
        .batch_execute(&sql("06_worker_role.sql"))
        .await
        .unwrap();
    client
        .batch_execute(&sql("06_worker_role.sql"))
        .await
        .expect("the script runs twice");
    client
        .batch_execute(
            "grant select, insert, update on public.lead_tracking to leadrelay_worker;
             alter table public.lead_tracking enable row level security;
             create policy leadrelay_worker_tracking on public.lead_tracking for all to leadrelay_worker using (true) with check (true);
             alter table public.landing_leads enable row level security;",
        )
        .await
        .unwrap();
    let worker_url = db
        .url
        .replacen("postgres://postgres@", "postgres://leadrelay_worker@", 1);
    let mut worker = leadrelay::store::connect(&worker_url).await.unwrap();
    let denied = worker.batch_execute("delete from landing_leads").await;
    assert!(denied.is_err(), "it cannot delete leads");
    let denied = worker
        .batch_execute("update landing_leads set email = 'x@y.kz'")
        .await;
    assert!(denied.is_err(), "it cannot change what people typed");

    let providers = Providers::healthy().await;
    let app = start(config(&worker_url, &providers)).await;
    insert_incident_leads(&client).await;
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'sent'"
        )
        .await,
        11
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from landing_leads where email_sent"
        )
        .await,
        4
    );
    assert_eq!(
        count(&client, "select count(*) from lead_tracking").await,
        4
    );
    // The console works as this role too: sign in, search, a lead's page,
    // an audited action, sign out.
    let base = format!("http://{}", app.local_addr());
    let (cookie, csrf) = crate::console::sign_in(&base, None).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let search = http
        .get(format!("{base}/ops/search?q=8+705+123+45+67"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 200);
    let page = search.text().await.unwrap();
    let start = page.find("/ops/leads/").unwrap();
    let lead_path = &page[start..start + 47];
    let lead = http
        .get(format!("{base}{lead_path}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(lead.status(), 200);
    let invalid: i64 = client
        .query_one(
            "select id from notification_jobs where status = 'invalid' limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let cancel = http
        .post(format!("{base}/ops/jobs/{invalid}/cancel"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("reason", "a test number")])
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 303);
    assert_eq!(count(&client, "select count(*) from ops_audit where action = 'cancel' and cardinality(changed_job_ids) = 1").await, 1);
    // consent and reconciliation work as this role too: suppress a lead's
    // phone, ask the providers about it, forget the person
    let lead_id = &lead_path["/ops/leads/".len()..];
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let cookie = cookie.clone();
        let url = format!("{base}{path}");
        async move {
            http.post(url)
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(
            format!("/ops/leads/{lead_id}/suppress/sms"),
            vec![("csrf", csrf.clone()), ("reason", "asked".into())]
        )
        .await,
        303
    );
    assert_eq!(
        post(
            format!("/ops/leads/{lead_id}/reconcile"),
            vec![("csrf", csrf.clone())]
        )
        .await,
        200
    );
    assert_eq!(
        post(
            format!("/ops/leads/{lead_id}/forget"),
            vec![("csrf", csrf.clone()), ("lead_row", "on".into())]
        )
        .await,
        200
    );
    assert_eq!(
        count(&client, &format!("select count(*) from landing_leads where id = '{lead_id}' and email is null and phone is null")).await,
        1
    );
    let out = http
        .post(format!("{base}/ops/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    app.shutdown().await;

    // A busy webhook's events go through the inbox: this role stores a group
    // there and has it applied, in one transaction, so that the service's
    // own applier (whose last look may come after the shutdown returned)
    // cannot see the group, let alone take it first.
    use leadrelay::ingest::event_batches::{APPLY_INBOX, STORE_IN_INBOX};
    let message: String = client
        .query_one(
            "select provider_message_id from notification_jobs where channel = 'email' and status = 'sent' limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tx = worker.transaction().await.unwrap();
    tx.execute(
        STORE_IN_INBOX,
        &[
            &vec!["resend"],
            &vec!["evt_least_privilege"],
            &vec!["email.delivered"],
            &vec![Some(message.as_str())],
            &vec![Some(chrono::Utc::now())],
            &vec![serde_json::json!({"type": "email.delivered", "data": {"email_id": message}})],
            &vec![Some("delivered")],
        ],
    )
    .await
    .expect("the role stores a group in the inbox");
    let applied: i32 = tx
        .query_one(APPLY_INBOX, &[&100i32])
        .await
        .expect("the role applies the inbox")
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(applied, 1);
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from notification_jobs where provider_message_id = '{message}' and delivery_status = 'delivered'")
        )
        .await,
        1
    );
    // and doctor, connected as this role, finds every privilege serve needs
    let (resend, mobizon) = crate::doctor::providers(true).await;
    let report =
        leadrelay::cli::doctor::run(&crate::doctor::args(&worker_url, &resend, &mobizon)).await;
    let (status, found) = crate::doctor::status_of(&report, "privileges");
    assert_eq!(status, leadrelay::cli::doctor::Status::Ok, "{found}");
}

/// The database's checks (the trigger's helpers) and the worker's own
/// (libphonenumber) agree on what can be sent, and on the digits.
#[tokio::test]
async fn the_databases_recipient_checks_and_the_workers_agree() {
    use leadrelay::messages::recipients;
    let db = crate::harness::fresh_db().await;
    let client = db.client().await;
    let phones = [
        "+7 (705) 123-45-67",
        "8 702 765 43 21",
        "87051234567",
        "705 123 45 67",
        "\n+7 705 123 45 67\t",
        "\u{a0}+7 777 111 22 33",
        "+7 (476) 123-45-6",
        "+7 727 250 00 00",
        "+7 495 123 45 67",
        "8 7172 55 55 55",
        "+7 916 123 45 67",
        "+7 747 123 45 67",
        "+7 771 123 45 67",
        "+1 (555) 123-4567",
        "7051234567",
        "call me",
        "",
        "()--",
    ];
    for phone in phones {
        let row = client
            .query_one(
                "select public.leadrelay_phone_problem($1), public.leadrelay_phone_digits($1)",
                &[&phone],
            )
            .await
            .unwrap();
        let (problem, digits): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        let ours = recipients::phone(Some(phone));
        assert_eq!(
            problem.is_none(),
            ours.is_ok(),
            "{phone:?}: database {problem:?}, worker {ours:?}"
        );
        if let Ok(ours) = ours {
            assert_eq!(digits.as_deref(), Some(ours.as_str()), "{phone:?}");
        }
    }
    let emails = [
        "a@b.kz",
        "a@b.kz\n",
        "\u{a0}a@b.kz\u{3000}",
        "\u{feff}a@b.kz",
        "a\u{200b}@b.kz",
        "a@b\u{202e}zk.kz",
        "no-at",
        "a..b@mail.ru",
        "a@b",
        "Aliya.Test1@gmail.com",
    ];
    for email in emails {
        let problem: Option<String> = client
            .query_one("select public.leadrelay_email_problem($1)", &[&email])
            .await
            .unwrap()
            .get(0);
        let ours = recipients::email(Some(email));
        assert_eq!(
            problem.is_none(),
            ours.is_ok(),
            "{email:?}: database {problem:?}, worker {ours:?}"
        );
    }
}

#[tokio::test]
async fn the_rust_delivery_ranks_are_the_databases() {
    use leadrelay::domain::{DeliveryState, JobStatus};
    let db = fresh_db().await;
    let client = db.client().await;
    for state in DeliveryState::ALL {
        let rank: i32 = client
            .query_one(
                "select public.leadrelay_delivery_rank($1)",
                &[&state.as_str()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rank, state.rank(), "{state}");
    }
    // every state the database ranks is one Rust names: a state added to
    // the SQL function alone is found here
    let ranked: Vec<String> = client
        .query(
            "select m[1] from regexp_matches(pg_get_functiondef('public.leadrelay_delivery_rank(text)'::regprocedure), 'when ''([a-z_]+)'' then', 'g') m",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ranked.len() >= DeliveryState::ALL.len(), "{ranked:?}");
    for name in ranked {
        assert!(
            DeliveryState::parse(&name).is_some(),
            "{name} has no Rust state"
        );
    }
    let unknown: i32 = client
        .query_one(
            "select public.leadrelay_delivery_rank('no such state')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unknown, 0);
    // and the job statuses are the table's rule (the status line of the
    // function that checks the jobs' rules)
    let definition: String = client
        .query_one(
            "select pg_get_functiondef('leadrelay.notification_jobs_check_rules()'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let check = definition
        .lines()
        .find(|l| l.contains("then 'notification_jobs_status_check'"))
        .unwrap_or_else(|| panic!("no status rule in {definition}"));
    for status in JobStatus::ALL {
        assert!(
            check.contains(&format!("'{status}'")),
            "{status} in {check}"
        );
    }
    assert_eq!(
        check.matches('\'').count(),
        2 * (JobStatus::ALL.len() + 1),
        "{check}"
    );
}

/// A renamed column fails here, not in production: every statement the
/// service and its commands run (`leadrelay::statements()`).
#[tokio::test]
async fn every_statement_of_the_service_prepares_against_the_migrated_schema() {
    let db = fresh_db().await;
    let client = db.client().await;
    for sql in leadrelay::statements() {
        client
            .prepare(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}\n{sql}", leadrelay::store::describe(&e)));
    }
}
