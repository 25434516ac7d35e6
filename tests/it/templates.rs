//! Messages as data: templates in notification_templates, rendered from what
//! a job's first claim fixed; checked before they reach anyone.

use std::time::Duration;

use leadrelay::domain::Channel;
use leadrelay::messages::templates::{Compiled, EmailContent, Variables};
use wiremock::ResponseTemplate;

use crate::app::{
    ADMIN_TOKEN, NO_DELAY, PRODUCT_URL, Providers, TestApp, config, count, eventually,
    leadrelay_cli as leadrelay, start, unfinished,
};
use crate::harness::{fresh_db, insert_as_landing};

// ------------------------------------------------ the email and SMS before templates were data

fn legacy_html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The proftest email exactly as the release before templates rendered it.
fn legacy_email(name: Option<&str>, product_url: &str) -> (String, String, String) {
    let name = name
        .map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .take(60)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|n| !n.is_empty());
    let greeting = match &name {
        Some(n) => format!("{n}, здравствуйте!"),
        None => "Здравствуйте!".to_string(),
    };
    let text = format!(
        "{greeting}\n\nВы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:\n{product_url}\n\nЕсли вы не проходили тест, просто проигнорируйте это письмо.\n"
    );
    let html = format!(
        "<!doctype html><html lang=\"ru\"><body style=\"font-family:Arial,sans-serif;line-height:1.5\">\
<p>{greeting}</p>\
<p>Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:</p>\
<p><a href=\"{url}\" style=\"display:inline-block;padding:12px 20px;background:#2f6fed;color:#fff;text-decoration:none;border-radius:6px\">Получить продукт</a></p>\
<p style=\"color:#666;font-size:13px\">Если вы не проходили тест, просто проигнорируйте это письмо.</p>\
</body></html>",
        greeting = legacy_html_escape(&greeting),
        url = legacy_html_escape(product_url),
    );
    ("Тест пройден. Получить продукт".to_string(), html, text)
}

fn legacy_sms(product_url: &str) -> String {
    format!("Тест пройден! Получите ваш продукт: {product_url}")
}

async fn seeded(client: &tokio_postgres::Client, channel: Channel) -> Compiled {
    let row = client
        .query_one(
            "select version from notification_templates where key = 'proftest_result' and channel = $1",
            &[&channel.as_str()],
        )
        .await
        .unwrap();
    let source = leadrelay::store::templates::load_version_with(
        client,
        "proftest_result",
        channel,
        row.get(0),
    )
    .await
    .unwrap()
    .unwrap();
    Compiled::compile(source).unwrap()
}

#[tokio::test]
async fn the_seeded_templates_render_todays_email_and_sms_byte_for_byte() {
    let db = fresh_db().await;
    let client = db.client().await;
    let email = seeded(&client, Channel::Email).await;
    let sms = seeded(&client, Channel::Sms).await;
    let long = "Я".repeat(500);
    for name in [
        Some("Айгерим"),
        None,
        Some(""),
        Some(" \n\t "),
        Some("<script>alert('x')</script> & \"Q\""),
        Some("{{ product_url }}{% if 1 %}x{% endif %}"),
        Some("A\u{7}\u{1b}[31mB"),
        Some(long.as_str()),
    ] {
        for url in [PRODUCT_URL, "https://academy.kz/p?a=1&b=<2>"] {
            let vars = Variables::from_sent_params(
                &serde_json::json!({"name": name, "email": "a@b.kz", "params": {}}),
                url,
            );
            let EmailContent::Inline {
                subject,
                html,
                text,
            } = email.render_email(&vars).unwrap()
            else {
                panic!("inline")
            };
            let (want_subject, want_html, want_text) = legacy_email(name, url);
            assert_eq!(subject, want_subject);
            assert_eq!(html, want_html, "{name:?}");
            assert_eq!(text.unwrap(), want_text, "{name:?}");
            assert_eq!(sms.render_sms(&vars).unwrap(), legacy_sms(url));
        }
    }
}

#[tokio::test]
async fn an_edit_while_a_job_is_retried_does_not_change_what_the_retry_sends() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // The first attempt is in flight for 2 s and then fails; the local
    // Resend answers 409 to a changed body under the same key.
    let providers = Providers::resend_fails_once(
        ResponseTemplate::new(500)
            .set_body_string("boom")
            .set_delay(Duration::from_secs(2)),
    )
    .await;
    let app = start(config(&db.url, &providers)).await;
    insert_as_landing(
        &client,
        Some("Айгерим"),
        Some("first@example.com"),
        None,
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(10), "the first attempt", || async {
        !providers.emails().await.is_empty()
    })
    .await;
    client
        .batch_execute(
            "update notification_templates set subject = 'Новая тема', html = '<p>Новое письмо {{ product_url }}</p>'
              where key = 'proftest_result' and channel = 'email'",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the retry sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'sent'",
        )
        .await
            == 1
    })
    .await;
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 2);
    assert_eq!(
        emails[0].body, emails[1].body,
        "the retry's body is the first one's"
    );
    let first: serde_json::Value = serde_json::from_slice(&emails[0].body).unwrap();
    assert_eq!(first["subject"], "Тест пройден. Получить продукт");
    assert_eq!(
        // the version before the edit
        count(&client, "select count(*) from notification_jobs j where channel = 'email' and template_version = (select t.version - 1 from notification_templates t where t.key = 'proftest_result' and t.channel = 'email')").await,
        1
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from notification_templates where channel = 'email' and version = 3"
        )
        .await,
        1,
        "the edit bumped the version (2: the unsubscribe link the migrations added)"
    );

    // A lead that arrives after the edit gets the new email.
    insert_as_landing(
        &client,
        Some("Бауыржан"),
        Some("second@example.com"),
        None,
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(20), "the new lead's email", || async {
        providers.emails().await.len() == 3
    })
    .await;
    let third: serde_json::Value =
        serde_json::from_slice(&providers.emails().await[2].body).unwrap();
    assert_eq!(third["subject"], "Новая тема");
    assert_eq!(third["html"], format!("<p>Новое письмо {PRODUCT_URL}</p>"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_rule_with_its_own_params_sends_its_own_link_and_a_hosted_template_goes_to_resend()
{
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute(
            "insert into notification_templates (key, channel, subject, html, text)
             values ('webinar', 'email', 'Вебинар: {{ topic }}', '<a href=\"{{ product_url }}\">{{ topic }}</a>', '{{ product_url }}');
             insert into notification_templates (key, channel, resend_template)
             values ('hosted', 'email', 'proftest-hosted');
             insert into notification_rules (source_pattern, channel, template, delay, params)
             values ('webinar%', 'email', 'webinar', interval '0', '{\"product_url\": \"https://academy.kz/webinar\", \"topic\": \"Профессии & IT\"}'),
                    ('hosted%', 'email', 'hosted', interval '0', '{}');",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    for (email, source) in [
        ("w@example.com", "webinar_dec"),
        ("p@example.com", "proftest_main"),
        ("h@example.com", "hosted_landing"),
    ] {
        insert_as_landing(&client, Some("Ая"), Some(email), None, Some(source), None).await;
    }
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    let bodies: Vec<serde_json::Value> = providers
        .emails()
        .await
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let to = |address: &str| {
        bodies
            .iter()
            .find(|b| b["to"][0] == address)
            .unwrap_or_else(|| panic!("no email to {address}: {bodies:#?}"))
            .clone()
    };
    let webinar = to("w@example.com");
    assert_eq!(webinar["subject"], "Вебинар: Профессии & IT");
    assert_eq!(
        webinar["html"],
        "<a href=\"https://academy.kz/webinar\">Профессии &amp; IT</a>"
    );
    assert!(
        to("p@example.com")["text"]
            .as_str()
            .unwrap()
            .contains(PRODUCT_URL)
    );
    let hosted = to("h@example.com");
    assert_eq!(hosted["template"]["id"], "proftest-hosted");
    assert_eq!(hosted["template"]["variables"]["name"], "Ая");
    assert_eq!(hosted["template"]["variables"]["product_url"], PRODUCT_URL);
    assert!(hosted.get("html").is_none() && hosted.get("subject").is_none());
    app.shutdown().await;
}

/// A job is made of its own rule's params, even when another rule of the
/// same channel and template now matches the lead's source first (the old
/// rule disabled, a new one with other params added while the job waited).
#[tokio::test]
async fn a_job_takes_the_params_of_the_rule_that_made_it() {
    let db = fresh_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "update notification_rules set enabled = false;
             insert into notification_templates (key, channel, subject, html, text)
             values ('webinar', 'email', 'Вебинар: {{ topic }}', '<p>{{ topic }}</p>', '{{ topic }}');
             insert into notification_rules (source_pattern, channel, template, delay, params)
             values ('webinar_dec%', 'email', 'webinar', interval '1 hour', '{\"topic\": \"Первый\"}');",
        )
        .await
        .unwrap();
    insert_as_landing(
        &client,
        Some("Ая"),
        Some("w@example.com"),
        None,
        Some("webinar_dec"),
        None,
    )
    .await;
    client
        .batch_execute(
            "update notification_rules set enabled = false where template = 'webinar';
             insert into notification_rules (source_pattern, channel, template, delay, params)
             values ('webinar%', 'email', 'webinar', interval '1 hour', '{\"topic\": \"Второй\"}');
             update notification_jobs set status = 'due', due_at = now() where template = 'webinar';",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    eventually(Duration::from_secs(20), "the email was sent", || async {
        unfinished(&client).await == 0
    })
    .await;
    let emails = providers.emails().await;
    assert_eq!(emails.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&emails[0].body).unwrap();
    assert_eq!(body["subject"], "Вебинар: Первый", "{body:#}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_template_that_cannot_render_fails_its_job_with_the_engines_words_and_no_request() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    let providers = Providers::healthy().await;
    // serve starts with sound templates; the marketer's edits come later
    let app = start(config(&db.url, &providers)).await;
    client
        .batch_execute(
            "update notification_templates set body = 'Привет, {{ nmae }}!' where channel = 'sms';
             update notification_templates set html = '<p>{% if name %}{{ name }</p>' where channel = 'email';
             insert into notification_rules (source_pattern, channel, template, delay)
             values ('proftest%', 'email', 'no_such_template', interval '0');",
        )
        .await
        .unwrap();
    insert_as_landing(
        &client,
        Some("Ая"),
        Some("a@example.com"),
        Some("+7 705 123 45 67"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    let error = |channel: &'static str, template: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "select status, last_error from notification_jobs where channel = $1 and template = $2",
                    &[&channel, &template],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, String>(1))
        }
    };
    let (status, sms) = error("sms", "proftest_result").await;
    assert_eq!(status, "failed");
    assert!(
        sms.contains("template proftest_result (sms) version 2, body"),
        "{sms}"
    );
    assert!(sms.contains("undefined"), "{sms}");
    let (status, email) = error("email", "proftest_result").await;
    assert_eq!(status, "failed");
    assert!(email.contains("html, line 1"), "{email}");
    assert!(email.contains("syntax error"), "{email}");
    let (status, missing) = error("email", "no_such_template").await;
    assert_eq!(status, "failed");
    assert!(
        missing.contains("no template \"no_such_template\" for channel email"),
        "{missing}"
    );
    assert!(providers.emails().await.is_empty());
    assert!(providers.sms().await.is_empty());
    app.shutdown().await;

    // The check names each problem and fails; serve still starts (a
    // template never stops the webhooks, the console or other messages),
    // and doctor and the console's front page say what is wrong.
    let check = leadrelay(&db.url, &["templates", "check"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!check.status.success(), "{out}");
    assert!(out.contains("FAIL  rule"), "{out}");
    // a typo reads as a metadata key the sample lead is given: a warning
    // naming it, and the leads without such a key fail (above)
    assert!(out.contains("needs metadata key(s) nmae"), "{out}");
    assert!(out.contains("html, line 1"), "{out}");
    assert!(out.contains("no template no_such_template"), "{out}");
    assert!(out.contains("2 template problem(s)"), "{out}");
    let app = leadrelay::serve::Application::build(config(&db.url, &providers))
        .await
        .expect("serve starts with broken templates");
    let front = crate::app::ops_page(&app).await;
    assert!(front.contains("A template cannot be sent"), "{front}");
    assert!(front.contains("no_such_template"), "{front}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_template_reading_a_metadata_key_starts_sends_real_leads_and_a_broken_one_stops_only_its_jobs()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute(crate::app::LEAD_TRACKING_TABLE)
        .await
        .unwrap();
    // the marketer uses the city the landing keeps in metadata, in the SMS
    // (documented: every metadata key is a variable), and breaks the email
    client
        .batch_execute(
            "update notification_templates set body = 'Привет из {{ city }}! {{ metadata.city }}' where channel = 'sms';
             update notification_templates set html = '<p>{% if name %}{{ name }</p>' where channel = 'email';",
        )
        .await
        .unwrap();
    let check = leadrelay(&db.url, &["templates", "check"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("needs metadata key(s) city"), "{out}");
    assert!(out.contains("FAIL"), "the broken email: {out}");

    // a serve process, as systemd starts it, comes up and stays up
    let providers = Providers::healthy().await;
    let mut serve = crate::app::ServeProcess::start(&db.url, &providers, &[]);
    let with_city = insert_as_landing(
        &client,
        Some("Ая"),
        Some("a@example.com"),
        Some("+7 705 123 45 67"),
        Some("proftest_main"),
        Some(&serde_json::json!({"city": "Алматы"})),
    )
    .await;
    let without = insert_as_landing(
        &client,
        Some("Бек"),
        Some("b@example.com"),
        Some("+7 705 765 43 21"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(30), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    let sms: Vec<String> = providers
        .sms()
        .await
        .iter()
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .find(|(k, _)| k == "text")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        sms,
        ["Привет из Алматы! Алматы"],
        "the lead with a city gets its SMS"
    );
    let job = |lead, channel| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "select status, coalesce(last_error, '') from notification_jobs where lead_id = $1 and channel = $2",
                    &[&lead, &channel],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, String>(1))
        }
    };
    let (status, error) = job(without, "sms").await;
    assert_eq!(status, "failed", "a lead without the key cannot render it");
    assert!(error.contains("undefined"), "{error}");
    for lead in [with_city, without] {
        let (status, error) = job(lead, "email").await;
        assert_eq!(status, "failed");
        assert!(error.contains("html, line 1"), "{error}");
    }
    assert!(
        providers.emails().await.is_empty(),
        "the broken email is never sent"
    );
    assert_eq!(
        job(with_city, "lead_tracking").await.0,
        "sent",
        "other jobs go on"
    );
    assert!(serve.is_running(), "serve is still up");
    serve.terminate();
}

#[tokio::test]
async fn a_job_whose_template_version_was_deleted_fails_with_that_reason_not_another_email() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    // The first attempt fixes version 1 and fails (Resend is down); the
    // service stops; someone edits the template and deletes the old version
    // by hand; a new process (nothing cached) takes the job again.
    let down = Providers::empty().await;
    crate::app::Providers::mount_resend(&down, ResponseTemplate::new(500).set_body_string("down"))
        .await;
    let mut cfg = config(&db.url, &down);
    cfg.worker.backoff.base = Duration::from_secs(30);
    cfg.worker.backoff.max = Duration::from_secs(30);
    let first = start(cfg).await;
    insert_as_landing(
        &client,
        Some("Ая"),
        Some("a@example.com"),
        None,
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(10), "the first attempt failed", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'email' and status = 'scheduled' and attempts = 1").await == 1
    })
    .await;
    first.shutdown().await;
    client
        .batch_execute(
            "update notification_templates set subject = 'Другое' where channel = 'email';
             delete from notification_template_versions v where v.channel = 'email'
               and v.version = (select j.template_version from notification_jobs j where j.channel = 'email');
             update notification_jobs set due_at = now() where channel = 'email';",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let second = start(config(&db.url, &providers)).await;
    eventually(Duration::from_secs(20), "the email job ended", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'email' and status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    let error: String = client
        .query_one(
            "select last_error from notification_jobs where channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("version 2, which this job was first rendered with, no longer exists"),
        "{error}"
    );
    assert!(
        providers.emails().await.is_empty(),
        "no other email instead"
    );
    second.shutdown().await;
}

#[tokio::test]
async fn fix_the_template_then_retry_sends_the_fixed_one() {
    let TestApp {
        db,
        client,
        providers,
        app,
    } = TestApp::start(&[NO_DELAY], Providers::healthy().await).await;
    client
        .batch_execute(
            "update notification_templates set body = 'Привет, {{ nmae }}!' where channel = 'sms'",
        )
        .await
        .unwrap();
    insert_as_landing(
        &client,
        Some("Ая"),
        None,
        Some("+7 705 123 45 67"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(20), "the SMS failed", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel = 'sms' and status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    client
        .batch_execute(
            "update notification_templates set body = 'Привет, {{ name }}!' where channel = 'sms'",
        )
        .await
        .unwrap();
    let job: i64 = client
        .query_one(
            "select id from notification_jobs where channel = 'sms'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = leadrelay(&db.url, &["retry", &job.to_string(), "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(20), "the SMS sent", || async {
        count(&client, "select count(*) from notification_jobs where channel = 'sms' and status = 'sent' and template_version = 3").await == 1
    })
    .await;
    let sms = providers.sms().await;
    assert_eq!(sms.len(), 1);
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&sms[0].body)
        .into_owned()
        .collect();
    assert_eq!(form["text"], "Привет, Ая!");
    app.shutdown().await;
}

#[tokio::test]
async fn an_sms_longer_than_its_rules_limit_is_invalid_before_any_request() {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client
        .batch_execute(
            "update notification_rules set max_sms_segments = 1 where channel = 'sms';
             update notification_templates set body = 'Здравствуйте, {{ name }}! Тест пройден, результат ждёт вас: {{ product_url }}' where channel = 'sms';",
        )
        .await
        .unwrap();
    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    insert_as_landing(
        &client,
        Some("Айгерим Нурсултановна"),
        Some("a@example.com"),
        Some("+7 705 123 45 67"),
        Some("proftest_main"),
        None,
    )
    .await;
    eventually(Duration::from_secs(20), "every job finished", || async {
        unfinished(&client).await == 0
    })
    .await;
    let row = client
        .query_one(
            "select status, last_error from notification_jobs where channel = 'sms'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "invalid");
    let error: String = row.get(1);
    assert!(
        error.contains("UCS-2, 2 segments, more than the rule's max_sms_segments (1)"),
        "{error}"
    );
    assert!(providers.sms().await.is_empty());
    app.shutdown().await;
    // the check warns, and passes
    let check = leadrelay(&db.url, &["templates", "check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("warn  rule"), "{out}");
    assert!(
        out.contains("2 segments, more than the rule's max_sms_segments (1)"),
        "{out}"
    );
}

#[tokio::test]
async fn preview_shows_a_leads_messages_as_they_go_in_the_terminal_and_on_the_ops_page() {
    let db = fresh_db().await;
    let client = db.client().await;
    let lead = insert_as_landing(
        &client,
        Some("<b>Ая</b>"),
        Some("aya@example.com"),
        Some("+7 705 123 45 67"),
        Some("proftest_main"),
        None,
    )
    .await;
    let out = leadrelay(&db.url, &["preview", "aya@example.com"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("lead {lead}")), "{text}");
    assert!(
        text.contains("── email proftest_result v2 (scheduled)"),
        "{text}"
    );
    assert!(
        text.contains("Subject: Тест пройден. Получить продукт"),
        "{text}"
    );
    assert!(text.contains("<b>Ая</b>, здравствуйте!"), "as text: {text}");
    assert!(
        text.contains(&format!(
            "Тест пройден! Получите ваш продукт: {PRODUCT_URL}"
        )),
        "{text}"
    );
    assert!(text.contains("[62 characters, UCS-2, 1 segment]"), "{text}");
    // a template the lead has no job for
    let out = leadrelay(
        &db.url,
        &[
            "preview",
            "+7 705 123 45 67",
            "--template",
            "proftest_result",
        ],
    );
    assert!(out.status.success());
    // hostile and unknown queries get a clear error
    for bad in ["", "12345", "nobody@example.com"] {
        let out = leadrelay(&db.url, &["preview", bad]);
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
    }

    let providers = Providers::healthy().await;
    let app = start(config(&db.url, &providers)).await;
    let page = reqwest::Client::new()
        .get(format!(
            "http://{}/ops/preview?lead={lead}",
            app.local_addr()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Тест пройден. Получить продукт"), "{page}");
    assert!(page.contains("62 characters, UCS-2, 1 segment"), "{page}");
    assert!(
        !page.contains("<b>Ая</b>"),
        "the name is escaped on the page"
    );
    assert!(page.contains("<iframe sandbox"), "{page}");
    let anonymous = reqwest::get(format!(
        "http://{}/ops/preview?lead={lead}",
        app.local_addr()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        !anonymous.contains("Тест пройден"),
        "closed without the token"
    );
    app.shutdown().await;
}
