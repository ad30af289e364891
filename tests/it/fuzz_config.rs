//! Issue 13: the loader against mutated config files (a fuzz target in the
//! normal suite). Every fixture, mutated by byte flips, inserted syntax
//! (brackets, quotes, anchors, aliases, merge keys, escapes, invalid UTF-8),
//! cut and repeated ranges, must load to a result — never a panic — with every
//! error located inside the file.
//!
//! CI runs proptest's default 256 cases. A longer run:
//! `PROPTEST_CASES=100000 cargo test --release --test it fuzz_config`.

use std::path::{Path, PathBuf};

use mcp_manager::config::{self, Environment, Limits, SourceFile, SourceKind};
use mcp_manager::discovery;
use proptest::prelude::*;

use crate::support::test_env;

/// Every config fixture, with its kind; read once for all cases.
fn corpus() -> &'static [(PathBuf, SourceKind, Vec<u8>)] {
    static CORPUS: std::sync::OnceLock<Vec<(PathBuf, SourceKind, Vec<u8>)>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(read_corpus)
}

fn read_corpus() -> Vec<(PathBuf, SourceKind, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, SourceKind, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Some(kind) = SourceKind::classify(&path, true) {
                out.push((path.clone(), kind, std::fs::read(&path).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("tests/fixtures"), &mut out);
    walk(&root.join("examples"), &mut out);
    assert!(out.len() >= 15, "the corpus lost its files: {}", out.len());
    out
}

/// Fragments that exercise each format's tricky corners.
const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'",
    b":",
    b",",
    b"\n",
    b"  ",
    b"- ",
    b"#",
    b"//",
    b"/*",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"&a [*a, *a]",
    b"${",
    b"${X:-",
    b"\\u",
    b"\\ud800",
    b"\xff",
    b"\xc3",
    b"\t",
    b"0x",
    b"1e999",
    b"~",
    b"null",
    b"---\n",
    b"[[x]]\n",
    b"a.b.c = 1\n",
    b"\r",
    b"\xef\xbb\xbf",
    b"!!str ",
    b"? ",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Repeat(usize, usize, u8),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 0usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 0usize..64, 1u8..8).prop_map(|(at, n, k)| Mutation::Repeat(at, n, k)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] = b;
        }
        Mutation::Flip(..) => {}
        Mutation::Insert(i, t) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, TOKENS[t].iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Repeat(i, n, k) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            let piece = bytes[i..end].to_vec();
            for _ in 0..k {
                bytes.splice(end..end, piece.iter().copied());
            }
        }
        Mutation::Truncate(i) => {
            let i = at(i, bytes.len());
            bytes.truncate(i);
        }
    }
}

proptest! {
    #[test]
    fn fuzz_config_mutated_fixtures_load_without_panics(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let corpus = corpus();
        let (path, kind, original) = &corpus[pick.index(corpus.len())];
        let mut bytes = original.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let text = match discovery::decode(path, bytes) {
            Ok(text) => text,
            Err(d) => {
                // Invalid UTF-8: located at a real line, rendered without panicking.
                prop_assert!(d.line >= 1);
                let _ = d.to_string();
                return Ok(());
            }
        };
        // Lines as the loader counts them: YAML takes a lone CR as a line break.
        let shown = if *kind == SourceKind::Yaml {
            text.replace("\r\n", "\n").replace('\r', "\n")
        } else {
            text.clone()
        };
        let lines = shown.lines().count().max(1) as u32;
        let widths: Vec<usize> = shown.split('\n').map(|l| l.chars().count()).collect();
        let files = [SourceFile { path: path.clone(), kind: *kind, text }];
        let env = Environment { lookup: &test_env, secret_key: [0; 32] };
        // Small limits too, so that they are reached from ordinary files.
        let limits = if mutations.len() % 2 == 0 {
            Limits::default()
        } else {
            Limits { max_nesting: 3, max_servers_per_file: 2, max_yaml_aliases: 1, max_yaml_alias_bytes: 200, ..Limits::default() }
        };
        let outcome = config::load_with(&files, &env, &limits);
        for d in &outcome.diagnostics {
            prop_assert!(d.line <= lines + 1, "{d:?} past the end ({lines} lines)");
            prop_assert!(d.line >= 1 || d.column == 0, "{d:?}");
            if d.line >= 1 {
                // A column is on its line, or just past its end.
                let width = widths.get(d.line as usize - 1).copied().unwrap_or(0);
                prop_assert!(d.column as usize <= width + 2, "{d:?} past the end of its line ({width})");
            }
            prop_assert!(!d.message.is_empty());
            let _ = d.to_string();
        }
        // Deterministic: the same input gives the same result.
        let again = config::load_with(&files, &env, &limits);
        prop_assert_eq!(&again.diagnostics, &outcome.diagnostics);
    }
}
