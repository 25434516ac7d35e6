//! Typed configuration, loaded once at start. Every value comes from an
//! environment variable or the command-line flag of the same name; a missing
//! or malformed one stops the process with one line naming the variable.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

/// A value that must not reach a log line or an error message by accident:
/// `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A PostgreSQL connection string, checked by the driver's own parser. The
/// parser's message never contains the password, only what is wrong.
pub fn database_url(name: &'static str, value: Option<&str>) -> Result<Secret, ConfigError> {
    let value = required(name, value)?;
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        return Err(ConfigError::Malformed {
            name,
            reason: "expected a URL starting with postgres:// or postgresql://".into(),
        });
    }
    value
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConfigError::Malformed {
            name,
            reason: e.to_string(),
        })?;
    Ok(Secret::new(value))
}

/// A value that must be present and not blank.
pub fn required<'a>(name: &'static str, value: Option<&'a str>) -> Result<&'a str, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Err(ConfigError::Missing(name)),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("postgres://u:hunter2@db/x");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "postgres://u:hunter2@db/x");
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let err = database_url("DATABASE_URL", None).unwrap_err();
        assert_eq!(err.to_string(), "DATABASE_URL is not set");
        let err = database_url("DATABASE_URL", Some("   ")).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DATABASE_URL"));
    }

    #[test]
    fn malformed_database_urls_are_refused_without_echoing_them() {
        for bad in [
            "mysql://u:hunter2@db/x",
            "postgres://u:hunter2@db:notaport/x",
            "postgres://u:hunter2@db/x?sslmode=sometimes",
            "hunter2",
        ] {
            let err = database_url("DATABASE_URL", Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("DATABASE_URL is malformed"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn oversized_and_hostile_database_urls_are_refused() {
        let huge = format!("postgres://u@db/{}", "x".repeat(100_000));
        // A very long name is legal to the parser; the server refuses it later
        // with its own message. What matters is that nothing panics.
        let _ = database_url("DATABASE_URL", Some(&huge));
        let nul = "postgres://u@db/x\0; drop table landing_leads";
        let _ = database_url("DATABASE_URL", Some(nul));
    }

    #[test]
    fn valid_database_urls_are_accepted() {
        for good in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres?sslmode=require",
        ] {
            assert!(database_url("DATABASE_URL", Some(good)).is_ok(), "{good}");
        }
    }
}
