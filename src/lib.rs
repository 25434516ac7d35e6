//! leadrelay: durable, tracked follow-up email and SMS for landing-page leads,
//! with the database as the source of truth.
//!
//! Rooms, and the one way their dependencies point (a test checks it):
//! `cli` → `serve` → `config` → `http` → `worker` → `ingest` →
//! {`store`, `providers`, `messages`} → `domain`.

pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod messages;
pub mod providers;
pub mod serve;
pub mod store;
pub mod worker;

/// Every statement the service and its commands run, for the test that
/// prepares each of them against the migrated schema: a renamed column fails
/// that test, not production.
pub fn statements() -> Vec<String> {
    store::queue::statements()
        .into_iter()
        .chain(store::templates::statements().iter().map(|s| s.to_string()))
        .chain(store::operator::statements().iter().map(|s| s.to_string()))
        .chain(store::search::statements().iter().map(|s| s.to_string()))
        .chain(ingest::statements())
        .chain(http::statements().iter().map(|s| s.to_string()))
        .chain(cli::ops::statements().iter().map(|s| s.to_string()))
        .collect()
}

#[cfg(test)]
mod layout {
    //! The rooms' dependencies point one way: a `crate::<room>` path in a
    //! file of one room may name only a room below it.

    use std::collections::BTreeSet;
    use std::path::Path;

    /// Top to bottom; rooms of the same rank may not use each other.
    const RANKS: &[(&str, u8)] = &[
        ("cli", 0),
        ("serve", 1),
        ("config", 2),
        ("http", 3),
        ("worker", 4),
        ("ingest", 5),
        ("store", 6),
        ("providers", 6),
        ("messages", 6),
        ("domain", 7),
    ];

    fn rank(room: &str) -> Option<u8> {
        RANKS.iter().find(|(r, _)| *r == room).map(|(_, n)| *n)
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The rooms a file names: `crate::room…` and the items of
    /// `use crate::{room, …}`.
    fn rooms_named(text: &str) -> BTreeSet<String> {
        let mut named = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let first = item.trim().split("::").next().unwrap_or_default();
                    named.insert(first.to_string());
                }
            } else {
                let first: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                named.insert(first);
            }
        }
        named
    }

    #[test]
    fn no_room_uses_a_room_above_it_or_beside_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut wrong = Vec::new();
        let mut edges = 0;
        for path in all {
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let room = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let Some(own) = rank(&room) else {
                assert!(
                    room == "lib" || room == "main",
                    "{} is in no room: add it to RANKS",
                    relative.display()
                );
                continue;
            };
            // Code only: comments may name any room.
            let text: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for other in rooms_named(&text) {
                if other == room || other == "self" || other.is_empty() {
                    continue;
                }
                let theirs = rank(&other).unwrap_or_else(|| {
                    panic!("{} names crate::{other}, no room", relative.display())
                });
                edges += 1;
                if theirs <= own {
                    wrong.push(format!("{} ({room}) uses {other}", relative.display()));
                }
            }
        }
        assert!(edges > 20, "the check found the dependencies ({edges})");
        assert!(
            wrong.is_empty(),
            "dependencies pointing up or sideways:\n{}",
            wrong.join("\n")
        );
    }
}
