//! The ops console over plain HTTP: sessions, CSRF, the sign-in limit, its
//! headers, search, a lead's page, the actions and their audit, `/metrics`
//! on its own address. The browser test (`ops_page.rs`) drives the same
//! pages in Chromium.

use std::time::Duration;

use crate::app::{ADMIN_TOKEN, HOUR_DELAY, Providers, config, count, eventually, lead_job, start};
use crate::harness::{fresh_db, insert_proftest_lead_with_phone};

/// The service on `db_url` with healthy stand-in providers, and its address.
async fn serving(db_url: &str) -> (Providers, leadrelay::serve::Application, String) {
    let providers = Providers::healthy().await;
    let app = start(config(db_url, &providers)).await;
    let base = format!("http://{}", app.local_addr());
    (providers, app, base)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form; returns the cookie pair and the session's
/// CSRF token (read from the page's sign-out form).
pub async fn sign_in(base: &str, forwarded_for: Option<&str>) -> (String, String) {
    let mut request = http()
        .post(format!("{base}/ops/login"))
        .form(&[("token", ADMIN_TOKEN)]);
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 303, "signed in");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = get(base, "/ops", &cookie).await.1;
    (cookie, csrf_of(&page))
}

/// The job ids a bulk retry's confirmation page carries in its form.
pub fn listed_jobs(confirm: &str) -> String {
    let start = confirm.find("name=jobs value=\"").expect("a jobs field") + 17;
    confirm[start..start + confirm[start..].find('"').unwrap()].to_string()
}

pub fn csrf_of(page: &str) -> String {
    let start = page
        .find("name=csrf value=\"")
        .expect("a form with a CSRF token")
        + 17;
    page[start..start + page[start..].find('"').unwrap()].to_string()
}

pub async fn get(base: &str, path: &str, cookie: &str) -> (reqwest::StatusCode, String) {
    let r = http()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

pub async fn post(
    base: &str,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http()
        .post(format!("{base}{path}"))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_live_in_the_database_and_signing_out_revokes_them() {
    let db = fresh_db().await;
    let client = db.client().await;
    let (_providers, app, base) = serving(&db.url).await;

    let response = http()
        .post(format!("{base}/ops/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for part in ["leadrelay_ops=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain http: a Secure cookie would be dropped"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let value = cookie.trim_start_matches("leadrelay_ops=");
    assert!(
        value.len() >= 43,
        "a random value, not a digest of the token"
    );
    let stored: Vec<u8> = client
        .query_one("select token_hash from ops_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(stored, value.as_bytes(), "only its digest is stored");

    // a second sign-in gets another value
    let (other_cookie, other_csrf) = sign_in(&base, None).await;
    assert_ne!(other_cookie, cookie);

    let (status, page) = get(&base, "/ops", &cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("Last leads"));
    let csrf = csrf_of(&page);
    assert_ne!(csrf, other_csrf, "each session has its own CSRF token");

    // signing out needs this session's token
    let refused = post(&base, "/ops/logout", &cookie, &[]).await;
    assert_eq!(refused.status(), 403);
    let refused = post(&base, "/ops/logout", &cookie, &[("csrf", &other_csrf)]).await;
    assert_eq!(refused.status(), 403);
    assert!(
        get(&base, "/ops", &cookie).await.1.contains("Last leads"),
        "still signed in"
    );

    let out = post(&base, "/ops/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (_, page) = get(&base, "/ops", &cookie).await;
    assert!(
        page.contains("action=/ops/login") && !page.contains("Last leads"),
        "the old cookie opens nothing"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from ops_sessions where revoked_at is not null"
        )
        .await,
        1
    );
    // the other session is untouched
    assert!(
        get(&base, "/ops", &other_cookie)
            .await
            .1
            .contains("Last leads")
    );

    // an expired or long-idle session opens nothing either
    client
        .batch_execute("update ops_sessions set last_seen_at = now() - interval '3 hours' where revoked_at is null")
        .await
        .unwrap();
    assert!(
        get(&base, "/ops", &other_cookie)
            .await
            .1
            .contains("action=/ops/login")
    );
    let (cookie, _) = sign_in(&base, None).await;
    client
        .batch_execute("update ops_sessions set expires_at = now() - interval '1 second' where revoked_at is null")
        .await
        .unwrap();
    assert!(
        get(&base, "/ops", &cookie)
            .await
            .1
            .contains("action=/ops/login")
    );

    // hostile cookies
    for forged in [
        "leadrelay_ops=".to_string(),
        format!("leadrelay_ops={}", "A".repeat(43)),
        format!("leadrelay_ops={}", "x".repeat(100_000)),
        "leadrelay_ops=' or 1=1 --".into(),
    ] {
        let response = http()
            .get(format!("{base}/ops"))
            .header("cookie", forged)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(!text.contains("Last leads"));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn sign_ins_are_limited_per_address_and_the_cookie_is_secure_behind_https() {
    let db = fresh_db().await;
    let providers = Providers::healthy().await;
    let mut config = config(&db.url, &providers);
    // the test talks from 127.0.0.1, standing in for a reverse proxy
    config.console.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = start(config).await;
    let base = format!("http://{}", app.local_addr());

    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    let attacker = http();
    for _ in 0..300 {
        let r = attacker
            .post(format!("{base}/ops/login"))
            .header("x-forwarded-for", "203.0.113.7")
            .form(&[("token", "wrong-token-wrong-token")])
            .send()
            .await
            .unwrap();
        statuses.push((
            r.status().as_u16(),
            r.headers().get("retry-after").is_some(),
        ));
    }
    let elapsed = started.elapsed().as_secs();
    assert!(
        statuses[..10].iter().all(|(s, _)| *s == 401),
        "{statuses:?}"
    );
    // one more attempt every 6 s: the rest are refused unread
    let tried = statuses[10..].iter().filter(|(s, _)| *s != 429).count() as u64;
    assert!(
        tried <= elapsed / 6 + 1,
        "{tried} attempts in {elapsed} s past the burst"
    );
    assert!(
        statuses[10..]
            .iter()
            .all(|(s, retry)| *s == 401 || (*s == 429 && *retry))
    );
    // even the right token waits, from that address
    let r = http()
        .post(format!("{base}/ops/login"))
        .header("x-forwarded-for", "203.0.113.7")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("set-cookie").is_none());

    // another address is not held up; behind an https proxy the cookie is
    // Secure and __Host- prefixed
    let r = http()
        .post(format!("{base}/ops/login"))
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-leadrelay_ops=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_console_page_says_no_store_and_no_framing() {
    let db = fresh_db().await;
    let client = db.client().await;
    let (_providers, app, base) = serving(&db.url).await;
    let lead = insert_proftest_lead_with_phone(&client, "Айгерим", "a@b.kz", "87051234567").await;
    let job = lead_job(&client, lead, "sms").await.0;
    let (cookie, _) = sign_in(&base, None).await;
    for path in [
        "/ops".to_string(),
        "/ops/search?q=Айгерим".into(),
        format!("/ops/leads/{lead}"),
        format!("/ops/jobs/{job}/cancel"),
        "/ops/leads/not-a-uuid".into(),
        "/ops/search?q=".into(),
    ] {
        let r = http()
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
            "{path}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
    }
    // the sign-in form too
    let r = http().get(format!("{base}/ops")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    app.shutdown().await;
}

#[tokio::test]
async fn search_finds_a_lead_however_its_phone_or_email_is_typed_and_masks_contacts() {
    let db = fresh_db().await;
    let client = db.client().await;
    let (_providers, app, base) = serving(&db.url).await;
    let lead = insert_proftest_lead_with_phone(
        &client,
        "Алия Сапарова",
        "Aliya.Test1@Gmail.com ",
        "+7 (705) 904-44-67",
    )
    .await;
    insert_proftest_lead_with_phone(&client, "100% _real_", "x@y.kz", "87010000000").await;
    let (cookie, _) = sign_in(&base, None).await;
    // (a name's case folds as the database's locale folds it: Supabase's
    // does for Cyrillic, the test cluster's C locale does not)
    for q in [
        "8 705 904 44 67",
        "87059044467",
        "+7 705 904 4467",
        "705 904 44 67",
        "aliya.test1@gmail.com",
        "Сапаров",
        &lead.to_string(),
    ] {
        let (status, page) = get(&base, &format!("/ops/search?q={}", urlencode(q)), &cookie).await;
        assert_eq!(status, 200, "{q}");
        assert!(
            page.contains(&format!("/ops/leads/{lead}")),
            "{q} finds the lead"
        );
        assert!(
            !page.contains("904-44-67") && !page.contains("Aliya.Test1@Gmail.com"),
            "{q}: contacts masked in the list"
        );
    }
    // a wildcard typed is a character, not a pattern
    let (_, page) = get(
        &base,
        &format!("/ops/search?q={}", urlencode("00% _re")),
        &cookie,
    )
    .await;
    assert!(page.contains("100% _real_") && !page.contains(&lead.to_string()));
    for (q, status) in [
        ("", 400),
        ("ab", 400),
        ("+7 705", 400),
        (&"x".repeat(300) as &str, 400),
        ("nobody-at-all", 200),
    ] {
        let (got, page) = get(&base, &format!("/ops/search?q={}", urlencode(q)), &cookie).await;
        assert_eq!(got.as_u16(), status, "{q}");
        assert!(!page.contains("/ops/leads/"), "{q}");
    }
    // the lead's page shows the contacts in full
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(page.contains("+7 (705) 904-44-67") && page.contains("Aliya.Test1@Gmail.com"));
    let (status, _) = get(
        &base,
        &format!("/ops/leads/{}", uuid::Uuid::new_v4()),
        &cookie,
    )
    .await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn actions_need_the_sessions_own_token_run_the_cli_sql_and_are_audited() {
    let db = fresh_db().await;
    let client = db.client().await;
    // the jobs wait an hour, so only the console moves them
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let (providers, app, base) = serving(&db.url).await;
    let lead =
        insert_proftest_lead_with_phone(&client, "Ерлан", "erlan@mail.ru", "87771112233").await;
    let email = lead_job(&client, lead, "email").await.0;
    let sms = lead_job(&client, lead, "sms").await.0;
    client
        .execute(
            "update notification_jobs set status = 'failed', finished_at = now(), last_error = 'Resend 401: API key is invalid' where id = $1",
            &[&email],
        )
        .await
        .unwrap();
    let (cookie, csrf) = sign_in(&base, None).await;
    let (other_cookie, other_csrf) = sign_in(&base, None).await;

    // refused: no token, another session's token, the bearer, a GET
    let retry = format!("/ops/jobs/{email}/retry");
    for (cookie, form) in [
        (&cookie, vec![]),
        (&cookie, vec![("csrf", other_csrf.as_str())]),
        (&other_cookie, vec![("csrf", csrf.as_str())]),
        (&cookie, vec![("csrf", "")]),
    ] {
        let r = post(&base, &retry, cookie, &form).await;
        assert_eq!(r.status(), 403);
    }
    let r = http()
        .post(format!("{base}{retry}"))
        .bearer_auth(ADMIN_TOKEN)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the bearer token reads; it does not act");
    assert_eq!(
        lead_job(&client, lead, "email").await.1,
        "failed",
        "nothing changed"
    );
    assert_eq!(count(&client, "select count(*) from ops_audit").await, 0);

    // the confirmation page, then the action
    let (status, page) = get(&base, &retry, &cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("Resend 401: API key is invalid") && page.contains("Retry"));
    let r = post(&base, &retry, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    eventually(
        Duration::from_secs(10),
        "the retried email is sent",
        || async { lead_job(&client, lead, "email").await.1 == "sent" },
    )
    .await;
    assert_eq!(providers.emails().await.len(), 1);
    let audit = client
        .query_one("select action, job_ids, changed_job_ids, lead_ids, session_id, actor, client_addr from ops_audit", &[])
        .await
        .unwrap();
    assert_eq!(audit.get::<_, &str>(0), "retry");
    assert_eq!(audit.get::<_, Vec<i64>>(1), vec![email]);
    assert_eq!(audit.get::<_, Vec<i64>>(2), vec![email]);
    assert_eq!(audit.get::<_, Vec<uuid::Uuid>>(3), vec![lead]);
    assert!(audit.get::<_, Option<i64>>(4).is_some());
    assert_eq!(audit.get::<_, &str>(5), "console");
    assert_eq!(audit.get::<_, Option<&str>>(6), Some("127.0.0.1"));
    // retrying again: the action no longer applies
    let (status, _) = get(&base, &retry, &cookie).await;
    assert_eq!(status, 409);
    let r = post(&base, &retry, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        count(&client, &format!("select count(*) from ops_audit where changed_job_ids = '{{}}' and {email} = any(job_ids)")).await,
        1,
        "asked, nothing changed, recorded"
    );

    // cancel needs a reason; then the SMS is never sent
    let cancel = format!("/ops/jobs/{sms}/cancel");
    let r = post(
        &base,
        &cancel,
        &cookie,
        &[("csrf", &csrf), ("reason", "  ")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(lead_job(&client, lead, "sms").await.1, "scheduled");
    let r = post(
        &base,
        &cancel,
        &cookie,
        &[("csrf", &csrf), ("reason", "asked not to be contacted <b>")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(lead_job(&client, lead, "sms").await.1, "cancelled");
    client
        .batch_execute("update notification_jobs set due_at = now() - interval '1 minute'; select promote_due_notification_jobs();")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        providers.sms().await.is_empty(),
        "a cancelled SMS is never sent"
    );
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(page.contains("cancelled by an operator: asked not to be contacted &lt;b&gt;"));
    assert!(page.contains("operator action <b>cancel</b> by console"));
    let mirrored: Option<String> = client
        .query_one(
            "select sms_error from landing_leads where id = $1",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mirrored.as_deref(),
        Some("cancelled by an operator: asked not to be contacted <b>")
    );

    // send now: a scheduled message goes at once
    let later =
        insert_proftest_lead_with_phone(&client, "Нурлан", "nurlan@mail.ru", "87013334455").await;
    let later_sms = lead_job(&client, later, "sms").await.0;
    let r = post(
        &base,
        &format!("/ops/jobs/{later_sms}/send-now"),
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    eventually(Duration::from_secs(10), "sent now", || async {
        lead_job(&client, later, "sms").await.1 == "sent"
    })
    .await;

    // hostile paths and forms
    for path in [
        "/ops/jobs/abc/retry",
        "/ops/jobs/1/delete",
        "/ops/jobs/-1/retry",
        "/ops/jobs/99999999/retry",
    ] {
        let r = post(&base, path, &cookie, &[("csrf", &csrf)]).await;
        assert!(r.status() == 404, "{path}: {}", r.status());
    }
    let huge = "x".repeat(300 * 1024);
    let r = post(
        &base,
        &format!("/ops/jobs/{later_sms}/cancel"),
        &cookie,
        &[("csrf", &csrf), ("reason", &huge)],
    )
    .await;
    assert_eq!(r.status(), 413);
    let long = "y".repeat(600);
    let r = post(
        &base,
        &format!("/ops/jobs/{later_sms}/cancel"),
        &cookie,
        &[("csrf", &csrf), ("reason", &long)],
    )
    .await;
    assert_eq!(r.status(), 400);
    app.shutdown().await;
}

#[tokio::test]
async fn bulk_retry_takes_the_failures_the_front_page_lists() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let (_providers, app, base) = serving(&db.url).await;
    for i in 0..5 {
        insert_proftest_lead_with_phone(
            &client,
            &format!("Lead {i}"),
            &format!("l{i}@mail.ru"),
            &format!("8701000000{i}"),
        )
        .await;
    }
    // three emails failed today, one failed two days ago (not listed)
    client
        .batch_execute(
            "update notification_jobs set status = 'failed', finished_at = now(), last_error = 'Resend 401: API key is invalid'
              where channel = 'email' and id in (select id from notification_jobs where channel = 'email' order by id limit 4);
             update notification_jobs set updated_at = now() - interval '2 days', finished_at = now() - interval '2 days'
              where id = (select max(id) from notification_jobs where status = 'failed');",
        )
        .await
        .unwrap();
    let (cookie, csrf) = sign_in(&base, None).await;
    let (_, front) = get(&base, "/ops", &cookie).await;
    assert!(front.contains("Retry the 3 failed message(s) listed"));
    let (_, confirm) = get(&base, "/ops/failures/retry", &cookie).await;
    let jobs = &listed_jobs(&confirm);
    assert_eq!(jobs.split(',').count(), 3);
    let r = post(&base, "/ops/failures/retry", &cookie, &[("jobs", jobs)]).await;
    assert_eq!(r.status(), 403, "no token, nothing retried");
    let r = post(
        &base,
        "/ops/failures/retry",
        &cookie,
        &[("csrf", &csrf), ("jobs", "1,x")],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = post(
        &base,
        "/ops/failures/retry",
        &cookie,
        &[("csrf", &csrf), ("jobs", jobs)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<span class=bulk-done>3</span>")
    );
    eventually(Duration::from_secs(10), "three emails sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'",
        )
        .await
            == 3
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_jobs where status = 'failed'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&client, "select count(*) from ops_audit where action = 'bulk_retry' and cardinality(changed_job_ids) = 3 and cardinality(lead_ids) = 3").await,
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn metrics_come_from_the_background_and_may_have_their_own_address() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(HOUR_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    let mut config = config(&db.url, &providers);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    insert_proftest_lead_with_phone(&client, "A", "a@mail.ru", "87010000001").await;
    let app = start(config).await;
    let base = format!("http://{}", app.local_addr());
    let main = http().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 404, "not on the public address");
    let text = http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // the recorder is process-wide (other tests' apps set it too): the
    // figures themselves are checked through the console's queue chart
    assert!(
        text.contains("leadrelay_jobs{status=\"scheduled\",channel=\"email\"}"),
        "{text}"
    );
    assert!(text.contains("leadrelay_job_gauges_updated_seconds"));
    assert!(
        !text.contains("status=\"sent\""),
        "terminal states are counters, not gauges"
    );
    app.shutdown().await;
}

/// The sign-in form with the right token, from `addr` (behind the trusted
/// proxy), with `cookie` when given.
async fn sign_in_from(base: &str, addr: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(format!("{base}/ops/login"))
        .header("x-forwarded-for", addr)
        .form(&[("token", ADMIN_TOKEN)]);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn bearer_guesses_count_against_the_same_limit_on_every_route_and_a_remembered_browser_still_signs_in()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_proftest_lead_with_phone(&client, "Ая", "a@mail.ru", "87011112233").await;
    let providers = Providers::healthy().await;
    let mut config = config(&db.url, &providers);
    config.console.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = start(config).await;
    let base = format!("http://{}", app.local_addr());
    let office = "203.0.113.7";

    // The operator signed in from the office before: the browser keeps a
    // device cookie beside the session.
    let r = sign_in_from(&base, office, None).await;
    assert_eq!(r.status(), 303);
    let device = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("leadrelay_device="))
        .expect("a device cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(device.len() > 40, "{device}");

    // A script that knows the token is never held up.
    for _ in 0..30 {
        let r = http()
            .get(format!("{base}/leads/{lead}/status"))
            .header("x-forwarded-for", "192.0.2.50")
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Guesses through the bearer header, from the office's address, on the
    // status API and on the console's pages.
    let mut statuses = Vec::new();
    for i in 0..300 {
        let path = if i % 2 == 0 {
            format!("/leads/{lead}/status")
        } else {
            "/ops".to_string()
        };
        let r = http()
            .get(format!("{base}{path}"))
            .header("x-forwarded-for", office)
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push((
            path.starts_with("/ops"),
            r.status().as_u16(),
            r.headers().get("retry-after").is_some(),
        ));
    }
    let api_401 = statuses
        .iter()
        .filter(|(ops, s, _)| !ops && *s == 401)
        .count();
    let limited = statuses
        .iter()
        .filter(|(_, s, retry)| *s == 429 && *retry)
        .count();
    assert!(api_401 <= 10, "at most the burst is checked: {statuses:?}");
    assert!(limited >= 280, "{limited} of 300 refused with Retry-After");
    assert!(
        statuses.iter().any(|(ops, s, _)| *ops && *s == 429),
        "the console's pages count too"
    );

    // From that address the right token now waits, through the header and
    // through the form, for anyone without a device cookie...
    let r = http()
        .get(format!("{base}/leads/{lead}/status"))
        .header("x-forwarded-for", office)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = sign_in_from(&base, office, None).await;
    assert_eq!(r.status(), 429);
    // ...and a forged device cookie proves nothing
    let r = sign_in_from(&base, office, Some("leadrelay_device=00.00")).await;
    assert_eq!(r.status(), 429);

    // The operator's own browser gets in.
    let r = sign_in_from(&base, office, Some(&device)).await;
    assert_eq!(r.status(), 303, "the remembered browser signs in");
    app.shutdown().await;
}

/// The console's "Send again" of job `job`, confirmed.
async fn send_again(base: &str, cookie: &str, csrf: &str, job: i64) -> reqwest::Response {
    post(
        base,
        &format!("/ops/jobs/{job}/send-again"),
        cookie,
        &[("csrf", csrf)],
    )
    .await
}

/// What a provider's delivery report leaves on job `job`.
async fn report_delivery(client: &tokio_postgres::Client, job: i64, status: &str) {
    client
        .execute(
            "update notification_jobs set delivery_status = $2, delivery_status_at = now() where id = $1",
            &[&job, &status],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bounced_email_is_sent_again_once_to_the_corrected_address_and_a_complaint_never_is() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(crate::app::NO_DELAY).await.unwrap();
    let (providers, app, base) = serving(&db.url).await;
    let lead =
        insert_proftest_lead_with_phone(&client, "Опечатка", "typo@mali.ru", "87015550011").await;
    eventually(Duration::from_secs(20), "the email sent", || async {
        lead_job(&client, lead, "email").await.1 == "sent"
    })
    .await;
    let (job, _) = lead_job(&client, lead, "email").await;
    // Resend reported a hard bounce (the webhook's effect, written directly)
    report_delivery(&client, job, "bounced").await;
    let (cookie, csrf) = sign_in(&base, None).await;
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert!(
        page.contains(&format!("/ops/jobs/{job}/send-again")),
        "the page offers it"
    );
    let (status, confirm) = get(&base, &format!("/ops/jobs/{job}/send-again"), &cookie).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("will likely refuse it again"), "{confirm}");

    // the operator corrects the address, then sends it again
    client
        .execute(
            "update landing_leads set email = 'typo@mail.ru' where id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    let (_, confirm) = get(&base, &format!("/ops/jobs/{job}/send-again"), &cookie).await;
    assert!(
        !confirm.contains("will likely refuse it again"),
        "{confirm}"
    );
    let before = providers.emails().await.len();
    let r = send_again(&base, &cookie, &csrf, job).await;
    assert_eq!(r.status(), 303);
    eventually(Duration::from_secs(20), "sent again", || async {
        count(
            &client,
            &format!("select count(*) from notification_jobs where id = {job} and status = 'sent' and delivery_status is null"),
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let emails = providers.emails().await;
    assert_eq!(emails.len(), before + 1, "one more email, once");
    let again: serde_json::Value = serde_json::from_slice(&emails[emails.len() - 1].body).unwrap();
    assert_eq!(again["to"], serde_json::json!(["typo@mail.ru"]));
    let key = |r: &wiremock::Request| {
        r.headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(
        key(&emails[emails.len() - 1]),
        key(&emails[before - 1]),
        "a key of its own"
    );
    assert_eq!(
        count(&client, &format!("select count(*) from ops_audit where action = 'send_again' and {job} = any(changed_job_ids)")).await,
        1
    );
    assert_eq!(
        count(&client, &format!("select count(*) from notification_jobs where id = {job} and errors::text like '%sent again by an operator%bounced%'")).await,
        1,
        "the earlier email stays in its history"
    );

    // an SMS Mobizon reported undeliverable goes again to the corrected phone
    let (sms_job, _) = lead_job(&client, lead, "sms").await;
    eventually(Duration::from_secs(20), "the SMS sent", || async {
        lead_job(&client, lead, "sms").await.1 == "sent"
    })
    .await;
    report_delivery(&client, sms_job, "undelivered").await;
    client
        .execute(
            "update landing_leads set phone = '+7 701 555 00 22' where id = $1",
            &[&lead],
        )
        .await
        .unwrap();
    let sms_before = providers.sms().await.len();
    let r = send_again(&base, &cookie, &csrf, sms_job).await;
    assert_eq!(r.status(), 303);
    eventually(Duration::from_secs(20), "the SMS sent again", || async {
        providers.sms().await.len() == sms_before + 1
    })
    .await;
    let again_sms = String::from_utf8_lossy(&providers.sms().await[sms_before].body).to_string();
    assert!(again_sms.contains("77015550022"), "{again_sms}");

    // a complaint is the person's "stop"
    report_delivery(&client, job, "complained").await;
    let r = send_again(&base, &cookie, &csrf, job).await;
    assert_eq!(r.status(), 409);
    assert_eq!(providers.emails().await.len(), before + 1);
    app.shutdown().await;
}

/// The class of the table cell whose text starts where `marker` does (the
/// `>` that closes its `<td …` tag is the marker's first character).
fn class_of_cell<'a>(page: &'a str, marker: &str) -> Option<&'a str> {
    let at = page.find(marker)?;
    let open = page[..at].rfind("<td")?;
    let tag = &page[open..at];
    let class = tag.split_once("class=")?.1;
    Some(class.split([' ', '>']).next().unwrap_or(class))
}

#[tokio::test]
async fn an_email_resend_suppressed_shows_as_a_failure_in_the_lists_and_on_its_timeline() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(crate::app::NO_DELAY).await.unwrap();
    let (_providers, app, base) = serving(&db.url).await;
    let lead = insert_proftest_lead_with_phone(
        &client,
        "Подавленный",
        "suppressed@example.com",
        "87015550012",
    )
    .await;
    eventually(Duration::from_secs(20), "the email sent", || async {
        lead_job(&client, lead, "email").await.1 == "sent"
    })
    .await;
    let message_id: String = client
        .query_one(
            "select provider_message_id from notification_jobs where lead_id = $1 and channel = 'email'",
            &[&lead],
        )
        .await
        .unwrap()
        .get(0);
    // Resend's own report, signed and posted as Svix does
    let body = serde_json::json!({
        "type": "email.suppressed",
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"email_id": message_id, "to": ["suppressed@example.com"]}
    })
    .to_string();
    let key =
        leadrelay::ingest::svix::SigningKey::parse(crate::app::RESEND_WEBHOOK_SECRET).unwrap();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let r = http()
        .post(format!("{}/webhooks/resend", base))
        .header("svix-id", "msg_suppressed_1")
        .header("svix-timestamp", &timestamp)
        .header(
            "svix-signature",
            key.signature("msg_suppressed_1", &timestamp, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    eventually(Duration::from_secs(10), "the state applied", || async {
        count(
            &client,
            &format!("select count(*) from notification_jobs where lead_id = '{lead}' and delivery_status = 'suppressed'"),
        )
        .await
            == 1
    })
    .await;

    let (cookie, _) = sign_in(&base, None).await;
    let (_, front) = get(&base, "/ops", &cookie).await;
    assert_eq!(
        class_of_cell(&front, ">sent · suppressed</td>"),
        Some("bad"),
        "the front page's last leads: {front}"
    );
    let (_, found) = get(&base, "/ops/search?q=suppressed%40example.com", &cookie).await;
    assert_eq!(
        class_of_cell(&found, ">sent · suppressed</td>"),
        Some("bad"),
        "the search's list: {found}"
    );
    let (_, page) = get(&base, &format!("/ops/leads/{lead}"), &cookie).await;
    assert_eq!(
        class_of_cell(
            &page,
            ">resend reported <b class=event>email.suppressed</b>"
        ),
        Some("bad"),
        "the timeline: {page}"
    );
    assert!(
        page.contains("job-state>sent · suppressed<"),
        "the card's state"
    );
    drop(app);
}
