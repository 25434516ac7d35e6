//! `leadrelay dev` as a new user runs it: a fresh directory, one command, one
//! INSERT, and the email and SMS show up in the outbox.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::eventually;

#[tokio::test]
async fn dev_mode_sends_a_new_leads_email_and_sms_to_the_stand_in_providers() {
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as an unprivileged user when we are root: it must reach the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev_dir = dir.path().join(".leadrelay");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["dev", "--delay", "0s"])
        .env("LEADRELAY_DEV_DIR", &dev_dir)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LEADRELAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !banner.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no banner; printed so far: {banner:#?}"));
        banner.push(line);
    }
    let text = banner.join("\n");
    let database_url = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("DATABASE_URL="))
        .expect("the banner names DATABASE_URL")
        .to_string();
    assert!(text.contains("/ops"), "{text}");
    assert!(text.contains("insert into landing_leads"), "{text}");
    assert!(text.contains("set role service_role"), "{text}");

    // the banner's example, as the landing writes: role service_role
    let client = leadrelay::store::connect(&database_url).await.unwrap();
    client
        .batch_execute("set role service_role; insert into landing_leads (name, email, phone, source) values ('Айгерим', 'aigerim@example.com', '+7 705 123 45 67', 'proftest_main'); reset role")
        .await
        .unwrap();
    let outbox = dev_dir.join("outbox");
    eventually(
        Duration::from_secs(60),
        "an email and an SMS in the outbox",
        || async {
            let names: Vec<String> = std::fs::read_dir(&outbox)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names
                .iter()
                .any(|n| n.contains("-email-") && n.ends_with(".json"))
                && names
                    .iter()
                    .any(|n| n.contains("-sms-") && n.ends_with(".json"))
        },
    )
    .await;
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let email: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            files
                .iter()
                .find(|p| {
                    p.to_string_lossy().contains("-email-")
                        && p.extension().is_some_and(|e| e == "json")
                })
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(email["to"][0], "aigerim@example.com");
    assert_eq!(email["subject"], "Тест пройден. Получить продукт");
    let sms: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            files
                .iter()
                .find(|p| p.to_string_lossy().contains("-sms-"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(sms["recipient"], "77051234567");
    // Mobizon's stand-in lists what it took, as `message/list` does: the
    // look-up an SMS with no answer gets before it is sent again.
    let dev_env = std::fs::read_to_string(dev_dir.join("dev.env")).unwrap();
    let mobizon_url = dev_env
        .lines()
        .find_map(|l| l.strip_prefix("MOBIZON_API_URL="))
        .expect("dev.env names the stand-in");
    let listed: serde_json::Value = reqwest::Client::new()
        .post(format!("{mobizon_url}/service/message/list"))
        .form(&[
            ("criteria[to]", "77051234567"),
            ("criteria[text]", sms["text"].as_str().unwrap()),
            ("criteria[campaignCreateTsFrom]", "2000-01-01 00:00:00"),
            ("pagination[pageSize]", "100"),
            ("pagination[currentPage]", "0"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["code"], 0);
    assert_eq!(listed["data"]["items"][0]["id"], sms["message_id"]);
    assert_eq!(listed["data"]["totalItemCount"], "1");
    // The dashboard row, in the dev database's own lead_tracking table.
    eventually(Duration::from_secs(60), "the lead_tracking row", || async {
        let n: i64 = client
            .query_one(
                "select count(*) from lead_tracking where email_sent and sms_sent",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    // The stand-ins report delivery back through the signed webhooks.
    eventually(Duration::from_secs(60), "delivered states", || async {
        let n: i64 = client
            .query_one(
                "select count(*) from notification_jobs where delivery_status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 2
    })
    .await;
    // Leads that arrive together go through the stand-in's batch endpoint.
    client
        .batch_execute(
            "insert into landing_leads (name, email, source)
             select 'Lead ' || g, 'lead' || g || '@example.com', 'proftest_main' from generate_series(1, 3) g",
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "three more emails in the outbox, delivered",
        || async {
            let n: i64 = client
                .query_one(
                    "select count(*) from notification_jobs
                      where channel = 'email' and delivery_status = 'delivered'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let files = std::fs::read_dir(&outbox)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            name.contains("-email-") && name.ends_with(".json")
                        })
                        .count()
                })
                .unwrap_or_default();
            n == 4 && files == 4
        },
    )
    .await;
    // A claim may meet one of them alone (a row briefly locked is skipped),
    // but leads that arrive together are sent as a batch.
    let batched: i64 = client
        .query_one(
            "select count(*) from notification_jobs where channel = 'email' and batch_key is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(batched >= 2, "{batched} emails went in a batch");
    drop(client);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        leadrelay::store::connect(&format!("{database_url}?connect_timeout=2"))
            .await
            .is_err(),
        "the private PostgreSQL was stopped"
    );
}

#[test]
fn dev_mode_without_postgresql_names_the_debian_package_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .arg("dev")
        .env("LEADRELAY_DEV_DIR", dir.path().join(".leadrelay"))
        .env("LEADRELAY_PG_BIN", dir.path().join("no-postgresql-here"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("install the Debian package postgresql-15"),
        "{stderr}"
    );
}

/// Starts `leadrelay dev` in `dir` with both output streams piped to us and
/// returns it with its banner, once it is running.
fn start_dev(
    dev_dir: &std::path::Path,
) -> (
    std::process::Child,
    std::process::ChildStdout,
    std::process::ChildStderr,
    String,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["dev", "--dir"])
        .arg(dev_dir)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LEADRELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut byte = [0u8; 1];
    while !banner.contains("Ctrl-C stops") {
        assert!(Instant::now() < deadline, "no banner: {banner}");
        match std::io::Read::read(&mut stdout, &mut byte) {
            Ok(1) => banner.push(byte[0] as char),
            _ => panic!("dev mode ended early: {banner}"),
        }
    }
    (child, stdout, stderr, banner)
}

#[tokio::test]
async fn doctor_passes_against_dev_mode_and_ctrl_c_with_the_output_pipe_closed_still_stops_postgresql()
 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev_dir = dir.path().join(".leadrelay");
    let (mut child, stdout, stderr, banner) = start_dev(&dev_dir);
    assert!(banner.contains("leadrelay doctor --dev"), "{banner}");
    let database_url = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("DATABASE_URL="))
        .expect("the banner names DATABASE_URL")
        .to_string();

    let doctor = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .args(["doctor", "--dev"])
        .arg(&dev_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(!report.contains("FAIL"), "{report}");
    for check in [
        "database",
        "listen",
        "migrations",
        "privileges",
        "lead_tracking",
        "resend",
        "mobizon",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(check)),
            "{check}: {report}"
        );
    }
    assert!(
        report.contains("stand-in"),
        "the stand-ins are recognised: {report}"
    );

    // `leadrelay dev 2>&1 | tee dev.log`, then Ctrl-C: the reader is gone
    // before leadrelay writes its last lines.
    drop(stdout);
    drop(stderr);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = child.wait().unwrap();
    assert!(
        leadrelay::store::connect(&format!("{database_url}?connect_timeout=2"))
            .await
            .is_err(),
        "the private PostgreSQL was stopped"
    );
}
