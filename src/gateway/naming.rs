//! How the gateway names what it exposes: pure functions, no I/O.
//!
//! **Tools and prompts** are named by each pair's [`Prefix`]:
//! `manager.gateway.prefix: always` (the default) or a server's `prefix: true`
//! exposes `SERVER{sep}NAME` (`sep` is `manager.gateway.tool_separator`, `__` by
//! default; `prefix: "text"` puts that text in place of the server's name);
//! `on_conflict` exposes the name as the server wrote it unless another server
//! offers the same name, and only those get the prefix; a server's `prefix:
//! false` never gets one. Then, applied to every pair of the catalog at once:
//!
//! 1. In a prefixed name, characters outside `[a-zA-Z0-9_-]` of the upstream
//!    name become `_`.
//! 2. If the result is at most 64 characters and no other pair produced the same
//!    string, that is the name.
//! 3. Otherwise (too long, or a clash) the name is the first 55 characters of the
//!    result, `_`, and the first 8 hex digits of sha256(`SERVER` NUL `NAME`):
//!    64 characters at most, stable across restarts, different for different
//!    pairs. Every pair in a clash gets this form, so no pair wins by order.
//!
//! **Resources** of a prefixed server (and URIs two servers both offer) keep
//! their upstream URI behind a prefix that routes them back:
//! `mcp-manager://SERVER/` followed by the upstream URI, unchanged (server names
//! never contain `/`). Resource templates get the same prefix. Other URIs are
//! exposed as they are, and routed by the catalog.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Longest exposed tool or prompt name (clients such as Claude reject longer ones).
pub const MAX_NAME: usize = 64;
/// Length of the readable part of a hashed name: 55 + `_` + 8 hex digits = 64.
const HASHED_PREFIX: usize = MAX_NAME - 9;

pub const RESOURCE_SCHEME: &str = "mcp-manager://";

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hashed(candidate: &str, server: &str, name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(server.as_bytes());
    hasher.update([0u8]);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let prefix: String = candidate.chars().take(HASHED_PREFIX).collect();
    format!("{prefix}_{}", &crate::config::view::hex(&digest)[..8])
}

/// How one server's names are exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix<'a> {
    /// Always `TEXT{sep}NAME` (the server's name, or its `prefix: "text"`).
    Always(&'a str),
    /// The name as written, unless another server offers the same one.
    OnConflict,
    /// The name as written, always (`prefix: false`).
    Never,
}

/// One name to expose: its server, its upstream name and how it is prefixed.
pub type Pair<'a> = (&'a str, &'a str, Prefix<'a>);

/// Exposed names for (server, upstream name) pairs, all prefixed with their
/// server's name (`manager.gateway.prefix: always`).
pub fn expose<'a>(pairs: &[(&'a str, &'a str)], separator: &str) -> Vec<String> {
    let pairs: Vec<Pair<'a>> = pairs.iter().map(|&(s, n)| (s, n, Prefix::Always(s))).collect();
    expose_with(&pairs, separator)
}

/// Exposed names for pairs, by the rule in the module docs. The result is in
/// the same order as `pairs`.
pub fn expose_with(pairs: &[Pair<'_>], separator: &str) -> Vec<String> {
    // How many servers offer each name unprefixed.
    let mut bare: HashMap<&str, usize> = HashMap::new();
    for (_, name, prefix) in pairs {
        if !matches!(prefix, Prefix::Always(_)) {
            *bare.entry(name).or_default() += 1;
        }
    }
    let candidates: Vec<String> = pairs
        .iter()
        .map(|(server, name, prefix)| match prefix {
            Prefix::Always(text) => format!("{text}{separator}{}", sanitize(name)),
            Prefix::OnConflict if bare[name] > 1 => format!("{server}{separator}{}", sanitize(name)),
            Prefix::OnConflict | Prefix::Never => name.to_string(),
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in &candidates {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    let mut names: Vec<String> = candidates
        .iter()
        .zip(pairs)
        .map(|(candidate, (server, name, _))| {
            if candidate.len() <= MAX_NAME && counts[candidate.as_str()] == 1 {
                candidate.clone()
            } else {
                hashed(candidate, server, name)
            }
        })
        .collect();
    // A name can still come out twice: a server that lists one name twice, or
    // an upstream that names a tool like another pair's hashed name. Every
    // such name gets a numbered form, so none routes to the wrong pair.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for n in &names {
        *seen.entry(n.clone()).or_default() += 1;
    }
    let mut taken: std::collections::HashSet<String> = names.iter().cloned().collect();
    for n in names.iter_mut() {
        if seen.get(n.as_str()).copied().unwrap_or(0) > 1 {
            let base: String = n.chars().take(MAX_NAME - 4).collect();
            let mut k = 2;
            let renamed = loop {
                let candidate = format!("{base}_{k}");
                if !taken.contains(&candidate) {
                    break candidate;
                }
                k += 1;
            };
            taken.insert(renamed.clone());
            *n = renamed;
        }
    }
    names
}

/// `mcp-manager://SERVER/URI`.
pub fn resource_uri(server: &str, uri: &str) -> String {
    format!("{RESOURCE_SCHEME}{server}/{uri}")
}

/// The server and upstream URI of an exposed resource URI.
pub fn parse_resource_uri(exposed: &str) -> Option<(&str, &str)> {
    let rest = exposed.strip_prefix(RESOURCE_SCHEME)?;
    let (server, uri) = rest.split_once('/')?;
    (!server.is_empty() && !uri.is_empty()).then_some((server, uri))
}

/// Longest URI matched against templates (longer ones match none): keeps the
/// match cheap whatever a client sends.
pub const MAX_MATCHED_URI: usize = 2048;

/// Whether `uri` is an instance of the RFC 6570 `template`: its literal parts
/// in order, each `{expression}` standing for one or more characters (`/`
/// excluded, except for `{+…}` and `{#…}`, which may span them). A table of
/// (part, position) results makes it at most parts × length² steps, on URIs
/// of at most [`MAX_MATCHED_URI`] bytes.
pub fn template_matches(template: &str, uri: &str) -> bool {
    enum Part<'a> {
        Literal(&'a str),
        Var { spans_slashes: bool },
    }
    if uri.len() > MAX_MATCHED_URI {
        return false;
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        if open > 0 {
            parts.push(Part::Literal(&rest[..open]));
        }
        let expression = &rest[open + 1..open + close];
        parts.push(Part::Var {
            spans_slashes: expression.starts_with('+') || expression.starts_with('#'),
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest));
    }
    if parts.is_empty() {
        return false;
    }
    let text = uri.as_bytes();
    let n = text.len();
    // reachable[p][i]: the first p parts can match text[..i] exactly.
    let mut reachable = vec![false; (parts.len() + 1) * (n + 1)];
    let at = |p: usize, i: usize| p * (n + 1) + i;
    reachable[at(0, 0)] = true;
    for (p, part) in parts.iter().enumerate() {
        for i in 0..=n {
            if !reachable[at(p, i)] {
                continue;
            }
            match part {
                Part::Literal(l) => {
                    if text[i..].starts_with(l.as_bytes()) {
                        reachable[at(p + 1, i + l.len())] = true;
                    }
                }
                Part::Var { spans_slashes } => {
                    for end in i + 1..=n {
                        if !spans_slashes && text[end - 1] == b'/' {
                            break;
                        }
                        // Only ends on character boundaries.
                        if uri.is_char_boundary(end) {
                            reachable[at(p + 1, end)] = true;
                        }
                    }
                }
            }
        }
    }
    reachable[at(parts.len(), n)]
}

/// Shell-style glob: `*` is any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with a single backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `tools.allow` / `tools.deny`: an empty allow list allows everything; deny wins.
pub fn tool_allowed(allow: &[String], deny: &[String], tool: &str) -> bool {
    (allow.is_empty() || allow.iter().any(|g| glob_match(g, tool))) && !deny.iter().any(|g| glob_match(g, tool))
}

/// One page of a list: `cursor` is an offset the gateway handed out earlier.
/// Returns the range to serve and the next cursor, or `None` for a cursor that
/// is not ours.
pub fn page(total: usize, cursor: Option<&str>, page_size: usize) -> Option<(std::ops::Range<usize>, Option<String>)> {
    let start = match cursor {
        None => 0,
        Some(c) => c.strip_prefix("offset:")?.parse::<usize>().ok()?,
    };
    let start = start.min(total);
    let end = if page_size == 0 {
        total
    } else {
        (start + page_size).min(total)
    };
    let next = (end < total).then(|| format!("offset:{end}"));
    Some((start..end, next))
}

/// Bytes of items per page when no `page_size` is set: far below the 1 MiB
/// some SDKs accept in one message (the Python SDK's limit), whatever the
/// catalog holds.
pub const PAGE_BYTES: usize = 256 * 1024;

/// Like [`page`], but with `page_size` 0 a page holds items (their serialized
/// `sizes`) up to `budget` bytes, and always at least one.
pub fn page_by_size(
    sizes: &[usize],
    cursor: Option<&str>,
    page_size: usize,
    budget: usize,
) -> Option<(std::ops::Range<usize>, Option<String>)> {
    if page_size > 0 {
        return page(sizes.len(), cursor, page_size);
    }
    let (range, _) = page(sizes.len(), cursor, 0)?;
    let start = range.start;
    let mut end = start;
    let mut bytes = 0;
    while end < sizes.len() && (end == start || bytes + sizes[end] <= budget) {
        bytes += sizes[end];
        end += 1;
    }
    let next = (end < sizes.len()).then(|| format!("offset:{end}"));
    Some((start..end, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_join_with_the_separator() {
        assert_eq!(
            expose(&[("time", "get_current_time"), ("alpha", "run-task")], "__"),
            ["time__get_current_time", "alpha__run-task"]
        );
        assert_eq!(expose(&[("time", "now")], "-"), ["time-now"]);
    }

    #[test]
    fn odd_characters_become_underscores() {
        assert_eq!(expose(&[("fs", "read.file/v2")], "__"), ["fs__read_file_v2"]);
    }

    #[test]
    fn long_names_are_cut_and_hashed_to_64() {
        let tool = "a".repeat(80);
        let [name] = expose(&[("srv", tool.as_str())], "__").try_into().unwrap();
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("srv__aaaa"));
        // Stable: the same pair always gets the same name.
        assert_eq!(expose(&[("srv", tool.as_str())], "__")[0], name);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn clashes_all_get_distinct_hashed_names() {
        let names = expose(&[("a", "x.y"), ("a", "x_y"), ("a", "other")], "__");
        assert_ne!(names[0], names[1]);
        assert!(names[0].starts_with("a__x_y_") && names[0].len() == "a__x_y_".len() + 8);
        assert!(names[1].starts_with("a__x_y_"));
        assert_eq!(names[2], "a__other");
        // Separator ambiguity between servers is a clash too.
        let names = expose(&[("a__b", "c"), ("a", "b__c")], "__");
        assert_ne!(names[0], names[1]);
    }

    /// Issue 12: names as the server wrote them, prefixed only where two
    /// servers offer the same one; a server's own setting overrides.
    #[test]
    fn on_conflict_prefixes_only_the_names_two_servers_share() {
        use Prefix::*;
        let names = expose_with(
            &[
                ("time", "get_current_time", OnConflict),
                ("alpha", "run.task", OnConflict),
                ("a", "search", OnConflict),
                ("b", "search", OnConflict),
            ],
            "__",
        );
        assert_eq!(names, ["get_current_time", "run.task", "a__search", "b__search"]);
        // `prefix: false` keeps its name; the other side of the clash yields.
        let names = expose_with(&[("a", "search", Never), ("b", "search", OnConflict)], "__");
        assert_eq!(names, ["search", "b__search"]);
        // `prefix: "text"` and `prefix: true`.
        let names = expose_with(&[("github", "search", Always("gh")), ("b", "search", OnConflict)], "__");
        assert_eq!(names, ["gh__search", "search"]);
        // Two servers that both refuse a prefix: the clash rule still makes
        // the names distinct.
        let names = expose_with(&[("a", "search", Never), ("b", "search", Never)], "__");
        assert_ne!(names[0], names[1]);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("search_") && n.len() == "search_".len() + 8)
        );
    }

    #[test]
    fn no_name_comes_out_twice() {
        use Prefix::*;
        // One server listing a name twice, and a name that mimics another
        // pair's hashed form: all distinct, none kept by order.
        let names = expose_with(&[("a", "x", Never), ("a", "x", Never)], "__");
        assert_ne!(names[0], names[1]);
        let hashed_b = expose_with(&[("b", "y", Never), ("c", "y", Never)], "__")[0].clone();
        let names = expose_with(
            &[("b", "y", Never), ("c", "y", Never), ("evil", hashed_b.as_str(), Never)],
            "__",
        );
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), 3, "{names:?}");
        assert!(!names.contains(&hashed_b), "{names:?}");
    }

    #[test]
    fn uris_match_templates() {
        assert!(template_matches(
            "test://template/{id}/data",
            "test://template/123/data"
        ));
        assert!(!template_matches("test://template/{id}/data", "test://template//data"));
        assert!(!template_matches(
            "test://template/{id}/data",
            "test://template/1/2/data"
        ));
        assert!(!template_matches("test://template/{id}/data", "test://other/1/data"));
        assert!(template_matches("file:///{+path}", "file:///a/b/c.txt"));
        assert!(template_matches("users/{id}", "users/42"));
        assert!(!template_matches("users/{id}", "users/"));
        assert!(!template_matches("users/{id", "users/42"));
        assert!(template_matches("a/{x}-{y}/b", "a/1-2-3/b"));
        // A hostile URI costs little: longer than the cap matches nothing,
        // and within it the table bounds the work.
        let long = format!("file:///{}", "a".repeat(10_000));
        assert!(!template_matches("file:///{a}{b}{c}{d}x", &long));
        let within = format!("file:///{}", "a".repeat(2000));
        assert!(!template_matches("file:///{+a}{+b}{+c}x", &within));
    }

    #[test]
    fn resource_uris_round_trip() {
        let exposed = resource_uri("docs", "file:///tmp/a b.txt");
        assert_eq!(exposed, "mcp-manager://docs/file:///tmp/a b.txt");
        assert_eq!(parse_resource_uri(&exposed), Some(("docs", "file:///tmp/a b.txt")));
        assert_eq!(parse_resource_uri("file:///x"), None);
        assert_eq!(parse_resource_uri("mcp-manager://docs"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("read_*", "read_file"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*_file", "read_file"));
        assert!(glob_match("r?ad*e", "read_file"));
        assert!(!glob_match("read_*", "write_file"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(tool_allowed(&[], &[], "anything"));
        let allow = vec!["read_*".to_string(), "list".to_string()];
        let deny = vec!["*_secret".to_string()];
        assert!(tool_allowed(&allow, &deny, "read_file"));
        assert!(!tool_allowed(&allow, &deny, "read_secret"));
        assert!(!tool_allowed(&allow, &deny, "write_file"));
        assert!(!tool_allowed(&[], &deny, "get_secret"));
    }

    #[test]
    fn pages_by_size_stay_under_the_budget() {
        let sizes = [100, 100, 100, 500, 10];
        assert_eq!(
            page_by_size(&sizes, None, 0, 250),
            Some((0..2, Some("offset:2".into())))
        );
        assert_eq!(
            page_by_size(&sizes, Some("offset:2"), 0, 250),
            Some((2..3, Some("offset:3".into())))
        );
        // An item over the budget still goes, alone.
        assert_eq!(
            page_by_size(&sizes, Some("offset:3"), 0, 250),
            Some((3..4, Some("offset:4".into())))
        );
        assert_eq!(page_by_size(&sizes, Some("offset:4"), 0, 250), Some((4..5, None)));
        assert_eq!(page_by_size(&[], None, 0, 250), Some((0..0, None)));
        // A page size wins over the budget.
        assert_eq!(
            page_by_size(&sizes, None, 4, 250),
            Some((0..4, Some("offset:4".into())))
        );
    }

    #[test]
    fn pages() {
        assert_eq!(page(5, None, 2), Some((0..2, Some("offset:2".into()))));
        assert_eq!(page(5, Some("offset:4"), 2), Some((4..5, None)));
        assert_eq!(page(5, None, 0), Some((0..5, None)));
        assert_eq!(page(5, Some("offset:9"), 2), Some((5..5, None)));
        assert_eq!(page(5, Some("bogus"), 2), None);
    }
}
