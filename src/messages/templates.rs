//! The proftest messages. Rendering depends only on the job's lead and the
//! configured product URL, so a retried email has exactly the body of the
//! first attempt (Resend answers 409 to a reused idempotency key with another
//! body).

pub const PROFTEST_SUBJECT: &str = "Тест пройден. Получить продукт";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The proftest result email in Russian. The name is what the person typed:
/// cut to a sane length and HTML-escaped.
pub fn proftest_email(name: Option<&str>, product_url: &str) -> Email {
    let name = display_name(name);
    let greeting = match &name {
        Some(n) => format!("{n}, здравствуйте!"),
        None => "Здравствуйте!".to_string(),
    };
    let text = format!(
        "{greeting}\n\nВы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:\n{product_url}\n\nЕсли вы не проходили тест, просто проигнорируйте это письмо.\n"
    );
    let html = format!(
        "<!doctype html><html lang=\"ru\"><body style=\"font-family:Arial,sans-serif;line-height:1.5\">\
<p>{greeting}</p>\
<p>Вы прошли профориентационный тест. Ваш результат и продукт, который мы подобрали для вас, ждут по ссылке:</p>\
<p><a href=\"{url}\" style=\"display:inline-block;padding:12px 20px;background:#2f6fed;color:#fff;text-decoration:none;border-radius:6px\">Получить продукт</a></p>\
<p style=\"color:#666;font-size:13px\">Если вы не проходили тест, просто проигнорируйте это письмо.</p>\
</body></html>",
        greeting = html_escape(&greeting),
        url = html_escape(product_url),
    );
    Email {
        subject: PROFTEST_SUBJECT.to_string(),
        html,
        text,
    }
}

/// The proftest SMS: no name (a long or odd one would cost extra segments),
/// short enough for two Cyrillic segments with a typical URL.
pub fn proftest_sms(product_url: &str) -> String {
    format!("Тест пройден! Получите ваш продукт: {product_url}")
}

fn display_name(name: Option<&str>) -> Option<String> {
    let cleaned: String = name?
        .chars()
        .filter(|c| !c.is_control())
        .take(60)
        .collect::<String>()
        .trim()
        .to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Escapes text for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_email_greets_by_name_and_links_the_product() {
        let e = proftest_email(Some("Айгерим"), "https://academy.kz/product");
        assert_eq!(e.subject, "Тест пройден. Получить продукт");
        assert!(e.text.starts_with("Айгерим, здравствуйте!"));
        assert!(e.html.contains("href=\"https://academy.kz/product\""));
        assert!(e.text.contains("https://academy.kz/product"));
    }

    #[test]
    fn hostile_names_are_escaped_and_cut() {
        let e = proftest_email(Some("<script>alert('x')</script>"), "https://a.kz");
        assert!(!e.html.contains("<script>"));
        assert!(e.html.contains("&lt;script&gt;"));
        let long = "Я".repeat(100_000);
        let e = proftest_email(Some(&long), "https://a.kz");
        assert!(e.html.len() < 2_000);
        let e = proftest_email(Some(" \n\t "), "https://a.kz");
        assert!(e.text.starts_with("Здравствуйте!"));
        let e = proftest_email(None, "https://a.kz");
        assert!(e.text.starts_with("Здравствуйте!"));
    }

    #[test]
    fn rendering_is_deterministic_so_retries_send_the_same_body() {
        assert_eq!(
            proftest_email(Some("A"), "https://a.kz"),
            proftest_email(Some("A"), "https://a.kz")
        );
    }

    #[test]
    fn the_sms_is_short() {
        let sms = proftest_sms("https://academy.kz/p");
        assert!(sms.chars().count() <= 134, "two Cyrillic segments");
    }
}
