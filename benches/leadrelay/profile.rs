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
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
             from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
             order by total_exec_time desc limit 12",
            &[],
        )
        .await
        .unwrap()
    {
        println!(
            "{:>8} calls {:>9} ms total {:>7} ms mean  {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }
    client
        .batch_execute("select pg_stat_statements_reset()")
        .await
        .unwrap();
}
