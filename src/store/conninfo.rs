//! PostgreSQL connection strings as users paste them from Supabase or psql:
//! libpq's URI form (`postgresql://…?sslmode=verify-full&sslrootcert=…`) and
//! its key=value form (`host=… sslmode=require`), with libpq's TLS parameters
//! and their environment forms (`PGSSLMODE`, `PGSSLROOTCERT`).
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and refuses
//! `sslrootcert`, so those parameters are taken out here, and the rest is
//! handed to tokio-postgres's own parser. No message built here contains the
//! password.

use std::path::{Path, PathBuf};

/// libpq's `sslmode`, all six values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ConnInfoError::SslMode(printable(other))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// verify-ca and verify-full need a root certificate, as in libpq.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the certificates that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// No root file: the certificate is not checked (allow, prefer, require).
    None,
    /// A PEM file: `sslrootcert=…`, `PGSSLROOTCERT`, or libpq's default
    /// `~/.postgresql/root.crt` when it exists.
    File(PathBuf),
    /// `sslrootcert=system`: the public roots (Mozilla's list).
    System,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("sslmode {0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("{0} is not supported (client certificates are not used by leadrelay): remove it")]
    Unsupported(&'static str),
    #[error("{0}")]
    Syntax(String),
    #[error(
        "sslmode={mode} needs the server's CA: set sslrootcert=/path/to/ca.crt (for Supabase, prod-ca-2021.crt from the dashboard's database settings); {default} does not exist"
    )]
    RootCertRequired { mode: &'static str, default: String },
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
}

/// A parsed connection string: what tokio-postgres gets, and the TLS
/// settings it does not understand.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: RootCert,
}

/// The environment libpq reads; a function so tests can pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ConnInfo {
    /// Parses `url` as libpq would, with `PGSSLMODE` / `PGSSLROOTCERT` from the
    /// process environment.
    pub fn parse(url: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(url, &process_env)
    }

    pub fn parse_with_env(url: &str, env: Env<'_>) -> Result<ConnInfo, ConnInfoError> {
        let split = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            split_uri(url)?
        } else if url.contains("://") {
            return Err(ConnInfoError::Syntax(
                "expected a URL starting with postgres:// or postgresql://, or libpq's key=value form".into(),
            ));
        } else {
            split_key_values(url)?
        };
        let ssl_mode = match split.ssl_mode.or_else(|| env("PGSSLMODE")) {
            Some(mode) => SslMode::parse(&mode)?,
            None => SslMode::Prefer,
        };
        let root_cert = root_cert(ssl_mode, split.ssl_root_cert, env)?;
        let config = split
            .rest
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConnInfoError::Syntax(e.to_string()))?;
        Ok(ConnInfo {
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// The port of the first host (5432 when none is given).
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// The first host, as written (a name, an address or a socket directory).
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }
}

/// What the two syntaxes share once taken apart.
struct Split {
    /// The string without the parameters taken out, for tokio-postgres.
    rest: String,
    ssl_mode: Option<String>,
    ssl_root_cert: Option<String>,
}

/// libpq parameters tokio-postgres refuses, and what becomes of them here.
enum Handling {
    SslMode,
    SslRootCert,
    /// Harmless for us: rustls always sends SNI for host names, never
    /// compresses, and GSSAPI encryption is not offered by Supabase.
    Ignore,
    Unsupported(&'static str),
    PassOn,
}

fn handling(key: &str) -> Handling {
    match key {
        "sslmode" => Handling::SslMode,
        "sslrootcert" => Handling::SslRootCert,
        "sslsni" | "sslcompression" | "gssencmode" | "requiressl" | "sslcrl" | "sslcrldir" => {
            Handling::Ignore
        }
        "sslcert" => Handling::Unsupported("sslcert"),
        "sslkey" => Handling::Unsupported("sslkey"),
        "sslpassword" => Handling::Unsupported("sslpassword"),
        "sslcertmode" => Handling::Unsupported("sslcertmode"),
        _ => Handling::PassOn,
    }
}

fn split_uri(url: &str) -> Result<Split, ConnInfoError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut split = Split {
        rest: base.to_string(),
        ssl_mode: None,
        ssl_root_cert: None,
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key)?;
        let value = decode(raw_value)?;
        match handling(&key) {
            Handling::SslMode => split.ssl_mode = Some(value),
            Handling::SslRootCert => split.ssl_root_cert = Some(value),
            Handling::Ignore => {}
            Handling::Unsupported(name) => return Err(ConnInfoError::Unsupported(name)),
            Handling::PassOn => kept.push(pair),
        }
    }
    if !kept.is_empty() {
        split.rest.push('?');
        split.rest.push_str(&kept.join("&"));
    }
    Ok(split)
}

/// Percent-decoding as libpq does it (no `+` for space).
fn decode(text: &str) -> Result<String, ConnInfoError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ConnInfoError::Syntax("a parameter in the URL is not valid UTF-8 once decoded".into())
        })
}

/// `key=value` pairs separated by white space; a value may be single-quoted,
/// with `\'` and `\\` inside, as libpq's conninfo parser reads it.
fn split_key_values(text: &str) -> Result<Split, ConnInfoError> {
    let mut split = Split {
        rest: String::new(),
        ssl_mode: None,
        ssl_root_cert: None,
    };
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The word is not echoed: it may be a password pasted out of place.
            return Err(ConnInfoError::Syntax(
                "expected key=value pairs (host=… port=… sslmode=…) or a postgresql:// URL".into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(unterminated()),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(unterminated()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        match handling(&key) {
            Handling::SslMode => split.ssl_mode = Some(value),
            Handling::SslRootCert => split.ssl_root_cert = Some(value),
            Handling::Ignore => {}
            Handling::Unsupported(name) => return Err(ConnInfoError::Unsupported(name)),
            Handling::PassOn => {
                let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
                split.rest.push_str(&format!("{key}='{quoted}' "));
            }
        }
    }
    Ok(split)
}

fn unterminated() -> ConnInfoError {
    ConnInfoError::Syntax("unterminated quoted value in the connection string".into())
}

/// libpq's order: the string's `sslrootcert`, then `PGSSLROOTCERT`, then
/// `~/.postgresql/root.crt` if it exists. A file named explicitly must be
/// readable; verify-ca and verify-full need one.
fn root_cert(
    mode: SslMode,
    given: Option<String>,
    env: Env<'_>,
) -> Result<RootCert, ConnInfoError> {
    if mode == SslMode::Disable {
        return Ok(RootCert::None);
    }
    let named = given
        .filter(|v| !v.is_empty())
        .or_else(|| env("PGSSLROOTCERT"));
    match named.as_deref() {
        Some("system") => return Ok(RootCert::System),
        Some(path) => {
            let path = PathBuf::from(path);
            check_readable(&path)?;
            return Ok(RootCert::File(path));
        }
        None => {}
    }
    let default = env("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"));
    match default {
        Some(path) if path.is_file() => Ok(RootCert::File(path)),
        other if mode.verifies() => Err(ConnInfoError::RootCertRequired {
            mode: mode.as_str(),
            default: other
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".into()),
        }),
        _ => Ok(RootCert::None),
    }
}

fn check_readable(path: &Path) -> Result<(), ConnInfoError> {
    let fail = |reason: String| ConnInfoError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    if path.is_dir() {
        return Err(fail("is a directory, not a certificate file".into()));
    }
    std::fs::File::open(path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    Ok(())
}

/// A value from the user's string, cut short and without control characters,
/// fit to quote in an error.
fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(url: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(url, &no_env)
    }

    fn ca_file() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "-----BEGIN CERTIFICATE-----\n").unwrap();
        file
    }

    #[test]
    fn prefer_is_the_default_as_in_libpq() {
        let info = parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        assert_eq!(info.ssl_mode, SslMode::Prefer);
        assert_eq!(info.root_cert, RootCert::None);
        assert_eq!(info.port(), 5432);
        assert_eq!(info.host(), "127.0.0.1");
    }

    #[test]
    fn every_libpq_sslmode_is_understood_in_both_syntaxes() {
        let ca = ca_file();
        let ca = ca.path().display().to_string();
        for (mode, expected) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let uri =
                format!("postgresql://u:pw@db.x:6543/postgres?sslmode={mode}&sslrootcert={ca}");
            let kv = format!(
                "host=db.x port=6543 user=u password='p w' sslmode={mode} sslrootcert='{ca}'"
            );
            for text in [uri, kv] {
                let info = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(info.ssl_mode, expected);
                assert_eq!(info.port(), 6543);
                assert_eq!(info.host(), "db.x");
                if mode == "disable" {
                    assert_eq!(info.root_cert, RootCert::None);
                } else {
                    assert_eq!(info.root_cert, RootCert::File(PathBuf::from(&ca)));
                }
            }
        }
    }

    #[test]
    fn other_parameters_reach_the_driver_unchanged() {
        let info = parse(
            "postgresql://postgres.abcd:p%40ss@aws-0-eu-central-1.pooler.supabase.com:5432/postgres?application_name=relay&sslmode=require&connect_timeout=7",
        )
        .unwrap();
        assert_eq!(info.config.get_user(), Some("postgres.abcd"));
        assert_eq!(info.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(info.config.get_application_name(), Some("relay"));
        assert_eq!(
            info.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        let kv = parse("host=h dbname='my db' user=u password='it\\'s' sslmode=require").unwrap();
        assert_eq!(kv.config.get_dbname(), Some("my db"));
        assert_eq!(kv.config.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn pgsslmode_and_pgsslrootcert_apply_when_the_string_is_silent() {
        let ca = ca_file();
        let path = ca.path().display().to_string();
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGSSLROOTCERT" => Some(path.clone()),
            _ => None,
        };
        let info = ConnInfo::parse_with_env("postgres://u@h/db", &env).unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.root_cert, RootCert::File(ca.path().to_path_buf()));
        // the string wins over the environment
        let info = ConnInfo::parse_with_env("postgres://u@h/db?sslmode=disable", &env).unwrap();
        assert_eq!(info.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn sslrootcert_system_means_the_public_roots() {
        let info = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=system").unwrap();
        assert_eq!(info.root_cert, RootCert::System);
    }

    #[test]
    fn the_default_root_file_is_used_when_it_exists_and_required_for_verify_modes() {
        let home = tempfile::tempdir().unwrap();
        let home_str = home.path().display().to_string();
        let env = |name: &str| (name == "HOME").then(|| home_str.clone());
        let err =
            ConnInfo::parse_with_env("postgres://u@h/db?sslmode=verify-ca", &env).unwrap_err();
        assert!(err.to_string().contains(".postgresql/root.crt"), "{err}");
        assert!(err.to_string().contains("prod-ca-2021.crt"), "{err}");
        let info = ConnInfo::parse_with_env("postgres://u@h/db?sslmode=require", &env).unwrap();
        assert_eq!(info.root_cert, RootCert::None);
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "x").unwrap();
        let info = ConnInfo::parse_with_env("postgres://u@h/db?sslmode=require", &env).unwrap();
        assert!(matches!(info.root_cert, RootCert::File(_)));
    }

    #[test]
    fn bad_tls_parameters_are_named_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            "postgres://u:hunter2@h/db?sslmode=sometimes".to_string(),
            "postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt".into(),
            format!(
                "postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert={}",
                dir.path().display()
            ),
            "postgres://u:hunter2@h/db?sslcert=/x.crt".into(),
            "host=h password=hunter2 sslmode='verify-full".into(),
            "host=h password=hunter2 sslmode".into(),
            "postgres://u:hunter2@h/db?sslmode=%FF".into(),
            "postgres://u:hunter2@h/db?frobnicate=1".into(),
        ];
        for case in cases {
            let err = parse(&case).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{case}: {err}");
            assert!(!err.contains('\n'), "{case}: {err}");
        }
        assert!(
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt")
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/ca.crt")
        );
        assert!(
            parse(&format!(
                "postgres://u@h/db?sslrootcert={}",
                dir.path().display()
            ))
            .unwrap_err()
            .to_string()
            .contains("is a directory")
        );
    }

    #[test]
    fn hostile_strings_do_not_panic() {
        for case in [
            "",
            "=",
            "'",
            "host='",
            "postgres://",
            "postgres://?&&&=&sslmode",
            "postgresql://u@h/db?sslmode=\u{202e}verify-full",
            &"a=b ".repeat(10_000),
            &format!("postgres://u@h/db?{}", "x=y&".repeat(10_000)),
        ] {
            let _ = parse(case);
        }
        let long = parse(&format!("postgres://u@h/db?sslmode={}", "z".repeat(10_000)))
            .unwrap_err()
            .to_string();
        assert!(long.len() < 200, "{long}");
    }
}
