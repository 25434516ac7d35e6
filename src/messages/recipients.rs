//! The last check before a provider is called: a recipient that cannot be
//! valid makes the job `invalid` with a reason a person understands, and no
//! request is made. The migration's trigger applies the same first rules; this
//! adds the phone-number metadata of libphonenumber (the `phonenumber` crate).

use phonenumber::country::Id;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecipient {
    #[error("email is missing")]
    EmailMissing,
    #[error("email contains invisible formatting characters (zero-width or direction marks)")]
    EmailFormatCharacters,
    #[error("email is longer than 254 characters")]
    EmailTooLong,
    #[error("email is not an address of the form name@domain.tld")]
    EmailShape,
    #[error("phone is missing")]
    PhoneMissing,
    #[error("phone is longer than 64 characters")]
    PhoneTooLong,
    #[error(
        "phone has {0} digits; a Kazakhstan number needs 11 (7, the 3-digit operator code and 7 digits)"
    )]
    PhoneDigits(usize),
    #[error("phone is not a number any Kazakhstan or Russian operator uses (country code 7)")]
    PhoneNotInUse,
    #[error("phone is not a mobile number (a landline cannot receive an SMS)")]
    PhoneNotMobile,
}

/// White space of every kind, and the byte-order mark, around a value: what
/// `leadrelay_trim()` in the database removes too.
fn trim(value: &str) -> &str {
    value.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}')
}

/// Invisible characters that make one address look like another: the
/// database's trigger refuses the same set.
fn is_format_character(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// A trimmed address with one `@`, a dotted domain and no spaces or brackets.
pub fn email(raw: Option<&str>) -> Result<String, InvalidRecipient> {
    let value = raw.map(trim).unwrap_or_default();
    if value.is_empty() {
        return Err(InvalidRecipient::EmailMissing);
    }
    if value.len() > 254 {
        return Err(InvalidRecipient::EmailTooLong);
    }
    if value.chars().any(is_format_character) {
        return Err(InvalidRecipient::EmailFormatCharacters);
    }
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || "<>(),;:\"[]\\".contains(c);
    let Some((local, domain)) = value.split_once('@') else {
        return Err(InvalidRecipient::EmailShape);
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let shape_ok = !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && !value.chars().any(forbidden)
        && !value.contains("..")
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && labels.last().is_some_and(|tld| tld.chars().count() >= 2);
    if !shape_ok {
        return Err(InvalidRecipient::EmailShape);
    }
    Ok(value.to_string())
}

/// The international digits Mobizon expects (`77051234567`), from whatever a
/// person typed: `+7 (705) 123-45-67`, `8 705 123 4567`, `87051234567`, or a
/// Kazakh mobile number without its country code, `705 123 45 67`. Only a
/// mobile number will do: an SMS to a landline goes nowhere.
pub fn phone(raw: Option<&str>) -> Result<String, InvalidRecipient> {
    let value = raw.map(trim).unwrap_or_default();
    if value.is_empty() {
        return Err(InvalidRecipient::PhoneMissing);
    }
    if value.len() > 64 {
        return Err(InvalidRecipient::PhoneTooLong);
    }
    let mut digits: String = value.chars().filter(char::is_ascii_digit).collect();
    // Ten digits of a mobile number typed without '+7' or '8': a number
    // typed with '+' keeps what it has ('+7 (476) 123-45-6' is short).
    if digits.len() == 10 && digits.starts_with('7') && !value.starts_with('+') {
        digits.insert(0, '7');
    }
    if digits.len() != 11 {
        return Err(InvalidRecipient::PhoneDigits(digits.len()));
    }
    if digits.starts_with('8') {
        digits.replace_range(0..1, "7");
    }
    if !digits.starts_with('7') {
        return Err(InvalidRecipient::PhoneNotInUse);
    }
    let parsed = phonenumber::parse(Some(Id::KZ), format!("+{digits}"))
        .map_err(|_| InvalidRecipient::PhoneNotInUse)?;
    if !phonenumber::is_valid(&parsed) {
        return Err(InvalidRecipient::PhoneNotInUse);
    }
    use phonenumber::Type;
    match parsed.number_type(&phonenumber::metadata::DATABASE) {
        Type::Mobile | Type::FixedLineOrMobile => Ok(digits),
        _ => Err(InvalidRecipient::PhoneNotMobile),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incident_phones_are_normalised_or_refused() {
        assert_eq!(phone(Some("+7 (705) 123-45-67")).unwrap(), "77051234567");
        assert_eq!(phone(Some("+7 (702) 765-43-21")).unwrap(), "77027654321");
        assert_eq!(phone(Some("+7 (777) 111-22-33")).unwrap(), "77771112233");
        assert_eq!(
            phone(Some("+7 (476) 123-45-6")),
            Err(InvalidRecipient::PhoneDigits(10))
        );
    }

    #[test]
    fn landlines_format_characters_and_odd_white_space_are_handled() {
        assert_eq!(
            phone(Some("+7 727 250 00 00")),
            Err(InvalidRecipient::PhoneNotMobile)
        );
        assert_eq!(
            phone(Some("+7 495 123 45 67")),
            Err(InvalidRecipient::PhoneNotMobile)
        );
        assert_eq!(phone(Some("705 123 45 67")).unwrap(), "77051234567");
        assert_eq!(
            phone(Some("\u{a0}+7 705 123 45 67\n")).unwrap(),
            "77051234567"
        );
        assert_eq!(email(Some("a@b.kz\n")).unwrap(), "a@b.kz");
        assert_eq!(email(Some("\u{feff}a@b.kz\u{3000}")).unwrap(), "a@b.kz");
        assert_eq!(
            email(Some("a\u{200b}@b.kz")),
            Err(InvalidRecipient::EmailFormatCharacters)
        );
        assert_eq!(
            email(Some("a@b\u{202e}zk.kz")),
            Err(InvalidRecipient::EmailFormatCharacters)
        );
    }

    #[test]
    fn the_spellings_people_type_are_accepted() {
        for typed in [
            "8 705 123 4567",
            "87051234567",
            "+7-705-123-45-67",
            "7 705 1234567",
            "705 123 45 67",
        ] {
            assert_eq!(phone(Some(typed)).unwrap(), "77051234567", "{typed}");
        }
    }

    #[test]
    fn hostile_and_impossible_phones_are_refused_with_a_reason() {
        assert_eq!(phone(None), Err(InvalidRecipient::PhoneMissing));
        assert_eq!(phone(Some("   ")), Err(InvalidRecipient::PhoneMissing));
        assert_eq!(
            phone(Some(&"7".repeat(65))),
            Err(InvalidRecipient::PhoneTooLong)
        );
        assert_eq!(
            phone(Some("call me")),
            Err(InvalidRecipient::PhoneDigits(0))
        );
        assert_eq!(
            phone(Some("+1 555 123 45 67")),
            Err(InvalidRecipient::PhoneNotInUse)
        );
        // eleven digits, but no operator has code 000
        assert_eq!(
            phone(Some("+7 000 000 00 00")),
            Err(InvalidRecipient::PhoneNotInUse)
        );
        let reason = phone(Some("+7 (476) 123-45-6")).unwrap_err().to_string();
        assert!(reason.contains("10 digits"), "{reason}");
    }

    #[test]
    fn emails_are_trimmed_and_checked() {
        assert_eq!(
            email(Some(" Aliya.Test1@gmail.com ")).unwrap(),
            "Aliya.Test1@gmail.com"
        );
        assert_eq!(email(None), Err(InvalidRecipient::EmailMissing));
        for bad in [
            "a",
            "a@b",
            "a@b.c",
            "a b@c.kz",
            "a@@b.kz",
            "a@b..kz",
            "<a@b.kz>",
            "a@.kz",
            "a\u{0}@b.kz",
        ] {
            assert_eq!(
                email(Some(bad)),
                Err(InvalidRecipient::EmailShape),
                "{bad:?}"
            );
        }
        assert_eq!(
            email(Some(&format!("{}@x.kz", "a".repeat(300)))),
            Err(InvalidRecipient::EmailTooLong)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,80}") {
            let _ = phone(Some(&s));
            let _ = email(Some(&s));
        }
    }
}
