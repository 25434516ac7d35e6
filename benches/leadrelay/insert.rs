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

/// graphile-worker's way of doing what leadrelay's trigger does: a trigger
/// on the landing's table that adds one job per message (the dashboard row
/// at once, the email and the SMS ten minutes later) with `add_job`.
const GRAPHILE_TRIGGER: &str = "
create table landing_leads_graphile (like landing_leads including defaults);
alter table landing_leads_graphile add primary key (id);
create function bench_graphile_enqueue() returns trigger language plpgsql set search_path = '' as $$
begin
  perform graphile_worker.add_job('lead_tracking', json_build_object('lead_id', new.id));
  perform graphile_worker.add_job('email', json_build_object('lead_id', new.id), run_at := now() + interval '10 minutes');
  perform graphile_worker.add_job('sms', json_build_object('lead_id', new.id), run_at := now() + interval '10 minutes');
  return null;
end
$$;
create trigger bench_graphile_enqueue after insert on landing_leads_graphile
  for each row execute function bench_graphile_enqueue();";

/// Installs graphile-worker's schema in `bench_insert` and the copy of the
/// landing's table with its `add_job` trigger.
async fn graphile_trigger(
    cluster: &Cluster,
    db: &Client,
    graphile: &Result<Graphile, String>,
) -> Result<(), String> {
    graphile
        .as_ref()
        .map_err(Clone::clone)?
        .run(&cluster.url("bench_insert"), &["migrate"])?;
    db.batch_execute(GRAPHILE_TRIGGER)
        .await
        .map_err(|e| e.to_string())
}

/// The landing's INSERT with 1 and 8 clients: on `landing_leads` (with
/// leadrelay's trigger and the console's indexes), on the same table as the
/// landing made it (its primary key only: the bare insert), and on a copy
/// whose trigger adds the same three jobs with graphile-worker's `add_job`.
pub(crate) async fn lead_insert_cost(
    cluster: &Cluster,
    graphile: &Result<Graphile, String>,
) -> Vec<Row> {
    let insert_db = database(cluster, "bench_insert").await;
    insert_db
        .batch_execute(
            "create table landing_leads_bare (like landing_leads including defaults);
             alter table landing_leads_bare add primary key (id);",
        )
        .await
        .unwrap();
    let with_graphile = graphile_trigger(cluster, &insert_db, graphile).await;
    let mut rows = Vec::new();
    for clients in [1, 8] {
        let (bare_tps, bare_p99) =
            pgbench(cluster, "bench_insert", "landing_leads_bare", clients, 8);
        let (tps, p99) = pgbench(cluster, "bench_insert", "landing_leads", clients, 8);
        let cost = bare_tps / tps;
        let (graphile_cell, share) = match &with_graphile {
            Ok(()) => {
                let (g_tps, g_p99) = pgbench(
                    cluster,
                    "bench_insert",
                    "landing_leads_graphile",
                    clients,
                    8,
                );
                let g_cost = bare_tps / g_tps;
                (
                    format!(
                        "; graphile-worker add_job trigger: {g_tps:.0} tps, p99 {g_p99:.2} ms ({g_cost:.2}x)"
                    ),
                    format!("; {:.2} of graphile-worker's cost", cost / g_cost),
                )
            }
            Err(e) => (format!("; graphile-worker not run: {e}"), String::new()),
        };
        rows.push(row(
            &format!("lead insert, {clients} client(s)"),
            format!("{tps:.0} tps, p99 {p99:.2} ms"),
            format!("bare insert: {bare_tps:.0} tps, p99 {bare_p99:.2} ms{graphile_cell}"),
            format!("{cost:.2}x cost, +{:.2} ms p99{share}", p99 - bare_p99),
            "<= 2.5x, <= 0.3 of graphile-worker's",
        ));
    }
    rows
}
