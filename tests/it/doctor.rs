//! `leadrelay doctor`: all ok on a healthy database with real-looking
//! providers, and a named failure for each thing an operator gets wrong.

use std::process::Command;

use leadrelay::cli::doctor::{self, Report, Status};
use leadrelay::config::ServeArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::app;
use crate::harness::{TestDb, fresh_db};

/// Resend's domain list and Mobizon's balance, answering as the real ones do
/// for a good key (or refusing every key).
pub(crate) async fn providers(accept: bool) -> (MockServer, MockServer) {
    let resend = MockServer::start().await;
    let mobizon = MockServer::start().await;
    let (resend_answer, mobizon_answer) = if accept {
        (
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": []})),
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"code": 0, "data": {"balance": "1520.50", "currency": "KZT"}, "message": ""}),
            ),
        )
    } else {
        (
            ResponseTemplate::new(401).set_body_json(
                serde_json::json!({"statusCode": 401, "name": "invalid_api_key", "message": "API key is invalid"}),
            ),
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"code": 8, "data": "", "message": "Invalid API key"})),
        )
    };
    Mock::given(method("GET"))
        .and(path("/domains"))
        .respond_with(resend_answer)
        .mount(&resend)
        .await;
    Mock::given(method("GET"))
        .and(path("/service/user/getownbalance"))
        .respond_with(mobizon_answer)
        .mount(&mobizon)
        .await;
    if accept {
        // what reconcile reads: the list of sent emails, message/list
        Mock::given(method("GET"))
            .and(path("/emails"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"object": "list", "has_more": false, "data": []}),
            ))
            .mount(&resend)
            .await;
        Mock::given(method("POST"))
            .and(path("/service/message/list"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"code": 0, "data": {"items": [], "totalItemCount": 0}, "message": ""}),
            ))
            .mount(&mobizon)
            .await;
    } else {
        Mock::given(method("GET"))
            .and(path("/emails"))
            .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "statusCode": 401, "name": "restricted_api_key",
                "message": "This API key is restricted to only send emails"})))
            .mount(&resend)
            .await;
    }
    (resend, mobizon)
}

pub(crate) fn args(db_url: &str, resend: &MockServer, mobizon: &MockServer) -> ServeArgs {
    ServeArgs {
        database_url: Some(db_url.into()),
        resend_api_key: Some("re_test_key".into()),
        resend_api_url: Some(resend.uri()),
        email_from: Some("Академия <hello@academy.kz>".into()),
        mobizon_api_key: Some("kz_test_key".into()),
        mobizon_api_url: Some(mobizon.uri()),
        product_url: Some(app::PRODUCT_URL.into()),
        resend_webhook_secret: Some(app::RESEND_WEBHOOK_SECRET.into()),
        mobizon_webhook_token: Some(app::MOBIZON_WEBHOOK_TOKEN.into()),
        mobizon_webhook_secret: Some("mobizon-secret-key-0123456789".into()),
        admin_token: Some(app::ADMIN_TOKEN.into()),
        public_url: Some(app::PUBLIC_URL.into()),
        ..Default::default()
    }
}

async fn healthy_db() -> TestDb {
    let db = fresh_db().await;
    db.client()
        .await
        .batch_execute(app::LEAD_TRACKING_TABLE)
        .await
        .unwrap();
    db
}

pub(crate) fn status_of(report: &Report, name: &str) -> (Status, String) {
    let check = report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {}", report.text()));
    (
        check.status,
        format!("{} {}", check.found, check.fix.clone().unwrap_or_default()),
    )
}

#[tokio::test]
async fn doctor_finds_a_healthy_database_and_accepted_provider_keys_all_ok() {
    let db = healthy_db().await;
    let (resend, mobizon) = providers(true).await;
    let report = doctor::run(&args(&db.url, &resend, &mobizon)).await;
    assert!(report.ok, "{}", report.text());
    for name in [
        "configuration",
        "database",
        "listen",
        "migrations",
        "privileges",
        "landing write",
        "storage",
        "webhook inbox",
        "lead_tracking",
        "resend",
        "resend list",
        "mobizon",
        "mobizon list",
        "unsubscribe",
    ] {
        assert_eq!(status_of(&report, name).0, Status::Ok, "{}", report.text());
    }
    assert!(status_of(&report, "mobizon").1.contains("1520.50 KZT"));
    // pg_cron runs only in the cluster's cron database, not in a test database
    let (status, text) = status_of(&report, "pg_cron");
    assert_eq!(status, Status::Warn);
    assert!(
        text.contains("the worker promotes due jobs itself"),
        "{text}"
    );
}

#[tokio::test]
async fn doctor_names_webhook_events_no_one_applies_and_those_kept_with_an_error() {
    let db = healthy_db().await;
    let (resend, mobizon) = providers(true).await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into notification_event_inbox (provider, provider_event_id, event_type, payload, received_at)
             values ('resend', 'waiting', 'email.sent', '{}', now() - interval '5 minutes')",
        )
        .await
        .unwrap();
    let report = doctor::run(&args(&db.url, &resend, &mobizon)).await;
    let (status, text) = status_of(&report, "webhook inbox");
    assert_eq!(status, Status::Warn, "{text}");
    assert!(
        text.contains("1 event(s) waiting") && text.contains("leadrelay serve"),
        "{text}"
    );
    client
        .batch_execute(
            "update notification_event_inbox
                set failed_at = now(), last_error = 'new row violates check constraint (SQLSTATE 23514)'",
        )
        .await
        .unwrap();
    let report = doctor::run(&args(&db.url, &resend, &mobizon)).await;
    assert!(!report.ok, "{}", report.text());
    let (status, text) = status_of(&report, "webhook inbox");
    assert_eq!(status, Status::Fail, "{text}");
    assert!(
        text.contains("SQLSTATE 23514") && text.contains("set failed_at = null"),
        "{text}"
    );
}

#[tokio::test]
async fn doctor_names_missing_migrations_exposed_tables_refused_keys_and_an_unreachable_lead_tracking()
 {
    let db = healthy_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "delete from leadrelay.schema_migrations where version = (select max(version) from leadrelay.schema_migrations);
             grant select on public.notification_jobs to anon;
             grant usage on sequence public.ops_audit_id_seq to authenticated;",
        )
        .await
        .unwrap();
    let (resend, mobizon) = providers(false).await;
    let mut a = args(&db.url, &resend, &mobizon);
    a.lead_tracking_database_url =
        Some("postgres://postgres:secret@127.0.0.1:1/postgres?connect_timeout=2".into());
    let report = doctor::run(&a).await;
    assert!(!report.ok);
    let expect = [
        ("migrations", "not applied"),
        ("privileges", "anon may select public.notification_jobs"),
        ("resend", "refused the API key (invalid_api_key)"),
        ("mobizon", "refused the API key (code 8"),
        ("lead_tracking", "LEAD_TRACKING_DATABASE_URL"),
    ];
    for (name, words) in expect {
        let (status, text) = status_of(&report, name);
        assert_eq!(status, Status::Fail, "{name}: {}", report.text());
        assert!(text.contains(words), "{name}: {text}");
    }
    assert!(
        status_of(&report, "privileges")
            .1
            .contains("authenticated may use sequence ops_audit_id_seq"),
        "{}",
        report.text()
    );
    // a key that may only send: serve works, reconcile cannot ask
    let (status, text) = status_of(&report, "resend list");
    assert_eq!(status, Status::Warn);
    assert!(
        text.contains("may not list sent emails (restricted_api_key)"),
        "{text}"
    );
    let (status, text) = status_of(&report, "mobizon list");
    assert_eq!(status, Status::Warn);
    assert!(text.contains("refused message/list"), "{text}");
    assert!(!report.text().contains("secret@"), "{}", report.text());
    assert!(!report.text().contains("kz_test_key"), "{}", report.text());
}

/// A TCP proxy in front of PostgreSQL that passes everything but
/// notifications, as a pooler that hands statements to other sessions
/// would: LISTEN is accepted, and nothing is ever heard.
async fn proxy_dropping_notifications(upstream_port: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
            else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            tokio::spawn(async move {
                // Backend messages: a type byte, a 4-byte length, the body.
                loop {
                    let mut head = [0u8; 5];
                    if server_read.read_exact(&mut head).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                    let mut body = vec![0u8; len.saturating_sub(4)];
                    if server_read.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    if head[0] == b'A' {
                        continue;
                    }
                    if client_write.write_all(&head).await.is_err()
                        || client_write.write_all(&body).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn doctor_fails_listen_where_notifications_never_come_back_and_names_the_transaction_pooler()
{
    let db = healthy_db().await;
    let (resend, mobizon) = providers(true).await;
    let port = crate::harness::cluster().port();
    let proxy = proxy_dropping_notifications(port).await;
    let through_proxy = format!(
        "postgres://postgres@127.0.0.1:{proxy}/{}?sslmode=disable",
        db.name
    );
    let report = doctor::run(&args(&through_proxy, &resend, &mobizon)).await;
    let (status, text) = status_of(&report, "listen");
    assert_eq!(status, Status::Fail, "{}", report.text());
    assert!(text.contains("did not arrive within 1 s"), "{text}");
    assert!(text.contains("session pooler"), "{text}");
    assert_eq!(
        status_of(&report, "database").0,
        Status::Ok,
        "everything else passes the proxy"
    );

    let pooler =
        "postgresql://postgres.abcd:pw@127.0.0.1:6543/postgres?sslmode=disable&connect_timeout=1";
    let report = doctor::run(&args(pooler, &resend, &mobizon)).await;
    assert!(!report.ok);
    let (status, text) = status_of(&report, "database");
    assert_eq!(status, Status::Fail, "nothing listens on 6543 here: {text}");
    assert!(!text.contains("pw@"), "{text}");
}

#[tokio::test]
async fn doctor_names_port_6543_as_the_transaction_pooler_when_it_connects() {
    // A listener on 6543 that forwards to the test cluster, where free.
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:6543") else {
        return; // another process holds 6543 on this machine: nothing to show
    };
    drop(listener);
    let db = healthy_db().await;
    let (resend, mobizon) = providers(true).await;
    let upstream = crate::harness::cluster().port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:6543")
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    let url = format!(
        "postgres://postgres@127.0.0.1:6543/{}?sslmode=disable",
        db.name
    );
    let report = doctor::run(&args(&url, &resend, &mobizon)).await;
    let (status, text) = status_of(&report, "listen");
    assert_eq!(status, Status::Fail);
    assert!(text.contains("transaction pooler"), "{text}");
}

#[tokio::test]
async fn doctor_json_is_one_document_and_the_exit_code_is_the_verdict() {
    let db = healthy_db().await;
    let (resend, mobizon) = providers(false).await;
    let a = args(&db.url, &resend, &mobizon);
    let out = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["doctor", "--json"])
        .env_clear()
        .env("DATABASE_URL", a.database_url.unwrap())
        .env("RESEND_API_KEY", "re_wrong")
        .env("RESEND_API_URL", resend.uri())
        .env("MOBIZON_API_KEY", "wrong")
        .env("MOBIZON_API_URL", mobizon.uri())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["ok"], false);
    let checks = report["checks"].as_array().unwrap();
    let configuration = checks
        .iter()
        .find(|c| c["name"] == "configuration")
        .unwrap();
    assert_eq!(configuration["status"], "fail");
    assert!(
        configuration["found"]
            .as_str()
            .unwrap()
            .contains("is not set")
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "migrations" && c["status"] == "ok")
    );
}

#[tokio::test]
async fn doctor_fails_the_landing_write_where_service_role_lacks_execute_or_insert_and_names_the_fix()
 {
    let db = healthy_db().await;
    let client = db.client().await;
    let (resend, mobizon) = providers(true).await;
    let run = || async { doctor::run(&args(&db.url, &resend, &mobizon)).await };

    let (status, text) = status_of(&run().await, "landing write");
    assert_eq!(status, Status::Ok, "{text}");
    assert!(text.contains("as service_role"), "{text}");
    assert!(text.contains("made its 3 jobs"), "{text}");
    let leads: i64 = client
        .query_one("select count(*) from landing_leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leads, 0, "the rehearsal is rolled back");

    // the released console's index, on a function service_role may not run
    client
        .batch_execute(
            "create index landing_leads_as_released_idx on landing_leads (lower(public.leadrelay_trim(email)))",
        )
        .await
        .unwrap();
    let (status, text) = status_of(&run().await, "landing write");
    assert_eq!(status, Status::Fail, "{text}");
    assert!(text.contains("leadrelay_trim(text)"), "{text}");
    assert!(
        text.contains("grant execute on function public.leadrelay_trim(text) to \"service_role\";"),
        "{text}"
    );
    client
        .batch_execute("grant execute on function public.leadrelay_trim(text) to service_role")
        .await
        .unwrap();
    assert_eq!(status_of(&run().await, "landing write").0, Status::Ok);
    client
        .batch_execute("drop index landing_leads_as_released_idx; revoke execute on function public.leadrelay_trim(text) from service_role")
        .await
        .unwrap();

    // the grant a project of today must make itself
    client
        .batch_execute("revoke insert on landing_leads from service_role")
        .await
        .unwrap();
    let (status, text) = status_of(&run().await, "landing write");
    assert_eq!(status, Status::Fail, "{text}");
    assert!(
        text.contains("may not insert into public.landing_leads"),
        "{text}"
    );
    assert!(
        text.contains("grant insert on public.landing_leads to \"service_role\";"),
        "{text}"
    );
    client
        .batch_execute("grant insert on landing_leads to service_role")
        .await
        .unwrap();
    let (status, text) = status_of(&run().await, "landing write");
    assert_eq!(status, Status::Ok, "{text}");
}

#[tokio::test]
async fn doctor_rehearses_the_write_as_landing_role_and_names_a_missing_policy_or_role() {
    let db = healthy_db().await;
    let client = db.client().await;
    let (resend, mobizon) = providers(true).await;
    let with_role = |role: &str| {
        let mut a = args(&db.url, &resend, &mobizon);
        a.landing_role = Some(role.into());
        a
    };
    // a form writing with the anon key: granted, but RLS has no policy yet
    client
        .batch_execute("grant select, insert, update on landing_leads to anon")
        .await
        .unwrap();
    let (status, text) = status_of(&doctor::run(&with_role("anon")).await, "landing write");
    assert_eq!(status, Status::Fail, "{text}");
    assert!(text.contains("row-level security"), "{text}");
    assert!(text.contains("create policy"), "{text}");
    client
        .batch_execute(
            "create policy landing_form on landing_leads for all to anon using (true) with check (true)",
        )
        .await
        .unwrap();
    let (status, text) = status_of(&doctor::run(&with_role("anon")).await, "landing write");
    assert_eq!(status, Status::Ok, "{text}");
    assert!(text.contains("as anon"), "{text}");

    for hostile in [
        "no_such_role",
        "x\"; drop table landing_leads; --",
        &"r".repeat(500),
    ] {
        let (status, text) = status_of(&doctor::run(&with_role(hostile)).await, "landing write");
        assert_eq!(status, Status::Fail, "{hostile}: {text}");
        assert!(text.contains("is not a role of this database"), "{text}");
    }
    let table: bool = client
        .query_one(
            "select to_regclass('public.landing_leads') is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(table);
}
