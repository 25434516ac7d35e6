//! BENCH_PROFILE: the costliest statements from pg_stat_statements.

use super::*;

/// BENCH_PROFILE: the statements that took the most time since the last
/// call, from pg_stat_statements (functions' inner statements included).
pub(crate) async fn statement_profile(client: &Client, phase: &str) {
    client
        .batch_execute("create extension if not exists pg_stat_statements")
        .await
        .unwrap();
    println!("-- statement profile: {phase}");
    for row in client
        .query(
            "select calls, round(total_exec_time::numeric, 1)::text, round(mean_exec_time::numeric, 3)::text,
                    plans, round(total_plan_time::numeric, 1)::text,
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
             from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
             order by total_exec_time + total_plan_time desc limit 12",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "{:>8} calls {:>9} ms total {:>7} ms mean {:>6} plans {:>7} ms planning  {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3),
            row.get::<_, String>(4),
            row.get::<_, String>(5)
        );
    }
    // a table read whole on a hot path shows as rows read by sequential scans
    for row in client
        .query(
            "select relname::text, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_tup_upd, n_tup_hot_upd
             from pg_stat_user_tables where seq_tup_read > 0 order by seq_tup_read desc limit 6",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "  {:<28} {:>8} seq scans {:>10} rows read {:>9} index scans {:>8} updates ({} HOT)",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
            row.get::<_, i64>(4),
            row.get::<_, i64>(5)
        );
    }
    // functions called per row: a SQL function that pins search_path is
    // never inlined, and each call starts an executor of its own
    for row in client
        .query(
            "select schemaname || '.' || funcname, calls, round(total_time::numeric, 1)::text,
                    round(self_time::numeric, 1)::text
             from pg_stat_user_functions order by self_time desc limit 8",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "  {:<44} {:>8} calls {:>9} ms total {:>9} ms self",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }
    reset_statement_profile(client).await;
}

/// BENCH_PROFILE: forgets what was counted so far (the next profile starts
/// from here).
pub(crate) async fn reset_statement_profile(client: &Client) {
    client
        .batch_execute("create extension if not exists pg_stat_statements")
        .await
        .unwrap();
    client
        .batch_execute("select pg_stat_statements_reset(), pg_stat_reset()")
        .await
        .unwrap();
}

/// BENCH_EXPLAIN: every statement of every session from now on logs its plan
/// with the time and buffers of each node (auto_explain, nested statements
/// included), so a claim's cost can be read node by node. Slows the run.
pub(crate) async fn explain_plans(cluster: &Cluster) {
    alter_system(
        cluster,
        Some("auto_explain"),
        &[
            "session_preload_libraries = 'auto_explain'",
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_analyze = on",
            "auto_explain.log_buffers = on",
            "auto_explain.log_nested_statements = on",
        ],
    )
    .await;
}

/// Sets each of `settings` (`name = value`) with ALTER SYSTEM (one statement
/// each: it cannot run in a transaction) and reloads the configuration.
/// `library`: loaded into the session first, so that ALTER SYSTEM knows the
/// settings it defines.
pub(crate) async fn alter_system(cluster: &Cluster, library: Option<&str>, settings: &[&str]) {
    let admin = store::connect(&cluster.url("postgres")).await.unwrap();
    if let Some(library) = library {
        admin
            .batch_execute(&format!("load '{library}'"))
            .await
            .unwrap();
    }
    for setting in settings {
        admin
            .batch_execute(&format!("alter system set {setting}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
}

/// BENCH_EXPLAIN or BENCH_KEEP_LOG: the cluster's log (with the plans, the
/// lock waits and any deadlock) copied out before the cluster is removed.
pub(crate) fn keep_log(cluster: &Cluster, phase: &str) {
    let kept = std::env::temp_dir().join(format!("leadrelay-bench-{phase}.log"));
    std::fs::copy(cluster.log_path(), &kept).unwrap();
    println!("-- the database's log of {phase}: {}", kept.display());
}
