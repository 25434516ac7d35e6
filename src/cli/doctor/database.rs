//! The database checks: connection and TLS, LISTEN, migrations, pg_cron,
//! privileges, `lead_tracking`, and what the tables hold.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client};

use super::Check;
use crate::config::{self, ServeArgs};
use crate::store::migrate;
use crate::store::tls::Verification;
use crate::store::{self, ConnInfo, SslMode, describe};

/// Supabase's transaction pooler listens here; LISTEN cannot work through it.
const TRANSACTION_POOLER_PORT: u16 = 6543;

pub async fn checks(url: &str, landing_role: Option<&str>, product_url: &str) -> Vec<Check> {
    let info = match ConnInfo::parse(url) {
        Ok(info) => info,
        Err(e) => {
            return vec![Check::fail(
                "database",
                e.to_string(),
                "correct DATABASE_URL",
            )];
        }
    };
    let mut client = match store::open(&info).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => {
            return vec![Check::fail(
                "database",
                e.to_string(),
                "check the host, port, password and sslmode in DATABASE_URL (psql with the same URL should connect)",
            )];
        }
    };
    vec![
        connection(&info, &client).await,
        listen(&info).await,
        migrations(&client).await,
        pg_cron(&client).await,
        privileges(&client).await,
        super::landing::check(&mut client, landing_role).await,
        templates(&client, product_url).await,
        storage(&client).await,
        super::webhook_inbox::check(&client).await,
    ]
}

async fn connection(info: &ConnInfo, client: &Client) -> Check {
    const NAME: &str = "database";
    let row = match client
        .query_one(
            "select current_user::text, current_setting('server_version'),
                    coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false),
                    (select version from pg_stat_ssl where pid = pg_backend_pid())",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => return Check::fail(NAME, describe(&e), "check that the role may log in"),
    };
    let (user, version, ssl, tls_version): (String, String, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let place = format!("{}:{}", info.host(), info.port());
    let verified = Verification::of(info);
    let tls = match (ssl, verified) {
        (false, _) => "without TLS".to_string(),
        (true, Verification::ChainAndHost) => format!(
            "over {} (sslmode={}: certificate and host name verified)",
            tls_version.unwrap_or_default(),
            info.ssl_mode.as_str()
        ),
        (true, Verification::Chain) => format!(
            "over {} (sslmode={}: certificate chain verified, host name not checked)",
            tls_version.unwrap_or_default(),
            info.ssl_mode.as_str()
        ),
        (true, Verification::None) => format!(
            "over {} (sslmode={}: certificate NOT verified)",
            tls_version.unwrap_or_default(),
            info.ssl_mode.as_str()
        ),
    };
    let found = format!("connected to {place} {tls}, PostgreSQL {version}, as {user}");
    let local = matches!(info.host().as_str(), "localhost" | "127.0.0.1" | "::1")
        || info.host().starts_with('/');
    if local || verified == Verification::ChainAndHost {
        Check::ok(NAME, found)
    } else if !ssl || info.ssl_mode == SslMode::Disable {
        Check::warn(
            NAME,
            found,
            "a remote database should be reached over TLS: add sslmode=verify-full&sslrootcert=/path/to/prod-ca-2021.crt",
        )
    } else {
        Check::warn(
            NAME,
            found,
            "use sslmode=verify-full with sslrootcert (Supabase's CA from the dashboard's database settings) so the server is authenticated",
        )
    }
}

/// LISTEN on this connection, NOTIFY from a second one, and wait a second:
/// the worker's wake-up works exactly when this round trip does. A
/// transaction pooler hands each statement to any server session, so the
/// notification never comes back; port 6543 is named as Supabase's.
async fn listen(info: &ConnInfo) -> Check {
    const NAME: &str = "listen";
    let pooler_fix = "connect through the session pooler (port 5432 on the pooler host) or the direct connection db.<ref>.supabase.co:5432; the transaction pooler (port 6543) drops LISTEN";
    if info.port() == TRANSACTION_POOLER_PORT {
        return Check::fail(
            NAME,
            "DATABASE_URL uses port 6543, Supabase's transaction pooler, where LISTEN does not work",
            pooler_fix,
        );
    }
    match listen_round_trip(info).await {
        Ok(Some(elapsed)) => Check::ok(
            NAME,
            format!(
                "LISTEN/NOTIFY round trip in {} ms",
                elapsed.as_millis().max(1)
            ),
        ),
        Ok(None) => Check::fail(
            NAME,
            "LISTEN was accepted but the notification did not arrive within 1 s: the connection goes through a pooler that does not keep sessions",
            pooler_fix,
        ),
        Err(e) => Check::fail(NAME, e, pooler_fix),
    }
}

async fn listen_round_trip(info: &ConnInfo) -> Result<Option<Duration>, String> {
    let channel = format!("leadrelay_doctor_{:08x}", rand::random::<u32>());
    let (listener, mut connection) = store::open(info).await.map_err(|e| e.to_string())?;
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = heard_tx.send(n.channel().to_string());
            }
        }
    });
    let result = async {
        listener
            .batch_execute(&format!("listen {channel}"))
            .await
            .map_err(|e| describe(&e))?;
        let (sender, sender_connection) = store::open(info).await.map_err(|e| e.to_string())?;
        tokio::spawn(sender_connection);
        let started = Instant::now();
        sender
            .execute("select pg_notify($1, 'doctor')", &[&channel])
            .await
            .map_err(|e| describe(&e))?;
        let deadline = started + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline.into(), heard_rx.recv()).await {
                Ok(Some(heard)) if heard == channel => return Ok(Some(started.elapsed())),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }
    .await;
    driver.abort();
    result
}

async fn migrations(client: &Client) -> Check {
    const NAME: &str = "migrations";
    let embedded = match migrate::embedded() {
        Ok(m) => m,
        Err(e) => return Check::fail(NAME, e.to_string(), "rebuild leadrelay"),
    };
    let applied = match migrate::applied_versions(client).await {
        Ok(Some(applied)) => applied,
        Ok(None) => {
            return Check::fail(
                NAME,
                "leadrelay's migration history (leadrelay.schema_migrations) does not exist",
                "run `leadrelay migrate`",
            );
        }
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "grant the role select on leadrelay.schema_migrations",
            );
        }
    };
    let missing: Vec<&str> = embedded
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.version.as_str())
        .collect();
    let unknown: Vec<&str> = applied
        .iter()
        .filter(|v| !embedded.iter().any(|m| &&m.version == v))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "the database has leadrelay migrations this binary does not know: {}",
                unknown.join(", ")
            ),
            "upgrade leadrelay to the release that wrote them",
        );
    }
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} of {} migrations not applied: {}",
                missing.len(),
                embedded.len(),
                missing.join(", ")
            ),
            "run `leadrelay migrate`",
        );
    }
    Check::ok(NAME, format!("all {} applied", embedded.len()))
}

async fn pg_cron(client: &Client) -> Check {
    const NAME: &str = "pg_cron";
    let version: Option<String> = match client
        .query_opt(
            "select extversion from pg_extension where extname = 'pg_cron'",
            &[],
        )
        .await
    {
        Ok(row) => row.map(|r| r.get(0)),
        Err(e) => return Check::warn(NAME, describe(&e), "check the role's access to pg_catalog"),
    };
    let Some(version) = version else {
        return Check::warn(
            NAME,
            "not installed in this database: the worker promotes due jobs itself (a glance every second) and prunes history hourly",
            "on Supabase enable pg_cron (Database → Extensions), then run `leadrelay migrate` again",
        );
    };
    // cron.* is queried only once pg_cron is known to be here.
    let job = client
        .query_opt(
            "select jobid, schedule, active from cron.job where jobname = 'promote-due-notification-jobs'",
            &[],
        )
        .await;
    let (jobid, schedule, active): (i64, String, bool) = match job {
        Ok(Some(row)) => (row.get(0), row.get(1), row.get(2)),
        Ok(None) => {
            return Check::fail(
                NAME,
                format!(
                    "pg_cron {version} is installed but promote-due-notification-jobs is not scheduled"
                ),
                "run `leadrelay migrate` again (it schedules the job)",
            );
        }
        Err(e) => {
            return Check::warn(
                NAME,
                format!("pg_cron {version}: cannot read cron.job ({})", describe(&e)),
                "grant the role usage on schema cron, or run doctor as postgres",
            );
        }
    };
    if !active {
        return Check::fail(
            NAME,
            "promote-due-notification-jobs is scheduled but inactive",
            "select cron.alter_job(jobid, active => true) from cron.job where jobname = 'promote-due-notification-jobs'",
        );
    }
    last_run(client, &version, jobid, &schedule).await
}

/// What pg_cron's last run of the promotion says.
async fn last_run(client: &Client, version: &str, jobid: i64, schedule: &str) -> Check {
    const NAME: &str = "pg_cron";
    let last = client
        .query_opt(
            "select status, coalesce(return_message, ''), extract(epoch from now() - coalesce(end_time, start_time))::float8
               from cron.job_run_details where jobid = $1 order by runid desc limit 1",
            &[&jobid],
        )
        .await;
    match last {
        Ok(Some(row)) => {
            let (status, message, age): (String, String, f64) =
                (row.get(0), row.get(1), row.get(2));
            if status == "failed" {
                Check::fail(
                    NAME,
                    format!(
                        "promote-due-notification-jobs failed {age:.0} s ago: {}",
                        crate::providers::clip(&message, 200)
                    ),
                    "see cron.job_run_details; the worker keeps promoting meanwhile",
                )
            } else if age > 300.0 {
                Check::warn(
                    NAME,
                    format!(
                        "pg_cron {version}: the last run of promote-due-notification-jobs ({schedule}) was {age:.0} s ago"
                    ),
                    "check that pg_cron's background worker runs (cron.database_name must be this database)",
                )
            } else {
                Check::ok(
                    NAME,
                    format!(
                        "pg_cron {version} promotes due jobs ({schedule}); last run {status} {age:.0} s ago"
                    ),
                )
            }
        }
        Ok(None) => Check::warn(
            NAME,
            format!(
                "pg_cron {version}: promote-due-notification-jobs ({schedule}) has not run yet"
            ),
            "wait a minute and run doctor again",
        ),
        Err(e) => Check::warn(
            NAME,
            describe(&e),
            "grant the role select on cron.job_run_details",
        ),
    }
}

/// Relations and functions leadrelay's migrations create, read from the
/// migrations themselves so a new one is covered without a list to keep.
fn our_objects() -> (Vec<String>, Vec<String>) {
    let mut relations = Vec::new();
    let mut functions = Vec::new();
    for m in migrate::embedded().unwrap_or_default() {
        for line in m.sql.lines() {
            let line = line.trim_start().to_ascii_lowercase();
            let name_after = |prefix: &str| {
                line.strip_prefix(prefix).map(|rest| {
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
            };
            for prefix in [
                "create table if not exists public.",
                "create or replace view public.",
            ] {
                if let Some(name) = name_after(prefix)
                    && name != "landing_leads"
                    && !relations.contains(&name)
                {
                    relations.push(name);
                }
            }
            if let Some(name) = name_after("create or replace function public.")
                && !functions.contains(&name)
            {
                functions.push(name);
            }
        }
    }
    (relations, functions)
}

/// What anon and authenticated may reach of leadrelay's tables ($1), their
/// sequences, and its functions ($2): each a line saying so.
const EXPOSED: &str = "select r.rolname || ' may ' || lower(p.priv) || ' public.' || c.relname
               from pg_class c
               cross join (values ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE')) p(priv)
               join pg_roles r on r.rolname in ('anon', 'authenticated')
              where c.relnamespace = 'public'::regnamespace and c.relname = any($1)
                and has_table_privilege(r.oid, c.oid, p.priv)
             union all
             -- the sequences of those tables (old projects' default
             -- privileges granted them to the API roles)
             select r.rolname || ' may use sequence ' || s.oid::regclass::text
               from pg_class s
               join pg_depend d on d.classid = 'pg_class'::regclass and d.objid = s.oid and d.deptype in ('a', 'i')
               join pg_class c on c.oid = d.refobjid
               join pg_roles r on r.rolname in ('anon', 'authenticated')
              where s.relkind = 'S' and c.relnamespace = 'public'::regnamespace and c.relname = any($1)
                and (has_sequence_privilege(r.oid, s.oid, 'USAGE') or has_sequence_privilege(r.oid, s.oid, 'SELECT')
                     or has_sequence_privilege(r.oid, s.oid, 'UPDATE'))
             union all
             select r.rolname || ' may execute public.' || f.oid::regprocedure::text
               from pg_proc f
               join pg_roles r on r.rolname in ('anon', 'authenticated')
              where f.pronamespace = 'public'::regnamespace and f.proname = any($2)
                and f.prokind = 'f' and f.prorettype <> 'trigger'::regtype
                and has_function_privilege(r.oid, f.oid, 'EXECUTE')
             order by 1";

/// What `serve` needs that the role it runs as lacks.
const NEEDS: &str = "select need from (values
               ('select, update on public.notification_jobs', has_table_privilege('public.notification_jobs', 'SELECT, UPDATE')),
               ('select, insert, update on public.notification_events', has_table_privilege('public.notification_events', 'SELECT, INSERT, UPDATE')),
               ('select on public.notification_rules', has_table_privilege('public.notification_rules', 'SELECT')),
               ('select on public.landing_leads', has_table_privilege('public.landing_leads', 'SELECT')),
               ('update of the mirror columns of public.landing_leads', has_column_privilege('public.landing_leads', 'email_sent', 'UPDATE')),
               ('execute on public.promote_due_notification_jobs', has_function_privilege('public.promote_due_notification_jobs(integer,interval)', 'EXECUTE')),
               ('execute on public.record_notification_event (the webhooks)', has_function_privilege('public.record_notification_event(text,text,text,text,timestamptz,jsonb,text)', 'EXECUTE')),
               ('insert on public.notification_event_inbox (the webhooks under load)', has_table_privilege('public.notification_event_inbox', 'INSERT')),
               ('execute on public.apply_notification_event_inbox (the webhooks under load)', has_function_privilege('public.apply_notification_event_inbox(integer)', 'EXECUTE')),
               ('execute on public.leadrelay_gate', has_function_privilege('public.leadrelay_gate(bigint[])', 'EXECUTE')),
               ('execute on leadrelay.recipient (retry and send again)', has_schema_privilege('leadrelay', 'USAGE') and has_function_privilege('leadrelay.recipient(text,text,text)', 'EXECUTE')),
               ('select, insert, update, delete on public.ops_sessions (the console''s sign-ins)', has_table_privilege('public.ops_sessions', 'SELECT, INSERT, UPDATE, DELETE')),
               ('select, insert on public.ops_audit (the console''s actions)', has_table_privilege('public.ops_audit', 'SELECT, INSERT')),
               ('insert on public.notification_jobs (the console''s reconciliation)', has_table_privilege('public.notification_jobs', 'INSERT')),
               ('select on public.notification_suppressions (a lead''s suppressions)', has_table_privilege('public.notification_suppressions', 'SELECT')),
               ('execute on public.leadrelay_suppress (unsubscribe, the console)', has_function_privilege('public.leadrelay_suppress(text,text,text,uuid,bigint,bigint,text)', 'EXECUTE')),
               ('execute on public.leadrelay_unsubscribe_key (serve''s unsubscribe links)', has_function_privilege('public.leadrelay_unsubscribe_key()', 'EXECUTE')),
               ('execute on public.leadrelay_forget (the console''s Forget)', has_function_privilege('public.leadrelay_forget(uuid[],boolean,text,bigint,text)', 'EXECUTE')),
               ('select on leadrelay.schema_migrations', has_schema_privilege('leadrelay', 'USAGE') and has_table_privilege('leadrelay.schema_migrations', 'SELECT'))
             ) n(need, granted) where not granted";

async fn privileges(client: &Client) -> Check {
    const NAME: &str = "privileges";
    let (relations, functions) = our_objects();
    let exposed = client.query(EXPOSED, &[&relations, &functions]).await;
    let exposed: Vec<String> = match exposed {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return Check::fail(NAME, describe(&e), "run doctor as the role serve uses"),
    };
    if !exposed.is_empty() {
        return Check::fail(
            NAME,
            format!("exposed through the public API: {}", exposed.join(", ")),
            "revoke all on <table> from anon, authenticated (and revoke all on sequence <sequence>, revoke execute on <function> from anon, authenticated)",
        );
    }
    let needs = client.query(NEEDS, &[]).await;
    match needs {
        Ok(rows) if rows.is_empty() => Check::ok(
            NAME,
            format!(
                "the role can do what serve needs; anon and authenticated reach none of leadrelay's {} tables and views or {} functions",
                relations.len(),
                functions.len()
            ),
        ),
        Ok(rows) => Check::fail(
            NAME,
            format!(
                "the role lacks: {}",
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "run sql/06_worker_role.sql as postgres, or connect as postgres",
        ),
        Err(e) => Check::fail(NAME, describe(&e), "run `leadrelay migrate` first"),
    }
}

/// Every enabled rule's template, as the worker checks it: a problem fails
/// its messages (and only those), a warning says which leads it may fail.
async fn templates(client: &Client, product_url: &str) -> Check {
    const NAME: &str = "templates";
    match crate::worker::template_check::check(client, product_url).await {
        Err(e) => Check::fail(NAME, e.to_string(), "run `leadrelay migrate` first"),
        Ok(f) if !f.problems.is_empty() => Check::fail(
            NAME,
            f.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            "fix the template in notification_templates (`leadrelay templates check` shows the line); until then only its own messages fail",
        ),
        Ok(f) if !f.warnings.is_empty() => Check::warn(
            NAME,
            f.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            "`leadrelay preview` a real lead to see it",
        ),
        Ok(f) => Check::ok(
            NAME,
            format!(
                "every enabled rule's template renders ({} rules)",
                f.fine.len()
            ),
        ),
    }
}

/// Sizes and the oldest rows kept: what housekeeping is holding down.
async fn storage(client: &Client) -> Check {
    const NAME: &str = "storage";
    let row = client
        .query_one(
            "select pg_size_pretty(pg_total_relation_size('public.notification_jobs')),
                    pg_size_pretty(pg_total_relation_size('public.notification_events')),
                    (select received_at::text from public.notification_events order by id limit 1),
                    (select now() - e.received_at > s.event_retention + interval '1 day'
                       from public.notification_events e, public.leadrelay_settings s order by e.id limit 1),
                    (select event_retention::text from public.leadrelay_settings)",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let (jobs, events, oldest, overdue, retention): (
                String,
                String,
                Option<String>,
                Option<bool>,
                Option<String>,
            ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let found = format!(
                "notification_jobs {jobs}, notification_events {events}, oldest event {}, kept {}",
                oldest.as_deref().unwrap_or("none"),
                retention.as_deref().unwrap_or("?")
            );
            if overdue == Some(true) {
                Check::warn(
                    NAME,
                    found,
                    "events older than the retention are still here: is pruning running (pg_cron job prune-leadrelay-history, or serve)?",
                )
            } else {
                Check::ok(NAME, found)
            }
        }
        Err(e) => Check::warn(NAME, describe(&e), "run `leadrelay migrate`"),
    }
}

/// `lead_tracking` where the dashboard reads it: reachable and writable.
pub async fn lead_tracking(args: &ServeArgs) -> Check {
    const NAME: &str = "lead_tracking";
    let (name, value) = match args.lead_tracking_database_url.as_deref().map(str::trim) {
        None | Some("") => ("DATABASE_URL", args.database_url.as_deref()),
        Some(v) => ("LEAD_TRACKING_DATABASE_URL", Some(v)),
    };
    let url = match config::database_url(name, value) {
        Ok(url) => url,
        Err(e) => return Check::fail(NAME, e.to_string(), format!("correct {name}")),
    };
    let client = match store::connect(url.expose()).await {
        Ok(client) => client,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("{name}: {e}"),
                format!("check {name}; the dashboard sync waits (and retries) until it connects"),
            );
        }
    };
    let row = client
        .query_one(
            "select to_regclass('public.lead_tracking') is not null,
                    case when to_regclass('public.lead_tracking') is not null
                         then has_table_privilege('public.lead_tracking', 'SELECT, INSERT, UPDATE') end",
            &[],
        )
        .await;
    match row {
        Ok(row) => match (row.get::<_, bool>(0), row.get::<_, Option<bool>>(1)) {
            (true, Some(true)) => {
                Check::ok(NAME, format!("public.lead_tracking is writable ({name})"))
            }
            (true, _) => Check::fail(
                NAME,
                format!("public.lead_tracking ({name}) is not writable by this role"),
                "grant select, insert, update on public.lead_tracking to the role",
            ),
            (false, _) => Check::fail(
                NAME,
                format!("public.lead_tracking does not exist in the database of {name}"),
                "set LEAD_TRACKING_DATABASE_URL to the dashboard's database, or disable the lead_tracking rule",
            ),
        },
        Err(e) => Check::fail(NAME, describe(&e), format!("check {name}")),
    }
}
