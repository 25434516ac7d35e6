//! The landing's write, rehearsed: as the role the landing writes
//! `landing_leads` with (`LANDING_ROLE`, default `service_role`), inside a
//! transaction that is always rolled back, a lead shaped like the
//! incident's is inserted and updated, and the trigger must have made its
//! jobs. Before that, the role's privileges are read from the catalog, so a
//! missing grant is named with the statement that fixes it even where the
//! rehearsal cannot run.
//!
//! The rule this room keeps: nothing it does outlives its transaction.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::Check;
use crate::store::describe;

const NAME: &str = "landing write";

/// The incident's first lead, with an address no one receives mail at, so
/// the rehearsal's row can be found without RETURNING (supabase-js asks for
/// none, and the landing's role may not be allowed to read its rows).
const REHEARSAL_INSERT: &str = "
insert into public.landing_leads (name, email, phone, source, metadata)
values ('Айгерим (leadrelay doctor)', $1, '+7 (705) 904-44-67', 'proftest_main', '{\"quiz\": \"proftest\"}')";
const REHEARSAL_UPDATE: &str = "
update public.landing_leads set name = 'Айгерим Б. (leadrelay doctor)', phone = '8 705 904 44 67'
 where email = $1";
/// The jobs the trigger made for the rehearsal's lead, and how many the
/// enabled rules ask for.
const REHEARSAL_JOBS: &str = "
select (select count(*) from public.notification_jobs j
          join public.landing_leads l on l.id = j.lead_id where l.email = $1),
       (select count(*) from public.notification_rules r
         where r.enabled and 'proftest_main' like r.source_pattern)";

pub async fn check(client: &mut Client, role: Option<&str>) -> Check {
    let explicit = role.is_some();
    let role = role.unwrap_or(crate::domain::defaults::LANDING_ROLE);
    // PostgreSQL's names are at most 63 bytes and hold no NUL
    if role.len() > 63 || role.contains('\0') {
        return Check::fail(
            NAME,
            format!(
                "LANDING_ROLE {:?}… is not a role of this database (a role name is at most 63 bytes)",
                role.chars().take(40).collect::<String>()
            ),
            "set LANDING_ROLE to the role the landing connects or writes as",
        );
    }
    match role_exists(client, role).await {
        Err(e) => return Check::fail(NAME, describe(&e), "run `leadrelay migrate` first"),
        Ok(false) if explicit => {
            return Check::fail(
                NAME,
                format!("LANDING_ROLE {role:?} is not a role of this database"),
                "set LANDING_ROLE to the role the landing connects or writes as",
            );
        }
        Ok(false) => {
            return Check::warn(
                NAME,
                "no role service_role here (a PostgreSQL without Supabase's roles), so the landing's write was not rehearsed",
                "set LANDING_ROLE to the role the landing writes landing_leads with",
            );
        }
        Ok(true) => {}
    }
    if let Some(missing) = missing_privileges(client, role).await {
        return missing;
    }
    rehearse(client, role).await
}

async fn role_exists(client: &Client, role: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select exists (select 1 from pg_catalog.pg_roles where rolname = $1)",
            &[&role],
        )
        .await?
        .get(0))
}

fn ident(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

/// INSERT on the table, and EXECUTE on every function a write of it
/// evaluates with the writer's privileges; a missing UPDATE is a warning
/// (a landing that only inserts needs none).
async fn missing_privileges(client: &Client, role: &str) -> Option<Check> {
    let row = match client
        .query_one(
            "with closed as (
               select f.evaluated_by, f.fn::oid as fn from leadrelay.landing_write_functions() f
                where not has_function_privilege($1, f.fn, 'EXECUTE')
             ), qualified as (
               -- schema-qualified whatever this session's search_path, for the grant
               select p.oid, quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                             || '(' || oidvectortypes(p.proargtypes) || ')' as name
                 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                where p.oid in (select fn from closed)
             )
             select has_table_privilege($1, 'public.landing_leads', 'INSERT'),
                    has_table_privilege($1, 'public.landing_leads', 'UPDATE'),
                    has_table_privilege($1, 'public.landing_leads', 'SELECT'),
                    array(select f.evaluated_by || ': ' || q.name
                            from closed f, lateral (select q.name from qualified q where q.oid = f.fn) q),
                    array(select distinct q.name
                            from closed f join qualified q on q.oid = f.fn)",
            &[&role],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            return Some(Check::fail(
                NAME,
                describe(&e),
                "run `leadrelay migrate` first",
            ));
        }
    };
    let (insert, update, select): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let closed: Vec<String> = row.get(3);
    let closed_functions: Vec<String> = row.get(4);
    let who = ident(role);
    if !insert {
        return Some(Check::fail(
            NAME,
            format!(
                "{role} may not insert into public.landing_leads: the landing's every lead is refused"
            ),
            format!(
                "grant insert{} on public.landing_leads to {who};",
                if update { "" } else { ", update" }
            ),
        ));
    }
    if !closed.is_empty() {
        let grants: Vec<String> = closed_functions
            .iter()
            .map(|f| format!("grant execute on function {f} to {who};"))
            .collect();
        return Some(Check::fail(
            NAME,
            format!(
                "a write of landing_leads as {role} evaluates what {role} may not execute ({}): every INSERT fails with \"permission denied for function\"",
                closed.join("; ")
            ),
            format!(
                "run `leadrelay migrate` (a leadrelay index is rebuilt on built-in functions), or {}",
                grants.join(" ")
            ),
        ));
    }
    if !update || !select {
        return Some(Check::warn(
            NAME,
            format!(
                "{role} may insert into public.landing_leads but not {}: an upsert or an update by the landing fails",
                if update { "read it" } else { "update it" }
            ),
            format!(
                "grant select, update on public.landing_leads to {who}; (if the landing updates or upserts leads)"
            ),
        ));
    }
    None
}

/// The rehearsal, in a transaction rolled back whatever happens.
async fn rehearse(client: &mut Client, role: &str) -> Check {
    let email = format!("doctor-{:016x}@leadrelay.invalid", rand::random::<u64>());
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Check::fail(NAME, describe(&e), "check the database connection"),
    };
    let outcome = rehearse_in(&tx, role, &email).await;
    // Dropping the transaction would roll it back too; saying so is clearer.
    let _ = tx.rollback().await;
    outcome
}

async fn rehearse_in(tx: &impl GenericClient, role: &str, email: &str) -> Check {
    let limits = "set local statement_timeout = '10s'; set local lock_timeout = '3s'";
    if let Err(e) = tx.batch_execute(limits).await {
        return Check::fail(NAME, describe(&e), "check the database connection");
    }
    if let Err(e) = tx
        .query_one("select set_config('role', $1, true)", &[&role])
        .await
    {
        return Check::warn(
            NAME,
            format!(
                "the privileges are in place, but the write could not be rehearsed: this connection may not act as {role} ({})",
                describe(&e)
            ),
            format!(
                "run doctor connected as postgres (a member of {role} on Supabase), or grant {role} to the role DATABASE_URL names"
            ),
        );
    }
    if let Err(e) = tx.execute(REHEARSAL_INSERT, &[&email]).await {
        return refused(role, "INSERT", &e);
    }
    if let Err(e) = tx.execute(REHEARSAL_UPDATE, &[&email]).await {
        return refused(role, "UPDATE", &e);
    }
    if let Err(e) = tx.batch_execute("reset role").await {
        return Check::fail(NAME, describe(&e), "check the database connection");
    }
    let row = match tx.query_one(REHEARSAL_JOBS, &[&email]).await {
        Ok(row) => row,
        Err(e) => return Check::fail(NAME, describe(&e), "run `leadrelay migrate` first"),
    };
    let (made, asked): (i64, i64) = (row.get(0), row.get(1));
    if made < asked {
        return Check::fail(
            NAME,
            format!(
                "as {role}, a lead like the incident's was saved but the trigger made {made} of the {asked} jobs its rules ask for"
            ),
            "run `leadrelay migrate`; the database log holds the trigger's WARNING with the reason",
        );
    }
    Check::ok(
        NAME,
        format!(
            "as {role}, an INSERT and an UPDATE of a lead like the incident's succeed and the trigger made its {made} jobs (rehearsed in a transaction, rolled back)"
        ),
    )
}

/// A refused write, with the statement that lets it through.
fn refused(role: &str, statement: &str, e: &tokio_postgres::Error) -> Check {
    let who = ident(role);
    let message = e
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| describe(e));
    let fix = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        if let Some(function) = message.strip_prefix("permission denied for function ") {
            format!(
                "run `leadrelay migrate`, or: grant execute on function {function} to {who}; (find its arguments with \\df {function})"
            )
        } else if message.contains("row-level security") {
            format!(
                "an RLS policy must let {role} write: create policy landing_writes on public.landing_leads for all to {who} using (true) with check (true); (or connect as a role with BYPASSRLS, as service_role has on Supabase)"
            )
        } else if let Some(table) = message.strip_prefix("permission denied for table ") {
            format!("grant insert, select, update on public.{table} to {who};")
        } else {
            format!("grant {role} what the message names")
        }
    } else {
        "the landing's write fails for a reason of its own: see the message".to_string()
    };
    Check::fail(
        NAME,
        format!(
            "as {role}, the landing's {statement} of a lead like the incident's fails: {message}"
        ),
        fix,
    )
}
