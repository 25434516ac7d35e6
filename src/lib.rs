//! leadrelay: durable, tracked follow-up email and SMS for landing-page leads,
//! with the database as the source of truth.
//!
//! Rooms, and the one way their dependencies point (a test checks it):
//! `cli` → `serve` → `config` → `http` → {`worker`, `reconcile`} → `ingest` →
//! {`store`, `providers`, `messages`} → `domain`.

pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod messages;
pub mod providers;
pub mod reconcile;
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
        .chain(
            store::suppressions::statements()
                .iter()
                .map(|s| s.to_string()),
        )
        .chain(ingest::statements())
        .chain(http::statements().iter().map(|s| s.to_string()))
        .chain(cli::ops::statements().iter().map(|s| s.to_string()))
        .chain(reconcile::statements().iter().map(|s| s.to_string()))
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
        ("reconcile", 4),
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

    /// Every `.rs` file under `src/`, with its text up to its tests module.
    fn code_files() -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        all.sort();
        all.into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("\n#[cfg(test)]") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                let name = path.strip_prefix(&src).unwrap().display().to_string();
                (name, code)
            })
            .collect()
    }

    /// Within a folder, the modules that use each other (`super::name`)
    /// point one way: no circle, so each can be read knowing only those
    /// it names.
    #[test]
    fn no_modules_of_one_folder_use_each_other_in_a_circle() {
        use std::collections::BTreeMap;
        let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (name, code) in code_files() {
            let path = Path::new(&name);
            let folder = path.parent().unwrap().display().to_string();
            let module = path.file_stem().unwrap().to_string_lossy().to_string();
            if module == "mod" || module == "lib" || module == "main" {
                continue;
            }
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in code.match_indices("super::") {
                let rest = &code[i + "super::".len()..];
                let named: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let sibling = folder.clone() + "/" + &named + ".rs";
                let sibling_dir = folder.clone() + "/" + &named + "/mod.rs";
                let exists = |p: &str| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("src")
                        .join(p)
                        .exists()
                };
                if !named.is_empty()
                    && named != module
                    && (exists(&sibling) || exists(&sibling_dir))
                {
                    edges
                        .entry((folder.clone(), module.clone()))
                        .or_default()
                        .insert(named);
                }
            }
        }
        assert!(
            edges.len() > 10,
            "the check found the modules' uses ({})",
            edges.len()
        );
        // a depth-first walk from every module finds no way back to it
        fn reaches(
            edges: &BTreeMap<(String, String), BTreeSet<String>>,
            folder: &str,
            from: &str,
            target: &str,
            seen: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            for next in edges
                .get(&(folder.to_string(), from.to_string()))
                .into_iter()
                .flatten()
            {
                if next == target {
                    return Some(vec![next.clone()]);
                }
                if seen.insert(next.clone())
                    && let Some(mut path) = reaches(edges, folder, next, target, seen)
                {
                    path.insert(0, next.clone());
                    return Some(path);
                }
            }
            None
        }
        let mut circles = Vec::new();
        for (folder, module) in edges.keys() {
            if let Some(path) = reaches(&edges, folder, module, module, &mut BTreeSet::new()) {
                circles.push(format!("{folder}: {module} → {}", path.join(" → ")));
            }
        }
        assert!(
            circles.is_empty(),
            "modules in a circle:\n{}",
            circles.join("\n")
        );
    }

    /// Functions that are long because they are one flat list, not several
    /// steps: a command dispatch and a literal document.
    const LONG_ON_PURPOSE: &[(&str, &str)] = &[("cli/mod.rs", "run"), ("http/openapi.rs", "spec")];

    /// No function of `src/` is over 80 lines (but `LONG_ON_PURPOSE`), and
    /// no file over 600 lines outside its tests: a longer one is several
    /// steps or rooms, to be named.
    #[test]
    fn functions_and_files_stay_short() {
        let mut long = Vec::new();
        for (name, code) in code_files() {
            let lines: Vec<&str> = code.lines().collect();
            if lines.len() > 600 {
                long.push(format!("{name}: {} lines outside its tests", lines.len()));
            }
            for (i, line) in lines.iter().enumerate() {
                let trimmed = line.trim_start();
                let indent = &line[..line.len() - trimmed.len()];
                let signature = trimmed
                    .trim_start_matches("pub ")
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("pub(super) ")
                    .trim_start_matches("const ")
                    .trim_start_matches("async ");
                let Some(rest) = signature.strip_prefix("fn ") else {
                    continue;
                };
                if line.trim_end().ends_with(';') {
                    continue;
                }
                let fn_name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let close = format!("{indent}}}");
                let Some(end) = lines[i..].iter().position(|l| *l == close) else {
                    continue;
                };
                if end + 1 > 80 && !LONG_ON_PURPOSE.contains(&(name.as_str(), fn_name.as_str())) {
                    long.push(format!("{name}: fn {fn_name} is {} lines", end + 1));
                }
            }
        }
        assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
    }
}
