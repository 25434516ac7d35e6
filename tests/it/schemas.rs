//! `supabase/schemas/` holds the current definition of every function,
//! trigger and view the migrations create. Applied over a freshly migrated
//! database it must change nothing: a migration that redefines something
//! and forgets the folder fails here, and so does a folder edited without
//! a migration.

use std::collections::BTreeMap;

use crate::harness::fresh_db;

/// Every function, view and trigger of leadrelay's (the schemas `public` and
/// `leadrelay`, extensions' own objects left out) and its definition as the
/// database prints it.
const DEFINITIONS: &str = "
select 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where n.nspname in ('public', 'leadrelay') and p.prokind in ('f', 'p')
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
union all
select 'view ' || c.oid::regclass::text, pg_get_viewdef(c.oid)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('v', 'm') and n.nspname in ('public', 'leadrelay')
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
union all
select 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text, pg_get_triggerdef(t.oid)
from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
where not t.tgisinternal and n.nspname in ('public', 'leadrelay')";

async fn definitions(client: &tokio_postgres::Client) -> BTreeMap<String, String> {
    client
        .query(DEFINITIONS, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The folder's files, in order, with their text.
fn schema_files() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("supabase/schemas");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The names of what differs between two sets of definitions.
fn differences(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| match (before.get(n), after.get(n)) {
            (Some(_), None) => format!("{n}: gone"),
            (None, Some(_)) => format!("{n}: only in supabase/schemas"),
            _ => format!("{n}: differs"),
        })
        .collect()
}

/// The bare name an object's key names: `public.leadrelay_trim` of
/// `function leadrelay_trim(text)` (unqualified names are in `public`),
/// a view's name, a trigger's name.
fn bare_name(key: &str) -> String {
    let (kind, rest) = key.split_once(' ').unwrap();
    let name = rest.split(['(', ' ']).next().unwrap();
    match kind {
        "trigger" => name.to_string(),
        _ if name.contains('.') => name.to_string(),
        _ => format!("public.{name}"),
    }
}

#[tokio::test]
async fn the_current_definitions_folder_is_what_the_migrations_leave() {
    let db = fresh_db().await;
    let client = db.client().await;
    let migrated = definitions(&client).await;
    assert!(migrated.len() >= 30, "{} definitions found", migrated.len());

    // every object is in the folder, under its own name
    let files = schema_files();
    let all_text = files
        .iter()
        .map(|(_, t)| t.to_lowercase())
        .collect::<String>();
    let missing: Vec<&String> = migrated
        .keys()
        .filter(|key| {
            let kind = key.split(' ').next().unwrap();
            !all_text.contains(&format!("{kind} {}", bare_name(key)))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in supabase/schemas/ (add their current definitions): {missing:?}"
    );

    for (name, text) in &files {
        client
            .batch_execute(text)
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", leadrelay::store::describe(&e)));
    }
    let applied = definitions(&client).await;
    let drift = differences(&migrated, &applied);
    assert!(
        drift.is_empty(),
        "supabase/schemas/ and the migrations disagree; copy the migration's definition into the folder:\n{}",
        drift.join("\n")
    );

    // and the comparison sees a change: a body changed by one character
    client
        .batch_execute(
            "create or replace function public.leadrelay_delivery_rank(p_status text) returns integer
             language sql immutable parallel safe set search_path = '' as $$ select 0 $$",
        )
        .await
        .unwrap();
    let changed = differences(&applied, &definitions(&client).await);
    assert_eq!(
        changed,
        ["function leadrelay_delivery_rank(text): differs"],
        "the check finds a drifted definition"
    );
}
