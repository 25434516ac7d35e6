//! Which message a provider holds belongs to which lead: the judgement of
//! `reconcile`, without any I/O.
//!
//! A message to an address belongs to the lead of that address it followed:
//! each lead owns the time from its arrival to the next lead of the same
//! address (normalised as the recipient checks normalise it), or to
//! [`MATCH_WITHIN`] after its arrival, whichever comes first. A lead whose
//! time holds exactly one message, which no other lead's time can hold, is
//! `Found`; none is `NotFound`; more, or one that may be another lead's, is
//! `Ambiguous` and left to the operator.
//!
//! Times: Resend's are exact instants. Mobizon's name no zone, so an SMS is
//! placed at every instant its listed time can mean from UTC−12 to UTC+14
//! (`ListedSms::possible_instants`): it is `NotFound` only when no reading
//! of its time puts it in the lead's span, and `Found` only when no reading
//! puts it in another lead's span. Whichever zone Mobizon writes in, an SMS
//! of the lead is never judged missing, and one of another lead of the same
//! number is never taken for this lead's (the reading that would put it
//! there makes it ambiguous instead).

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// How long after a lead's arrival a message can be its own: the system
/// before leadrelay sent 10 minutes later, and a person may have resent by
/// hand days later; a week covers both, and a later message is not taken
/// for this lead's (nor does it stop one being sent).
pub const MATCH_WITHIN: TimeDelta = TimeDelta::days(7);

/// A lead as the judgement sees it: when it arrived, and its address's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub lead: Uuid,
    pub at: DateTime<Utc>,
}

/// A message at the provider, placed in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed<M> {
    /// The earliest and latest instant it can have been made at (equal for
    /// an exact time).
    pub earliest: DateTime<Utc>,
    pub latest: DateTime<Utc>,
    pub message: M,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<M> {
    Found(M),
    NotFound,
    /// The candidates, and why they are not one answer.
    Ambiguous(Vec<M>, &'static str),
}

/// The span `lead` owns among `same_address` (every lead of the address
/// near it, itself included, any order).
fn span(lead: &Arrival, same_address: &[Arrival]) -> (DateTime<Utc>, DateTime<Utc>) {
    let next = same_address
        .iter()
        .filter(|other| other.lead != lead.lead)
        .filter(|other| other.at > lead.at || (other.at == lead.at && other.lead > lead.lead))
        .map(|other| other.at)
        .min();
    let end = lead.at + MATCH_WITHIN;
    (lead.at, next.map_or(end, |n| n.min(end)))
}

fn overlaps<M>(placed: &Placed<M>, (start, end): (DateTime<Utc>, DateTime<Utc>)) -> bool {
    placed.latest >= start && placed.earliest <= end
}

/// The verdict for `lead`, given the leads of its address near it and the
/// messages to that address no job holds yet.
pub fn judge<M: Clone>(
    lead: &Arrival,
    same_address: &[Arrival],
    messages: &[Placed<M>],
) -> Verdict<M> {
    let own = span(lead, same_address);
    let candidates: Vec<&Placed<M>> = messages.iter().filter(|m| overlaps(m, own)).collect();
    match candidates.as_slice() {
        [] => Verdict::NotFound,
        [one] => {
            let shared = same_address
                .iter()
                .filter(|other| other.lead != lead.lead)
                .any(|other| overlaps(one, span(other, same_address)));
            if shared {
                Verdict::Ambiguous(
                    vec![one.message.clone()],
                    "it may be the message of another lead with this address",
                )
            } else {
                Verdict::Found(one.message.clone())
            }
        }
        many => Verdict::Ambiguous(
            many.iter().map(|m| m.message.clone()).collect(),
            "several messages to this address after the lead arrived",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hhmm: &str) -> DateTime<Utc> {
        format!("2026-11-20T{hhmm}:00Z").parse().unwrap()
    }

    fn lead(n: u128, hhmm: &str) -> Arrival {
        Arrival {
            lead: Uuid::from_u128(n),
            at: at(hhmm),
        }
    }

    fn exact(id: &'static str, hhmm: &str) -> Placed<&'static str> {
        Placed {
            earliest: at(hhmm),
            latest: at(hhmm),
            message: id,
        }
    }

    /// An SMS listed at `hhmm` in a zone nobody names.
    fn unzoned(id: &'static str, hhmm: &str) -> Placed<&'static str> {
        Placed {
            earliest: at(hhmm) - TimeDelta::minutes(14 * 60 + 5),
            latest: at(hhmm) + TimeDelta::minutes(12 * 60 + 5),
            message: id,
        }
    }

    #[test]
    fn one_message_after_the_lead_is_found_none_is_not_found() {
        let a = lead(1, "12:07");
        assert_eq!(
            judge(&a, std::slice::from_ref(&a), &[exact("e1", "12:17")]),
            Verdict::Found("e1")
        );
        assert_eq!(
            judge(&a, std::slice::from_ref(&a), &[exact("e0", "11:00")]),
            Verdict::NotFound
        );
        assert_eq!(
            judge::<&str>(&a, std::slice::from_ref(&a), &[]),
            Verdict::NotFound
        );
    }

    #[test]
    fn two_messages_to_one_address_are_ambiguous() {
        let a = lead(1, "12:07");
        let verdict = judge(
            &a,
            std::slice::from_ref(&a),
            &[exact("e1", "12:17"), exact("e2", "15:00")],
        );
        assert!(matches!(verdict, Verdict::Ambiguous(c, _) if c == ["e1", "e2"]));
    }

    #[test]
    fn a_message_belongs_to_the_lead_it_followed_when_a_person_came_twice() {
        let first = lead(1, "10:00");
        let second = lead(2, "11:00");
        let both = [first.clone(), second.clone()];
        let sent = [exact("for-first", "10:10"), exact("for-second", "11:10")];
        assert_eq!(judge(&first, &both, &sent), Verdict::Found("for-first"));
        assert_eq!(judge(&second, &both, &sent), Verdict::Found("for-second"));
    }

    #[test]
    fn a_message_later_than_the_bound_is_not_the_leads() {
        let a = lead(1, "12:07");
        let late = Placed {
            earliest: at("12:07") + MATCH_WITHIN + TimeDelta::minutes(1),
            latest: at("12:07") + MATCH_WITHIN + TimeDelta::minutes(1),
            message: "late",
        };
        assert_eq!(
            judge(&a, std::slice::from_ref(&a), &[late]),
            Verdict::NotFound
        );
    }

    #[test]
    fn an_sms_in_any_zone_is_never_judged_missing() {
        // Listed at 02:00 by a Mobizon writing UTC−12: it was sent at 14:00
        // UTC, after the lead of 12:07.
        let a = lead(1, "12:07");
        assert_eq!(
            judge(&a, std::slice::from_ref(&a), &[unzoned("s1", "02:00")]),
            Verdict::Found("s1")
        );
        // Listed at 23:00 by a Mobizon writing UTC+14: sent at 09:00 UTC.
        let b = Arrival {
            lead: Uuid::from_u128(2),
            at: at("12:07") - TimeDelta::hours(3),
        };
        assert_eq!(
            judge(&b, std::slice::from_ref(&b), &[unzoned("s2", "23:00")]),
            Verdict::Found("s2")
        );
    }

    #[test]
    fn an_sms_another_lead_of_the_number_can_own_in_some_zone_is_ambiguous() {
        let first = lead(1, "10:00");
        let second = lead(2, "11:00");
        let both = [first.clone(), second.clone()];
        let verdict = judge(&second, &both, &[unzoned("s1", "10:10")]);
        assert!(matches!(verdict, Verdict::Ambiguous(c, _) if c == ["s1"]));
    }
}
