//! A PostgreSQL that accepts only TLS (`hostssl` lines alone in pg_hba.conf),
//! its certificate issued at test time by a private CA, as a hosted Supabase
//! database presents itself. For each sslmode, leadrelay must connect exactly
//! where psql connects with the same string, and say why where it refuses.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leadrelay::store;
use leadrelay::store::cluster::{Cluster, StopMode};

use crate::app;
use crate::harness;

/// A private CA, another CA that signed nothing of ours, and the server's
/// certificate for the name `localhost` only (so 127.0.0.1 does not match).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other.crt")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, cn) in [("ca", "Test Root 2021 CA"), ("other", "Someone Else's CA")] {
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    Pki { dir }
}

/// A new cluster that speaks TLS with `pki`'s server certificate and refuses
/// every unencrypted TCP connection.
fn tls_only_cluster(pki: &Pki) -> Cluster {
    let cluster = harness::new_cluster();
    cluster.stop(StopMode::Fast).unwrap();
    let data = cluster.root().join("data");
    let owner = std::fs::metadata(&data).unwrap();
    for file in ["server.crt", "server.key"] {
        let target = data.join(file);
        std::fs::copy(pki.dir.path().join(file), &target).unwrap();
        nix::unistd::chown(
            &target,
            Some(nix::unistd::Uid::from_raw(owner.uid())),
            Some(nix::unistd::Gid::from_raw(owner.gid())),
        )
        .unwrap();
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .unwrap();
    cluster.restart().unwrap();
    cluster
}

/// Whether psql (libpq) connects with `url`; its home has no root.crt.
fn psql_connects(url: &str) -> bool {
    Command::new("psql")
        .args([url, "-XAtqc", "select 1"])
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map(|o| o.status.success())
        .expect("psql (Debian package postgresql-client-15)")
}

#[tokio::test]
async fn every_sslmode_connects_exactly_where_psql_connects_and_says_why_where_it_refuses() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki);
    let port = cluster.port();
    let ca = pki.ca().display().to_string();
    let other = pki.other_ca().display().to_string();
    let ip =
        |query: &str| format!("postgresql://postgres:hunter2@127.0.0.1:{port}/postgres{query}");
    let name =
        |query: &str| format!("postgresql://postgres:hunter2@localhost:{port}/postgres{query}");
    // (string, connects, words the refusal must contain)
    let cases: Vec<(String, bool, &str)> = vec![
        (
            ip("?sslmode=disable"),
            false,
            "does not accept unencrypted connections",
        ),
        (ip("?sslmode=allow"), true, ""),
        (ip(""), true, ""),
        (ip("?sslmode=prefer"), true, ""),
        (ip("?sslmode=require"), true, ""),
        (ip(&format!("?sslmode=require&sslrootcert={ca}")), true, ""),
        (
            ip(&format!("?sslmode=require&sslrootcert={other}")),
            false,
            "not signed by the CA in sslrootcert",
        ),
        (
            ip(&format!("?sslmode=prefer&sslrootcert={other}")),
            false,
            "not signed by the CA in sslrootcert",
        ),
        (
            ip(&format!("?sslmode=verify-ca&sslrootcert={ca}")),
            true,
            "",
        ),
        (
            ip(&format!("?sslmode=verify-ca&sslrootcert={other}")),
            false,
            "not signed by the CA in sslrootcert",
        ),
        (
            name(&format!("?sslmode=verify-full&sslrootcert={ca}")),
            true,
            "",
        ),
        (
            ip(&format!("?sslmode=verify-full&sslrootcert={ca}")),
            false,
            "the host name 127.0.0.1 does not match",
        ),
        (
            name(&format!("?sslmode=verify-full&sslrootcert={other}")),
            false,
            "not signed by the CA",
        ),
        (
            name("?sslmode=verify-full&sslrootcert=/nonexistent/prod-ca-2021.crt"),
            false,
            "/nonexistent/prod-ca-2021.crt",
        ),
        (
            format!(
                "host=localhost port={port} user=postgres password=hunter2 dbname=postgres sslmode=verify-full sslrootcert='{ca}'"
            ),
            true,
            "",
        ),
        (
            format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"),
            false,
            "does not accept unencrypted connections",
        ),
    ];
    for (url, connects, why) in cases {
        assert_eq!(psql_connects(&url), connects, "psql with {url}");
        match store::connect(&url).await {
            Ok(client) => {
                assert!(connects, "leadrelay connected where psql refuses: {url}");
                let ssl: bool = client
                    .query_one(
                        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(ssl, "{url}");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    !connects,
                    "leadrelay refused where psql connects: {url}: {text}"
                );
                assert!(text.contains(why), "{url}: {text}");
                assert!(!text.contains("hunter2"), "{text}");
                assert!(!text.contains('\n'), "{text}");
            }
        }
    }
}

#[tokio::test]
async fn serve_becomes_ready_over_verify_full_with_the_private_ca() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki);
    let ca = pki.ca().display().to_string();
    let admin_url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        cluster.port()
    );
    let admin = store::connect(&admin_url).await.expect("connect over TLS");
    admin
        .batch_execute(&leadrelay::cli::dev::Privileges::SupabaseCurrent.before_migrations())
        .await
        .unwrap();
    leadrelay::store::migrate::apply(
        &mut store::connect(&admin_url).await.unwrap(),
        &leadrelay::store::migrate::embedded().unwrap(),
    )
    .await
    .unwrap();
    let providers = app::Providers::healthy().await;
    let application = app::start(app::config(&admin_url, &providers)).await;
    let base = format!("http://{}", application.local_addr());
    app::eventually(Duration::from_secs(20), "ready over verify-full", || {
        let base = base.clone();
        async move {
            reqwest::get(format!("{base}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    // both the pool's sessions and the listener's use TLS
    let unencrypted: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.backend_type = 'client backend' and not s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unencrypted, 0);
    assert!(application.listener.is_connected());
    application.shutdown().await;
}

#[test]
fn an_expired_ca_file_stops_the_process_at_start_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=Old CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.csr",
        ],
    );
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "01\n").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = old\n[old]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\ndefault_md = sha256\npolicy = any\nx509_extensions = ext\n[any]\ncommonName = supplied\n[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    // valid for one day in 2020
    openssl(
        d,
        &[
            "ca",
            "-selfsign",
            "-keyfile",
            "ca.key",
            "-in",
            "ca.csr",
            "-startdate",
            "200101000000Z",
            "-enddate",
            "200102000000Z",
            "-config",
            "ca.cnf",
            "-batch",
            "-out",
            "expired.crt",
        ],
    );
    let url = format!(
        "postgresql://postgres:hunter2@db.example.supabase.co:5432/postgres?sslmode=verify-full&sslrootcert={}",
        d.join("expired.crt").display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_leadrelay"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("expired.crt") && stderr.contains("has expired"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
