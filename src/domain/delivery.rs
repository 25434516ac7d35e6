//! How far a sent message got, as the providers report it, and what a job's
//! status allows. One definition each: ingest names states with these, the
//! console colours and words them, the CLI and the status API print them,
//! and `DeliveryState::rank` is `leadrelay_delivery_rank` in Rust (a test
//! compares the two for every state).

/// A message's delivery state, in leadrelay's words for both providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Mobizon NEW, ENQUEUD, ACCEPTD: on its way.
    Accepted,
    /// Resend `email.sent`: handed to the receiving server.
    Sent,
    DeliveryDelayed,
    /// Mobizon PDLIVRD: some parts of a long SMS arrived.
    PartlyDelivered,
    Delivered,
    Opened,
    Clicked,
    Undelivered,
    Rejected,
    Expired,
    Deleted,
    Failed,
    Bounced,
    /// Resend `email.suppressed`: Resend refused to send to the address.
    Suppressed,
    /// The person marked the message as spam: their own "stop".
    Complained,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 15] = [
        DeliveryState::Accepted,
        DeliveryState::Sent,
        DeliveryState::DeliveryDelayed,
        DeliveryState::PartlyDelivered,
        DeliveryState::Delivered,
        DeliveryState::Opened,
        DeliveryState::Clicked,
        DeliveryState::Undelivered,
        DeliveryState::Rejected,
        DeliveryState::Expired,
        DeliveryState::Deleted,
        DeliveryState::Failed,
        DeliveryState::Bounced,
        DeliveryState::Suppressed,
        DeliveryState::Complained,
    ];

    /// The name stored in `delivery_status` and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Accepted => "accepted",
            DeliveryState::Sent => "sent",
            DeliveryState::DeliveryDelayed => "delivery_delayed",
            DeliveryState::PartlyDelivered => "partly_delivered",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Opened => "opened",
            DeliveryState::Clicked => "clicked",
            DeliveryState::Undelivered => "undelivered",
            DeliveryState::Rejected => "rejected",
            DeliveryState::Expired => "expired",
            DeliveryState::Deleted => "deleted",
            DeliveryState::Failed => "failed",
            DeliveryState::Bounced => "bounced",
            DeliveryState::Suppressed => "suppressed",
            DeliveryState::Complained => "complained",
        }
    }

    pub fn parse(name: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A later report replaces an earlier one only with a higher rank, so
    /// reports arriving out of order never move a message backwards.
    /// Bands: below 30 on the way, 30–59 arrived, 60–69 failed after it was
    /// sent, 70 a complaint.
    pub fn rank(self) -> i32 {
        match self {
            DeliveryState::Accepted | DeliveryState::Sent => 10,
            DeliveryState::DeliveryDelayed => 20,
            DeliveryState::PartlyDelivered => 25,
            DeliveryState::Delivered => 30,
            DeliveryState::Opened => 40,
            DeliveryState::Clicked => 50,
            DeliveryState::Undelivered
            | DeliveryState::Rejected
            | DeliveryState::Expired
            | DeliveryState::Deleted
            | DeliveryState::Failed
            | DeliveryState::Bounced
            | DeliveryState::Suppressed => 60,
            DeliveryState::Complained => 70,
        }
    }

    /// The message reached the person.
    pub fn arrived(self) -> bool {
        (30..60).contains(&self.rank())
    }

    /// The message did not reach the person, or they refused it: a failure
    /// in every list, chart and timeline.
    pub fn is_failure(self) -> bool {
        self.rank() >= 60
    }

    /// Failed after it was sent, and may be sent again once the contact is
    /// corrected: every failure but a complaint.
    pub fn may_send_again(self) -> bool {
        (60..70).contains(&self.rank())
    }

    /// The SQL list of the states `pick` keeps, for statements written as
    /// constants: `'delivered', 'opened', 'clicked'`.
    pub fn sql_list(pick: fn(DeliveryState) -> bool) -> String {
        sql_list(&DeliveryState::ALL, pick, DeliveryState::as_str)
    }
}

/// The names of the values of `all` that `pick` keeps, quoted for SQL.
fn sql_list<T: Copy>(all: &[T], pick: fn(T) -> bool, name: fn(T) -> &'static str) -> String {
    all.iter()
        .copied()
        .filter(|v| pick(*v))
        .map(|v| format!("'{}'", name(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states that arrived (`DeliveryState::arrived`) as an SQL list, for
/// statements written as constants (`concat!`); a test holds it equal to
/// `DeliveryState::sql_list(DeliveryState::arrived)`.
macro_rules! arrived_states_sql {
    () => {
        "'delivered', 'opened', 'clicked'"
    };
}
pub(crate) use arrived_states_sql;

/// The states that are failures (`DeliveryState::is_failure`) as an SQL
/// list; a test holds it equal to `DeliveryState::sql_list`, and to the
/// predicate of `notification_jobs_failures_by_change_idx` (a migration,
/// written once).
macro_rules! failure_states_sql {
    () => {
        "'undelivered', 'rejected', 'expired', 'deleted', 'failed', 'bounced', 'suppressed', 'complained'"
    };
}
pub(crate) use failure_states_sql;

/// The statuses that `JobStatus::is_failure` keeps, as an SQL list for
/// statements written as constants; a test holds it to `JobStatus::sql_list`.
macro_rules! failed_statuses_sql {
    () => {
        "'failed', 'invalid'"
    };
}
pub(crate) use failed_statuses_sql;

/// The statuses that `JobStatus::is_waiting` keeps, as an SQL list.
macro_rules! waiting_statuses_sql {
    () => {
        "'scheduled', 'due'"
    };
}
pub(crate) use waiting_statuses_sql;

/// A job's status (`notification_jobs.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for its time (or for its send window).
    Scheduled,
    /// Its time came; the worker takes it at the next claim.
    Due,
    /// Claimed by a worker, which holds its lock.
    Sending,
    Sent,
    /// Out of attempts, or refused for good by the provider.
    Failed,
    /// Its contact cannot be used (no address, a malformed phone).
    Invalid,
    Cancelled,
}

/// Why a job ended `failed` or `invalid` (`notification_jobs.failed_because`),
/// so that what follows (a retry, a report) decides by the cause rather than
/// by the words of the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The email address or phone cannot be used.
    Contact,
    /// The message could not be made: its template is missing, broken, or
    /// renders an SMS longer than the rule allows. A retry fixes the
    /// content from the template as it is now.
    Content,
    /// The provider refused it for good.
    Provider,
    /// Every attempt met a temporary failure (or a worker stopped mid-way).
    Attempts,
    /// An SMS whose outcome is unknown, left to a person
    /// (`SMS_UNKNOWN_OUTCOME=fail`, or a look-up that could not tell).
    InDoubt,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Contact => "contact",
            FailureKind::Content => "content",
            FailureKind::Provider => "provider",
            FailureKind::Attempts => "attempts",
            FailureKind::InDoubt => "in_doubt",
        }
    }
}

/// What an operator may do to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// Put a failed job back, with fresh attempts.
    Retry,
    /// Send a scheduled job now, past its delay (still through the gate).
    SendNow,
    /// Send again, as a new message, one whose delivery failed after it was
    /// sent.
    SendAgain,
    /// Stop a job that has not gone.
    Cancel,
}

impl JobAction {
    pub const ALL: [JobAction; 4] = [
        JobAction::Retry,
        JobAction::SendNow,
        JobAction::SendAgain,
        JobAction::Cancel,
    ];
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Scheduled,
        JobStatus::Due,
        JobStatus::Sending,
        JobStatus::Sent,
        JobStatus::Failed,
        JobStatus::Invalid,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Due => "due",
            JobStatus::Sending => "sending",
            JobStatus::Sent => "sent",
            JobStatus::Failed => "failed",
            JobStatus::Invalid => "invalid",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Has not gone and will not go without an operator.
    pub fn is_failure(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Invalid)
    }

    /// Still to go: waiting for its time or due.
    pub fn is_waiting(self) -> bool {
        matches!(self, JobStatus::Scheduled | JobStatus::Due)
    }

    /// Whether `action` applies to a job in this status whose message got
    /// as far as `delivery`. The statements in `store::operator` select by
    /// the same rules (`JobStatus::sql_list`, `sent_then_failed!`).
    pub fn allows(self, action: JobAction, delivery: Option<DeliveryState>) -> bool {
        match action {
            JobAction::Retry => self.is_failure(),
            JobAction::SendNow => self == JobStatus::Scheduled,
            JobAction::SendAgain => {
                self == JobStatus::Sent && delivery.is_some_and(DeliveryState::may_send_again)
            }
            JobAction::Cancel => self.is_waiting() || self.is_failure(),
        }
    }

    /// The statuses `pick` keeps, as an SQL list.
    pub fn sql_list(pick: fn(JobStatus) -> bool) -> String {
        sql_list(&JobStatus::ALL, pick, JobStatus::as_str)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_one_name_and_reads_back() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("Delivered"), None);
        assert_eq!(JobStatus::parse(""), None);
    }

    #[test]
    fn a_suppressed_email_is_a_failure_that_may_go_again_and_a_complaint_never() {
        assert!(DeliveryState::Suppressed.is_failure());
        assert!(DeliveryState::Suppressed.may_send_again());
        assert!(DeliveryState::Complained.is_failure());
        assert!(!DeliveryState::Complained.may_send_again());
        assert!(DeliveryState::Opened.arrived() && !DeliveryState::Opened.is_failure());
        assert!(!DeliveryState::DeliveryDelayed.arrived());
        assert_eq!(
            DeliveryState::sql_list(DeliveryState::arrived),
            arrived_states_sql!()
        );
        assert_eq!(
            DeliveryState::sql_list(DeliveryState::is_failure),
            failure_states_sql!()
        );
    }

    #[test]
    fn the_failures_index_names_the_failure_states_of_the_domain() {
        let migration = include_str!("../../supabase/migrations/20261207090000_lighter_writes.sql");
        let predicate = format!("or delivery_status in ({})", failure_states_sql!());
        assert!(
            migration.contains(&predicate),
            "the index predicate must be {predicate}"
        );
    }

    #[test]
    fn actions_follow_the_status() {
        use JobAction::*;
        use JobStatus::*;
        let allows = |s: JobStatus, a| s.allows(a, None);
        assert!(allows(Failed, Retry) && allows(Invalid, Retry) && !allows(Sent, Retry));
        assert!(allows(Scheduled, SendNow) && !allows(Due, SendNow) && !allows(Failed, SendNow));
        assert!(allows(Failed, Cancel) && allows(Due, Cancel));
        assert!(!allows(Sending, Cancel) && !allows(Sent, Cancel) && !allows(Cancelled, Cancel));
        assert!(Sent.allows(SendAgain, Some(DeliveryState::Bounced)));
        assert!(Sent.allows(SendAgain, Some(DeliveryState::Suppressed)));
        assert!(!Sent.allows(SendAgain, Some(DeliveryState::Complained)));
        assert!(!Sent.allows(SendAgain, Some(DeliveryState::Delivered)));
        assert!(
            !allows(Sent, SendAgain) && !Failed.allows(SendAgain, Some(DeliveryState::Bounced))
        );
        assert_eq!(
            JobStatus::sql_list(JobStatus::is_failure),
            failed_statuses_sql!()
        );
        assert_eq!(
            JobStatus::sql_list(JobStatus::is_waiting),
            waiting_statuses_sql!()
        );
    }
}
