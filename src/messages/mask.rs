//! Masks personal data for log lines: logs name the lead and the job, never a
//! whole email address or phone number.

/// `aigerim.test0@gmail.com` → `a***@gmail.com`.
pub fn email(address: &str) -> String {
    match address.trim().rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            let first: String = local.chars().take(1).collect();
            let domain: String = domain.chars().take(64).collect();
            format!("{first}***@{domain}")
        }
        _ => "***".to_string(),
    }
}

/// `77051234567` → `+7 705 *** ** 67`: the operator code and the last two
/// digits, enough to tell numbers apart in a log.
pub fn phone(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 6 {
        return "***".to_string();
    }
    let country = digits[0];
    let operator: String = digits[1..4].iter().collect();
    let last: String = digits[digits.len() - 2..].iter().collect();
    format!("+{country} {operator} *** ** {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_keep_only_the_first_letter_and_the_domain() {
        assert_eq!(email("aigerim.test0@gmail.com"), "a***@gmail.com");
        assert_eq!(email("g@gmail.com"), "g***@gmail.com");
        assert_eq!(email("Алия@mail.ru"), "А***@mail.ru");
        assert_eq!(email("no-at-sign"), "***");
        assert_eq!(email("@domain.kz"), "***");
        assert_eq!(email(""), "***");
        assert!(email(&format!("a@{}", "x".repeat(10_000))).len() < 80);
    }

    #[test]
    fn phones_keep_the_operator_code_and_the_last_two_digits() {
        assert_eq!(phone("77051234567"), "+7 705 *** ** 67");
        assert_eq!(phone("+7 (777) 111-22-33"), "+7 777 *** ** 33");
        assert_eq!(phone("123"), "***");
        assert_eq!(phone("абв"), "***");
    }
}
