//! Runs the pgTAP suite in supabase/tests/ with pg_prove against a fresh,
//! migrated database of the test cluster.

use std::process::Command;

use leadrelay::cli::dev::Privileges;

use crate::harness::{cluster, shipped_db_as};

#[tokio::test]
async fn the_pgtap_suite_passes_under_pg_prove_in_a_supabase_project_of_today() {
    pgtap_suite_passes(Privileges::SupabaseCurrent).await;
}

#[tokio::test]
async fn the_pgtap_suite_passes_under_pg_prove_in_a_supabase_project_of_the_old_default_privileges()
{
    pgtap_suite_passes(Privileges::SupabaseLegacy).await;
}

async fn pgtap_suite_passes(privileges: Privileges) {
    let db = shipped_db_as(privileges).await;
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/supabase/tests"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
    files.sort();
    assert!(!files.is_empty());
    let output = Command::new("pg_prove")
        .args(["--host", "127.0.0.1", "--port", &cluster().port().to_string()])
        .args(["--username", "postgres", "--dbname", &db.name, "--verbose"])
        .args(&files)
        .output()
        .expect("pg_prove is not installed: apt-get install libtap-parser-sourcehandler-pgtap-perl postgresql-15-pgtap");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "pg_prove failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("All tests successful"), "{stdout}");
}
