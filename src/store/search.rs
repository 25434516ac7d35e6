//! Finding a lead the way an operator asks: by its id, its email, its phone
//! (typed any way: `8 705 904 44 67` finds `+7 (705) 904-44-67`, normalised
//! by the database function the trigger uses) or a fragment of its name. One
//! statement per kind, each an index lookup at any table size; `leadrelay
//! status` and the ops console's search both use them.

use uuid::Uuid;

/// What the operator typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadQuery {
    Id(Uuid),
    Email(String),
    Phone(String),
    /// A LIKE pattern (`%fragment%`, wildcards in the fragment escaped).
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("type a lead id, an email, a phone or at least 3 letters of a name")]
    Empty,
    #[error("a search is at most 200 characters")]
    TooLong,
    #[error("{0:?} has the characters of a phone but not 10 or 11 digits")]
    NotAPhone(String),
    #[error("a name fragment needs at least 3 letters")]
    ShortName,
}

impl LeadQuery {
    pub fn parse(input: &str) -> Result<LeadQuery, SearchError> {
        let q = input.trim();
        if q.is_empty() {
            return Err(SearchError::Empty);
        }
        if q.chars().count() > 200 {
            return Err(SearchError::TooLong);
        }
        if let Ok(id) = Uuid::parse_str(q) {
            return Ok(LeadQuery::Id(id));
        }
        if q.contains('@') {
            return Ok(LeadQuery::Email(q.to_string()));
        }
        let phone_like = q
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        if phone_like {
            let digits = q.chars().filter(char::is_ascii_digit).count();
            return if (10..=11).contains(&digits) {
                Ok(LeadQuery::Phone(q.to_string()))
            } else {
                Err(SearchError::NotAPhone(q.chars().take(40).collect()))
            };
        }
        if q.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
            return Err(SearchError::ShortName);
        }
        Ok(LeadQuery::Name(format!("%{}%", like_escape(q))))
    }

    /// The statement and its one text parameter.
    pub fn statement(&self) -> (&'static str, String) {
        match self {
            LeadQuery::Id(id) => (BY_ID, id.to_string()),
            LeadQuery::Email(e) => (BY_EMAIL, e.clone()),
            LeadQuery::Phone(p) => (BY_PHONE, p.clone()),
            LeadQuery::Name(pattern) => (BY_NAME, pattern.clone()),
        }
    }
}

/// `%`, `_` and `\` typed in a name are matched as themselves.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The leads found and each channel's state: id, name, email, phone, source,
/// created_at, then per channel (email, sms) status, delivery status,
/// reason (hold or error), held until.
macro_rules! lead_search {
    ($($matches:expr),+) => {
        concat!(
            "with found as materialized (",
            $($matches),+,
            ")
select l.id, l.name, l.email, l.phone, l.source, l.created_at,
       e.status, e.delivery_status, coalesce(e.hold, e.last_error), e.held,
       s.status, s.delivery_status, coalesce(s.hold, s.last_error), s.held
from found f
join public.landing_leads l on l.id = f.id
left join lateral (
  select j.status, j.delivery_status, j.last_error,
         case when leadrelay.held_until(j.status, j.held_until, j.due_at) is not null then j.hold_reason end as hold,
         leadrelay.held_until(j.status, j.held_until, j.due_at) as held
  from public.notification_jobs j where j.lead_id = l.id and j.channel = 'email'
  order by j.id limit 1) e on true
left join lateral (
  select j.status, j.delivery_status, j.last_error,
         case when leadrelay.held_until(j.status, j.held_until, j.due_at) is not null then j.hold_reason end as hold,
         leadrelay.held_until(j.status, j.held_until, j.due_at) as held
  from public.notification_jobs j where j.lead_id = l.id and j.channel = 'sms'
  order by j.id limit 1) s on true
order by l.created_at desc, l.id
limit 50"
        )
    };
}

pub const BY_ID: &str =
    lead_search!("select id, created_at from public.landing_leads where id = $1::text::uuid");
/// The expression of `landing_leads_email_lookup_idx`
/// (`…_landing_writes.sql`), which the search must name exactly for the
/// planner to use the index: the email lower-cased and trimmed of every
/// kind of white space, in built-in functions only, because the landing's
/// role evaluates it on every write and may execute nothing of leadrelay's.
/// The set is `leadrelay_trim()`'s; a test checks the index holds this
/// expression and pgTAP that the two trims agree.
macro_rules! email_key {
    () => {
        r"lower(btrim(email, E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff'))"
    };
}
pub const EMAIL_KEY: &str = email_key!();

pub const BY_EMAIL: &str = lead_search!(
    "select id, created_at from public.landing_leads where ",
    email_key!(),
    " = lower(public.leadrelay_trim($1::text))"
);
/// The expression of `landing_leads_phone_digits_idx`
/// (`…_phone_digits_index.sql`): the phone's ASCII digits as typed, every
/// other character removed by `translate()` (what
/// `regexp_replace(phone, '[^0-9]', '', 'g')` returns, without a regular
/// expression on each landing write; the migration's comment calls it
/// PHONE_DIGITS). The search must name it exactly; a test checks the
/// planner takes the index.
macro_rules! phone_digits {
    () => {
        "translate(l.phone, translate(l.phone, '0123456789', ''), '')"
    };
}
/// The digits as stored, in each form the normalised number can be typed
/// in (`landing_leads_phone_digits_idx`), then the normaliser itself.
pub const BY_PHONE: &str = lead_search!(
    "select l.id, l.created_at
  from (select public.leadrelay_phone_digits($1::text) as d) n
  join public.landing_leads l
    on ",
    phone_digits!(),
    " = any(array[n.d, '8' || substr(n.d, 2), substr(n.d, 2)])
   and public.leadrelay_phone_digits(l.phone) = n.d"
);
/// Every match goes through the trigram index first (MATERIALIZED): walking
/// the newest leads until 50 match would read the whole table for a rare name.
pub const BY_NAME: &str =
    lead_search!("select id, created_at from public.landing_leads where name ilike $1::text");

pub fn statements() -> [&'static str; 4] {
    [BY_ID, BY_EMAIL, BY_PHONE, BY_NAME]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_types_what_they_have() {
        let id = "0b6f2f0e-4d55-4e44-9a3a-5b0f8c1d2e3f";
        assert_eq!(
            LeadQuery::parse(&format!("  {id} ")),
            Ok(LeadQuery::Id(Uuid::parse_str(id).unwrap()))
        );
        assert_eq!(
            LeadQuery::parse(" Aigerim@Mail.RU "),
            Ok(LeadQuery::Email("Aigerim@Mail.RU".into()))
        );
        for phone in [
            "8 705 904 44 67",
            "+7 (705) 904-44-67",
            "87059044467",
            "705 904 44 67",
        ] {
            assert_eq!(
                LeadQuery::parse(phone),
                Ok(LeadQuery::Phone(phone.into())),
                "{phone}"
            );
        }
        assert_eq!(
            LeadQuery::parse("Айгер"),
            Ok(LeadQuery::Name("%Айгер%".into()))
        );
    }

    #[test]
    fn malformed_and_hostile_searches_get_a_clear_answer() {
        assert_eq!(LeadQuery::parse("   "), Err(SearchError::Empty));
        assert_eq!(LeadQuery::parse("ab"), Err(SearchError::ShortName));
        assert_eq!(LeadQuery::parse("%%%"), Err(SearchError::ShortName));
        assert!(matches!(
            LeadQuery::parse("+7 705 904"),
            Err(SearchError::NotAPhone(_))
        ));
        assert_eq!(
            LeadQuery::parse(&"x".repeat(201)),
            Err(SearchError::TooLong)
        );
        // LIKE wildcards and quotes are data, not pattern or SQL
        assert_eq!(
            LeadQuery::parse("100%_o'k\\"),
            Ok(LeadQuery::Name("%100\\%\\_o'k\\\\%".into()))
        );
        assert_eq!(
            LeadQuery::parse("'; drop table landing_leads; --"),
            Ok(LeadQuery::Name(
                "%'; drop table landing\\_leads; --%".into()
            ))
        );
    }
}
