//! Lead insert cost: pgbench of the landing INSERT with and without the trigger.

use super::*;

/// pgbench of the Node-style INSERT, with and without leadrelay's trigger.
pub(crate) fn pgbench(
    cluster: &Cluster,
    db_name: &str,
    table: &str,
    clients: u32,
    seconds: u32,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, LANDING_INSERT.replace("TABLE", table)).unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .args([
            "-l",
            "--log-prefix",
            &dir.path().join("log").display().to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(db_name)
        .output()
        .expect("pgbench (Debian package postgresql-15 or postgresql-client-15)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let mut latencies: Vec<f64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("log"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    (tps, percentile(&latencies, 0.99))
}

/// The landing's INSERT with 1 and 8 clients, on `landing_leads` (with
/// leadrelay's trigger) and on a copy without it.
pub(crate) async fn lead_insert_cost(cluster: &Cluster) -> Vec<Row> {
    let insert_db = database(cluster, "bench_insert").await;
    insert_db
        .batch_execute("create table landing_leads_bare (like landing_leads including all)")
        .await
        .unwrap();
    let mut rows = Vec::new();
    for clients in [1, 8] {
        let (bare_tps, bare_p99) =
            pgbench(cluster, "bench_insert", "landing_leads_bare", clients, 8);
        let (tps, p99) = pgbench(cluster, "bench_insert", "landing_leads", clients, 8);
        rows.push(row(
            &format!("lead insert, {clients} client(s)"),
            format!("{tps:.0} tps, p99 {p99:.2} ms"),
            format!("no trigger: {bare_tps:.0} tps, p99 {bare_p99:.2} ms"),
            format!("{:.2}x cost, +{:.2} ms p99", bare_tps / tps, p99 - bare_p99),
            "<= 1.3x, <= +1 ms",
        ));
    }
    rows
}
