//! Messages as data: the rows of `notification_templates`, compiled with
//! MiniJinja and rendered from the values a job's first claim fixed
//! (`sent_params`), so a retry renders exactly what the first attempt did.
//!
//! HTML is escaped in an email's `html` (with the same escaping as before
//! templates were data, so today's email is unchanged byte for byte), never
//! in its subject, text or an SMS. A variable that does not exist is an
//! error, never an empty hole.

use std::collections::BTreeMap;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use super::sms_length::{self, SmsLength};
use crate::domain::Channel;
pub use crate::domain::TemplateSource;

/// A template that cannot be used, with the engine's words and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {key} ({channel}) version {version}, {part}{line}: {message}")]
    Invalid {
        key: String,
        channel: &'static str,
        version: i32,
        part: &'static str,
        line: String,
        message: String,
    },
    #[error("template {key} ({channel}) has no {part}")]
    Incomplete {
        key: String,
        channel: &'static str,
        part: &'static str,
    },
}

/// A compiled template version.
#[derive(Debug)]
pub struct Compiled {
    source: TemplateSource,
    env: Environment<'static>,
}

/// What an email is made of: inline content, or a template Resend hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailContent {
    Inline {
        subject: String,
        html: String,
        text: Option<String>,
    },
    Hosted {
        id: String,
        /// Overrides the hosted template's own subject when set.
        subject: Option<String>,
        variables: BTreeMap<String, String>,
    },
}

/// A rendered message of either channel: what the worker sends, what a
/// preview shows and what the template check measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Email(EmailContent),
    Sms { text: String, length: SmsLength },
}

/// The parts of a template, named as they appear in errors.
const PARTS: [(&str, &str); 4] = [
    ("subject", "subject.txt"),
    ("html", "html.html"),
    ("text", "text.txt"),
    ("body", "body.txt"),
];

/// Work a render may do before it is stopped: a template is data someone
/// typed, and a loop over a large range must not hold a lane.
const FUEL: u64 = 50_000;

impl Compiled {
    pub fn compile(source: TemplateSource) -> Result<Compiled, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // Today's escaping (MiniJinja's own also escapes `/`, which would
        // change every link in the email).
        env.set_formatter(|out, state, value| {
            if matches!(state.auto_escape(), AutoEscape::Html) && !value.is_safe() {
                let text = match value.as_str() {
                    Some(s) => html_escape(s),
                    None if value.is_none() => String::new(),
                    None => html_escape(&value.to_string()),
                };
                out.write_str(&text).map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.set_fuel(Some(FUEL));
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        for (part, name) in PARTS {
            if let Some(text) = part_of(&source, part) {
                env.add_template_owned(name, text.to_string())
                    .map_err(|e| invalid(&source, part, &e))?;
            }
        }
        let compiled = Compiled { source, env };
        compiled.complete()?;
        Ok(compiled)
    }

    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The keys of the lead's `metadata` the template reads (`{{ city }}`,
    /// `{{ metadata.city }}`): every variable it uses that is neither a
    /// lead's field, the product link, `metadata`, `params` nor a key of the
    /// rule's params. A lead without one of them cannot render it; a check
    /// against a sample lead gives the sample those keys.
    pub fn metadata_keys(&self, rule_params: &serde_json::Value) -> Vec<String> {
        let params = rule_params.as_object();
        let mut keys = std::collections::BTreeSet::new();
        for (_, name) in PARTS {
            let Ok(template) = self.env.get_template(name) else {
                continue;
            };
            for variable in template.undeclared_variables(true) {
                let key = match variable.strip_prefix("metadata.") {
                    Some(key) => key.split('.').next().unwrap_or(key).to_string(),
                    None => variable.split('.').next().unwrap_or(&variable).to_string(),
                };
                let known = variable == "metadata"
                    || (!variable.starts_with("metadata.")
                        && (LEAD_FIELDS.contains(&key.as_str())
                            || matches!(
                                key.as_str(),
                                "product_url" | "params" | "metadata" | "unsubscribe_url"
                            )
                            || params.is_some_and(|p| p.contains_key(&key))));
                if !known && !key.is_empty() {
                    keys.insert(key);
                }
            }
        }
        keys.into_iter().collect()
    }

    fn complete(&self) -> Result<(), TemplateError> {
        let missing = |part| TemplateError::Incomplete {
            key: self.source.key.clone(),
            channel: self.source.channel.as_str(),
            part,
        };
        match self.source.channel {
            Channel::Email if self.source.resend_template.is_none() => {
                if self.source.subject.is_none() {
                    return Err(missing("subject"));
                }
                if self.source.html.is_none() {
                    return Err(missing("html"));
                }
            }
            Channel::Sms if self.source.body.is_none() => return Err(missing("body")),
            _ => {}
        }
        Ok(())
    }

    fn render(
        &self,
        part: &'static str,
        vars: &Variables,
    ) -> Result<Option<String>, TemplateError> {
        let Some((_, name)) = PARTS.iter().find(|(p, _)| *p == part) else {
            return Ok(None);
        };
        let Ok(template) = self.env.get_template(name) else {
            return Ok(None);
        };
        template
            .render(&vars.0)
            .map(Some)
            .map_err(|e| invalid(&self.source, part, &e))
    }

    pub fn render_email(&self, vars: &Variables) -> Result<EmailContent, TemplateError> {
        let subject = self.render("subject", vars)?;
        if let Some(id) = &self.source.resend_template {
            return Ok(EmailContent::Hosted {
                id: id.clone(),
                subject,
                variables: vars.as_strings(),
            });
        }
        let html = self.render("html", vars)?;
        match (subject, html) {
            (Some(subject), Some(html)) => Ok(EmailContent::Inline {
                subject,
                html,
                text: self.render("text", vars)?,
            }),
            _ => Err(TemplateError::Incomplete {
                key: self.source.key.clone(),
                channel: "email",
                part: "subject and html",
            }),
        }
    }

    /// The message of this template's channel, an SMS with its length.
    pub fn render_message(&self, vars: &Variables) -> Result<Message, TemplateError> {
        match self.source.channel {
            Channel::Sms => {
                let text = self.render_sms(vars)?;
                let length = sms_length::measure(&text);
                Ok(Message::Sms { text, length })
            }
            _ => self.render_email(vars).map(Message::Email),
        }
    }

    pub fn render_sms(&self, vars: &Variables) -> Result<String, TemplateError> {
        self.render("body", vars)?
            .ok_or_else(|| TemplateError::Incomplete {
                key: self.source.key.clone(),
                channel: "sms",
                part: "body",
            })
    }
}

fn part_of<'a>(source: &'a TemplateSource, part: &str) -> Option<&'a str> {
    match part {
        "subject" => source.subject.as_deref(),
        "html" => source.html.as_deref(),
        "text" => source.text.as_deref(),
        "body" => source.body.as_deref(),
        _ => None,
    }
}

fn invalid(source: &TemplateSource, part: &'static str, error: &minijinja::Error) -> TemplateError {
    TemplateError::Invalid {
        key: source.key.clone(),
        channel: source.channel.as_str(),
        version: source.version,
        part,
        line: error
            .line()
            .map(|l| format!(", line {l}"))
            .unwrap_or_default(),
        message: error.detail().map_or_else(
            || error.kind().to_string(),
            |d| format!("{}: {d}", error.kind()),
        ),
    }
}

/// The values a message is rendered from.
#[derive(Debug, Clone, PartialEq)]
pub struct Variables(BTreeMap<String, Value>);

/// Names that the lead's own fields take; metadata keys of the same name
/// are reachable as `metadata.<key>`.
const LEAD_FIELDS: [&str; 5] = ["name", "email", "phone", "source", "created_at"];

impl Variables {
    /// From a job's `sent_params` (the lead's fields, its metadata, the
    /// rule's params and the product link, fixed by its first claim). The
    /// rule's params come before metadata keys of the same name; the lead's
    /// own fields before both.
    pub fn from_sent_params(params: &serde_json::Value, default_product_url: &str) -> Variables {
        let mut vars = BTreeMap::new();
        let object = |key: &str| params.get(key).and_then(|v| v.as_object());
        if let Some(metadata) = object("metadata") {
            for (k, v) in metadata {
                vars.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
            }
            vars.insert(
                "metadata".into(),
                Value::from(minijinja::value::Serde(metadata)),
            );
        } else {
            vars.insert(
                "metadata".into(),
                Value::from(BTreeMap::<String, Value>::new()),
            );
        }
        let product_url = params
            .get("product_url")
            .and_then(|v| v.as_str())
            .filter(|u| !u.is_empty())
            .unwrap_or(default_product_url);
        vars.insert("product_url".into(), Value::from(product_url));
        // none until the worker adds the message's own (with_unsubscribe_url)
        vars.insert("unsubscribe_url".into(), Value::from(""));
        if let Some(rule) = object("params") {
            for (k, v) in rule {
                vars.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
            }
            vars.insert("params".into(), Value::from(minijinja::value::Serde(rule)));
        } else {
            vars.insert(
                "params".into(),
                Value::from(BTreeMap::<String, Value>::new()),
            );
        }
        for field in LEAD_FIELDS {
            let value = params.get(field).and_then(|v| v.as_str());
            let value = if field == "name" {
                display_name(value)
            } else {
                value.map(str::to_string)
            };
            vars.insert(field.into(), Value::from(value));
        }
        Variables(vars)
    }

    /// The same values with the message's unsubscribe link (none: an empty
    /// `unsubscribe_url`, which a template tests with `{% if %}`).
    pub fn with_unsubscribe_url(mut self, url: Option<String>) -> Variables {
        self.0.insert(
            "unsubscribe_url".into(),
            Value::from(url.unwrap_or_default()),
        );
        self
    }

    /// A sample lead, for `leadrelay templates check`, carrying each of
    /// `metadata_keys` (what the template reads from a lead's metadata) with
    /// a placeholder value.
    pub fn sample(
        rule_params: &serde_json::Value,
        product_url: &str,
        metadata_keys: &[String],
    ) -> Variables {
        let metadata: serde_json::Map<String, serde_json::Value> = metadata_keys
            .iter()
            .map(|k| (k.clone(), serde_json::Value::String(format!("<{k}>"))))
            .collect();
        Variables::from_sent_params(
            &serde_json::json!({
                "name": "Айгерим", "email": "aigerim@example.com", "phone": "+7 705 123 45 67",
                "source": "proftest_main", "created_at": "2026-11-29T10:00:00+05:00",
                "metadata": metadata, "params": rule_params,
            }),
            product_url,
        )
    }

    /// Plain values as text, for a template Resend renders (it takes strings
    /// and numbers; lists and objects are left out).
    fn as_strings(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "params"))
            .filter_map(|(k, v)| {
                if v.is_none() || v.is_undefined() {
                    return Some((k.clone(), String::new()));
                }
                match v.kind() {
                    minijinja::value::ValueKind::String
                    | minijinja::value::ValueKind::Number
                    | minijinja::value::ValueKind::Bool => Some((k.clone(), v.to_string())),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The name as typed, without control characters, at most 60 characters,
/// trimmed; none when nothing is left.
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

    fn source(channel: Channel) -> TemplateSource {
        TemplateSource {
            key: "t".into(),
            channel,
            version: 1,
            locale: "ru".into(),
            subject: None,
            html: None,
            text: None,
            body: None,
            resend_template: None,
        }
    }

    fn email(subject: &str, html: &str, text: &str) -> Result<Compiled, TemplateError> {
        Compiled::compile(TemplateSource {
            subject: Some(subject.into()),
            html: Some(html.into()),
            text: Some(text.into()),
            ..source(Channel::Email)
        })
    }

    fn vars(name: Option<&str>) -> Variables {
        Variables::from_sent_params(
            &serde_json::json!({"name": name, "email": "a@b.kz", "metadata": {"city": "Алматы"},
                                "params": {"product_url": "https://a.kz/p?x=1&y=2"}}),
            "https://default.kz",
        )
    }

    #[test]
    fn html_is_escaped_in_html_only_and_the_link_keeps_its_slashes() {
        let t = email(
            "{{ name }}",
            "<a href=\"{{ product_url }}\">{{ name }}</a>",
            "{{ name }} {{ product_url }}",
        )
        .unwrap();
        let EmailContent::Inline {
            subject,
            html,
            text,
        } = t.render_email(&vars(Some("<b>Ая</b> & 'x'"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(subject, "<b>Ая</b> & 'x'");
        assert_eq!(
            html,
            "<a href=\"https://a.kz/p?x=1&amp;y=2\">&lt;b&gt;Ая&lt;/b&gt; &amp; &#39;x&#39;</a>"
        );
        assert_eq!(text.unwrap(), "<b>Ая</b> & 'x' https://a.kz/p?x=1&y=2");
    }

    #[test]
    fn template_syntax_in_a_name_is_text_not_code() {
        let t = email("s", "{{ name }}", "{{ name }}").unwrap();
        let EmailContent::Inline { html, text, .. } = t
            .render_email(&vars(Some(
                "{{ product_url }}{% for x in range(9) %}x{% endfor %}\u{7}",
            )))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            text.unwrap(),
            "{{ product_url }}{% for x in range(9) %}x{% endfor %}"
        );
        assert!(html.starts_with("{{ product_url }}"));
    }

    #[test]
    fn an_unknown_variable_is_an_error_naming_it() {
        let t = email("s", "{{ nmae }}", "t").unwrap();
        let err = t.render_email(&vars(Some("A"))).unwrap_err().to_string();
        assert!(err.contains("template t (email) version 1, html"), "{err}");
        assert!(err.contains("undefined"), "{err}");
        // metadata keys and params are variables; a missing one is an error too
        let t = email(
            "{{ city }} {{ metadata.city }} {{ params.product_url }}",
            "h",
            "t",
        )
        .unwrap();
        let EmailContent::Inline { subject, .. } = t.render_email(&vars(None)).unwrap() else {
            panic!()
        };
        assert_eq!(subject, "Алматы Алматы https://a.kz/p?x=1&y=2");
        let t = email("{{ metadata.nope }}", "h", "t").unwrap();
        assert!(t.render_email(&vars(None)).is_err());
    }

    #[test]
    fn a_syntax_error_is_refused_at_compile_time_with_its_line() {
        let err = email("s", "<p>\n{% if name %}\n{{ name }", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("html, line"), "{err}");
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn an_email_needs_subject_and_html_unless_resend_hosts_it() {
        assert!(matches!(
            Compiled::compile(TemplateSource {
                html: Some("h".into()),
                ..source(Channel::Email)
            }),
            Err(TemplateError::Incomplete {
                part: "subject",
                ..
            })
        ));
        let hosted = Compiled::compile(TemplateSource {
            resend_template: Some("proftest-result".into()),
            ..source(Channel::Email)
        })
        .unwrap();
        let EmailContent::Hosted {
            id,
            subject,
            variables,
        } = hosted.render_email(&vars(Some("Ая"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(id, "proftest-result");
        assert_eq!(subject, None);
        assert_eq!(variables["name"], "Ая");
        assert_eq!(variables["product_url"], "https://a.kz/p?x=1&y=2");
        assert_eq!(variables["phone"], "");
        assert!(!variables.contains_key("metadata"));
        assert!(matches!(
            Compiled::compile(source(Channel::Sms)),
            Err(TemplateError::Incomplete { part: "body", .. })
        ));
    }

    #[test]
    fn a_runaway_loop_is_stopped() {
        let t = Compiled::compile(TemplateSource {
            body: Some(
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
                    .into(),
            ),
            ..source(Channel::Sms)
        })
        .unwrap();
        assert!(t.render_sms(&vars(None)).is_err());
    }

    #[test]
    fn the_product_link_defaults_to_product_url_and_names_are_cleaned() {
        let v = Variables::from_sent_params(
            &serde_json::json!({"name": "  \u{1b}Ая\n "}),
            "https://d.kz",
        );
        assert_eq!(v.0["product_url"].as_str(), Some("https://d.kz"));
        assert_eq!(v.0["name"].as_str(), Some("Ая"));
        let long = "Я".repeat(100_000);
        let v = Variables::from_sent_params(&serde_json::json!({"name": long}), "https://d.kz");
        assert_eq!(v.0["name"].as_str().unwrap().chars().count(), 60);
        let v = Variables::from_sent_params(&serde_json::json!({"name": " \t "}), "https://d.kz");
        assert!(v.0["name"].is_none());
        // a metadata key cannot pass itself off as the lead's name
        let v = Variables::from_sent_params(
            &serde_json::json!({"name": "A", "metadata": {"name": "B", "product_url": "https://evil"}}),
            "https://d.kz",
        );
        assert_eq!(v.0["name"].as_str(), Some("A"));
        assert_eq!(v.0["product_url"].as_str(), Some("https://d.kz"));
    }
}
