//! The webhook inbox (`notification_event_inbox`): events answered once
//! stored and applied by `serve` within moments. Events that wait long mean
//! no `serve` is applying them; events kept with an error need an operator.

use tokio_postgres::Client;

use super::Check;
use crate::store::describe;

const NAME: &str = "webhook inbox";

/// Waiting events, the oldest one's age in seconds, and the events kept
/// with an error (with the first error).
const INBOX: &str = "
select count(*) filter (where failed_at is null),
       extract(epoch from now() - min(received_at) filter (where failed_at is null))::float8,
       count(*) filter (where failed_at is not null),
       (array_agg(last_error order by id) filter (where failed_at is not null))[1]
from public.notification_event_inbox";

/// An event waiting longer than this has no applier: `serve` looks every
/// 2 s even when nothing wakes it.
const STALE_SECONDS: f64 = 60.0;

pub async fn check(client: &Client) -> Check {
    let row = match client.query_one(INBOX, &[]).await {
        Ok(row) => row,
        Err(e) => return Check::warn(NAME, describe(&e), "run `leadrelay migrate`"),
    };
    let (waiting, oldest, failed, first_error): (i64, Option<f64>, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    verdict(waiting, oldest, failed, first_error.as_deref())
}

fn verdict(waiting: i64, oldest: Option<f64>, failed: i64, first_error: Option<&str>) -> Check {
    if failed > 0 {
        return Check::fail(
            NAME,
            format!(
                "{failed} event(s) could not be applied, the first: {}",
                first_error.unwrap_or("?")
            ),
            "read last_error in notification_event_inbox, fix the cause, then \
             `update notification_event_inbox set failed_at = null, last_error = null` to apply them again",
        );
    }
    match oldest {
        Some(age) if age > STALE_SECONDS => Check::warn(
            NAME,
            format!("{waiting} event(s) waiting, the oldest for {age:.0} s"),
            "start `leadrelay serve`: it applies the inbox",
        ),
        _ => Check::ok(NAME, format!("{waiting} event(s) waiting")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::Status;

    #[test]
    fn kept_errors_fail_a_stale_inbox_warns_and_a_moving_one_is_fine() {
        let failed = verdict(0, None, 2, Some("no (SQLSTATE 23514)"));
        assert_eq!(failed.status, Status::Fail);
        assert!(failed.found.contains("2 event(s)") && failed.found.contains("23514"));
        assert_eq!(verdict(3, Some(61.0), 0, None).status, Status::Warn);
        assert_eq!(verdict(3, Some(0.2), 0, None).status, Status::Ok);
        assert_eq!(verdict(0, None, 0, None).status, Status::Ok);
    }
}
