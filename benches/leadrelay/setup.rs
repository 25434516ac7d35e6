//! Shared set-up: databases, the release binary as a child process, polling helpers.

use super::*;

pub(crate) async fn database(cluster: &Cluster, name: &str) -> Client {
    dev::create_migrated_database(cluster, name)
        .await
        .expect("migrated database")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

pub(crate) async fn until<F, Fut>(limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

pub(crate) async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Serve {
    /// Waits until `/readyz` answers 2xx.
    pub(crate) async fn ready(&self) {
        let http = reqwest::Client::new();
        until(Duration::from_secs(30), || async {
            http.get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn_serve(db_url: &str, mock_url: &str, extra: &[(&str, &str)]) -> Serve {
    let port = free_port();
    // BENCH_SERVE_BINARY: another build of leadrelay (an earlier release, for
    // an A/B in one harness, against the same schema)
    let binary = std::env::var("BENCH_SERVE_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_leadrelay").to_string());
    let mut cmd = Command::new(binary);
    cmd.arg("serve")
        .env("DATABASE_URL", db_url)
        .env("RESEND_API_KEY", "re_bench")
        .env("RESEND_API_URL", mock_url)
        .env("EMAIL_FROM", "bench@academy.kz")
        .env("RESEND_MAX_RPS", "100000")
        .env("MOBIZON_API_KEY", "kz_bench")
        .env("MOBIZON_API_URL", mock_url)
        .env("MOBIZON_MAX_RPS", "100000")
        .env("PRODUCT_URL", "https://academy.kz/product")
        .env("RESEND_WEBHOOK_SECRET", SECRET)
        .env("MOBIZON_WEBHOOK_TOKEN", "bench-token-0123456789")
        .env("MOBIZON_WEBHOOK_SECRET", "bench-mobizon-secret")
        .env("ADMIN_TOKEN", "bench-admin-0123456789")
        .env("MOBIZON_POLL_INTERVAL", "off")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        // one log line per state change would measure the terminal;
        // BENCH_SERVE_LOG (with BENCH_SERVE_STDERR) to see what it did
        .env(
            "LEADRELAY_LOG",
            std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // BENCH_SERVE_STDERR: the service's log kept in that file (with
    // BENCH_SERVE_LOG=leadrelay=debug, what it did and when); appended to,
    // so that a run starting several services keeps the log of each
    if let Ok(path) = std::env::var("BENCH_SERVE_STDERR")
        && let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        cmd.stderr(file);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Serve {
        child: cmd.spawn().expect("spawn leadrelay serve"),
        base: format!("http://127.0.0.1:{port}"),
    }
}
