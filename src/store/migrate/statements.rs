//! The statements of a migration file, for the files that cannot run in one
//! transaction (`-- leadrelay: no-transaction`): PostgreSQL runs a string of
//! several statements as one implicit transaction, and refuses
//! `CREATE INDEX CONCURRENTLY` there, so such a file is sent a statement at a
//! time.
//!
//! The rule this room keeps: a split never cuts inside a string, a quoted
//! name, a dollar-quoted body or a comment, and joining the pieces gives the
//! file back byte for byte (nothing is rewritten on the way).

/// The first line of a migration that must run outside a transaction, as
/// Rails' `disable_ddl_transaction!` and sqlx's `-- no-transaction` mark one.
pub const NO_TRANSACTION: &str = "-- leadrelay: no-transaction";

/// Whether a migration file is marked to run outside a transaction: the
/// marker must be its first line, so a mention of it further down (in a
/// comment like this one) changes nothing.
pub fn is_no_transaction(sql: &str) -> bool {
    sql.lines().next().map(str::trim_end) == Some(NO_TRANSACTION)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("unterminated {what} starting at byte {at}")]
    Unterminated { what: &'static str, at: usize },
}

/// The file's statements in order, each with its own comments and white
/// space before it and its terminating `;`; pieces holding nothing but
/// comments and white space are left out.
pub fn split(sql: &str) -> Result<Vec<&str>, SplitError> {
    Ok(pieces(sql)?
        .into_iter()
        .filter(|piece| !words(piece).is_empty())
        .collect())
}

/// The file cut after each top-level `;`: joined, the pieces are the file.
fn pieces(sql: &str) -> Result<Vec<&str>, SplitError> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = block_comment_end(sql, i)?,
            b'\'' => {
                // E'…' strings take backslash escapes; standard ones do not
                // (standard_conforming_strings is on since PostgreSQL 9.1).
                let escaped = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i = quoted_end(sql, i, b'\'', escaped, "string")?;
            }
            b'"' => i = quoted_end(sql, i, b'"', false, "quoted name")?,
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => match dollar_tag(sql, i) {
                Some(tag) => {
                    let body = i + tag.len();
                    let close = sql[body..].find(tag).ok_or(SplitError::Unterminated {
                        what: "dollar-quoted text",
                        at: i,
                    })?;
                    i = body + close + tag.len();
                }
                None => i += 1,
            },
            b';' => {
                i += 1;
                pieces.push(&sql[start..i]);
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < sql.len() {
        pieces.push(&sql[start..]);
    }
    Ok(pieces)
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// `$$` or `$tag$` at `at`, where a tag is an identifier without `$`.
fn dollar_tag(sql: &str, at: usize) -> Option<&str> {
    let rest = &sql[at + 1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid =
        tag.is_empty() || (!tag.as_bytes()[0].is_ascii_digit() && tag.bytes().all(is_ident_byte));
    valid.then(|| &sql[at..at + end + 2])
}

fn quoted_end(
    sql: &str,
    at: usize,
    quote: u8,
    backslash_escapes: bool,
    what: &'static str,
) -> Result<usize, SplitError> {
    let bytes = sql.as_bytes();
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash_escapes => i += 2,
            // a doubled quote is the quote itself
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(SplitError::Unterminated { what, at })
}

/// Block comments nest in PostgreSQL.
fn block_comment_end(sql: &str, at: usize) -> Result<usize, SplitError> {
    let bytes = sql.as_bytes();
    let mut depth = 0usize;
    let mut i = at;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(SplitError::Unterminated {
        what: "block comment",
        at,
    })
}

/// The statement's leading words, lower-cased, comments left out: enough to
/// recognise what a statement is without parsing it.
pub fn words(statement: &str) -> Vec<String> {
    raw_words(statement)
        .into_iter()
        .map(|w| w.to_lowercase())
        .collect()
}

fn raw_words(statement: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in statement.lines() {
        let code = line.split("--").next().unwrap_or("");
        for word in code.split(|c: char| c.is_whitespace() || c == '(' || c == ';') {
            if !word.is_empty() {
                out.push(word);
            }
        }
        if out.len() >= 12 {
            break;
        }
    }
    out
}

/// The index a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name`
/// statement builds, as written (schema-qualified or quoted), for
/// `to_regclass`.
pub fn concurrent_index_name(statement: &str) -> Option<String> {
    let raw = raw_words(statement);
    let lower = words(statement);
    let mut rest = lower.iter().map(String::as_str).zip(raw);
    let (first, _) = rest.next()?;
    if first != "create" {
        return None;
    }
    let (mut word, _) = rest.next()?;
    if word == "unique" {
        word = rest.next()?.0;
    }
    if word != "index" || rest.next()?.0 != "concurrently" {
        return None;
    }
    let (mut name, mut as_written) = rest.next()?;
    if name == "if" {
        if rest.next()?.0 != "not" || rest.next()?.0 != "exists" {
            return None;
        }
        (name, as_written) = rest.next()?;
    }
    (name != "on").then(|| as_written.to_string())
}

/// The same file as the Supabase CLI can apply it: each file in one
/// transaction, so `CONCURRENTLY` is dropped from index builds and drops
/// (the landing's writes then wait for each build), and the marker line is
/// replaced by a note that says so.
pub fn for_one_transaction(sql: &str) -> Result<String, SplitError> {
    if !is_no_transaction(sql) {
        return Ok(sql.to_string());
    }
    let body = sql.split_once('\n').map_or("", |(_, rest)| rest);
    let mut out = String::from(
        "-- Exported for the Supabase CLI, which runs a file in one transaction:\n\
         -- `leadrelay migrate` builds these indexes CONCURRENTLY instead, so the\n\
         -- landing's writes never wait for a build; here they wait for each one.\n",
    );
    for statement in pieces(body)? {
        let w = words(statement);
        let concurrent = matches!(
            w.iter().map(String::as_str).collect::<Vec<_>>()[..],
            ["create", "index", "concurrently", ..]
                | ["create", "unique", "index", "concurrently", ..]
                | ["drop", "index", "concurrently", ..]
        );
        if concurrent {
            out.push_str(&remove_first_word(statement, "concurrently"));
        } else {
            out.push_str(statement);
        }
    }
    Ok(out)
}

/// `statement` without its first code occurrence of `word` (and one space
/// after it), comments left as they are.
fn remove_first_word(statement: &str, word: &str) -> String {
    let mut offset = 0;
    for line in statement.split_inclusive('\n') {
        let code_len = line.find("--").unwrap_or(line.len());
        let lower = line[..code_len].to_lowercase();
        let mut search = 0;
        while let Some(found) = lower[search..].find(word) {
            let at = search + found;
            let before_ok = at == 0 || !is_ident_byte(lower.as_bytes()[at - 1]);
            let after = at + word.len();
            let after_ok = after >= lower.len() || !is_ident_byte(lower.as_bytes()[after]);
            if before_ok && after_ok {
                let skip = if line[after..].starts_with(' ') { 1 } else { 0 };
                let start = offset + at;
                return format!(
                    "{}{}",
                    &statement[..start],
                    &statement[start + word.len() + skip..]
                );
            }
            search = after;
        }
        offset += line.len();
    }
    statement.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let sql = "create table a (x text default ';');\n\
                   -- a comment; with a semicolon\n\
                   /* a /* nested; */ comment; */ select 1;\n\
                   do $$ begin perform 1; end $$;\n\
                   do $body$ begin raise notice '$$;'; end $body$;\n\
                   select e'it\\'s; fine', \"odd;name\" from b;\n\
                   select $1::text;";
        let pieces = split(sql).unwrap();
        assert_eq!(pieces.len(), 6, "{pieces:#?}");
        assert_eq!(pieces.concat(), sql, "the pieces give the file back");
        assert!(pieces[1].contains("-- a comment; with a semicolon"));
        assert!(pieces[1].contains("nested; */ comment; */ select 1;"));
        assert!(pieces[2].trim_start().starts_with("do $$"));
        assert!(pieces[3].contains("'$$;'"));
        assert!(pieces[4].contains("\"odd;name\""));
        assert_eq!(pieces[5].trim(), "select $1::text;");
    }

    #[test]
    fn a_file_that_ends_in_a_comment_keeps_it_out_of_the_statements() {
        let pieces = split("select 1;\n-- the end\n").unwrap();
        assert_eq!(pieces, vec!["select 1;"]);
    }

    #[test]
    fn unterminated_strings_comments_and_bodies_are_refused() {
        for bad in [
            "select 'open;",
            "select \"open;",
            "/* open; select 1;",
            "do $$ begin; end;",
            "select e'escaped quote \\';",
        ] {
            assert!(
                matches!(split(bad), Err(SplitError::Unterminated { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        for s in [
            "$", "$$", "$a", "'", "/*", "*/", "--", "e'", "\u{0}", "$1$", "x$$y$$;", "é$$;$$",
        ] {
            let _ = split(s);
        }
        let long = ";".repeat(100_000);
        assert!(split(&long).unwrap().is_empty());
    }

    #[test]
    fn the_marker_counts_only_on_the_first_line() {
        assert!(is_no_transaction(
            "-- leadrelay: no-transaction\ncreate index concurrently x on t (a);"
        ));
        assert!(is_no_transaction(
            "-- leadrelay: no-transaction\r\nselect 1;"
        ));
        assert!(!is_no_transaction(
            "-- note\n-- leadrelay: no-transaction\nselect 1;"
        ));
        assert!(!is_no_transaction("select 1; -- leadrelay: no-transaction"));
    }

    #[test]
    fn concurrent_index_builds_are_recognised_with_their_names() {
        let cases = [
            (
                "create index concurrently if not exists landing_leads_a_idx on public.landing_leads (a);",
                Some("landing_leads_a_idx"),
            ),
            (
                "-- why\nCREATE UNIQUE INDEX CONCURRENTLY \"Odd\" ON t (a);",
                Some("\"Odd\""),
            ),
            ("create index concurrently on t (a);", None),
            ("create index if not exists x on t (a);", None),
            ("drop index concurrently if exists x;", None),
            ("select 'create index concurrently x';", None),
        ];
        for (sql, name) in cases {
            assert_eq!(concurrent_index_name(sql).as_deref(), name, "{sql}");
        }
    }

    #[test]
    fn the_cli_form_builds_in_one_transaction_and_keeps_everything_else() {
        let sql = "-- leadrelay: no-transaction\n\
                   -- Why these indexes.\n\
                   create index concurrently if not exists a_idx on t (lower(x)); -- concurrently, see above\n\
                   drop index concurrently if exists old_idx;\n\
                   select 'concurrently';\n\
                   -- the end\n";
        let cli = for_one_transaction(sql).unwrap();
        assert!(!cli.contains(NO_TRANSACTION));
        assert!(cli.contains(
            "create index if not exists a_idx on t (lower(x)); -- concurrently, see above"
        ));
        assert!(cli.contains("drop index if exists old_idx;"));
        assert!(cli.contains("select 'concurrently';"));
        assert!(cli.contains("-- Why these indexes."));
        assert!(cli.ends_with("-- the end\n"));
        let plain = "create index concurrently x on t (a);";
        assert_eq!(for_one_transaction(plain).unwrap(), plain);
    }
}
