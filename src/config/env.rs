//! Environment expansion in config values: `${VAR}`, `${VAR:-default}`, VS Code's
//! `${env:VAR}` and `${workspaceFolder}`, and `$$` for a literal `$`.
//!
//! Pure: the environment is passed in as a lookup function.

use serde_json::Value;

/// A lookup's answer that starts with this (NUL, which no environment value
/// holds) is a cluster's (see [`crate::config::Environment::for_cluster`]):
/// in a server's `command` and `args`, `${VAR}` becomes `$(VAR)` (its default
/// if it has one), which Kubernetes expands from the container's env, so no
/// value of this environment reaches a pod's command line; anywhere else the
/// variable's value follows the mark and a second one (`\0\0VALUE`), or
/// nothing does when it is not set.
pub const CLUSTER_MARK: char = '\0';

/// What the expander needs from the outside world.
pub struct ExpandContext<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The folder `${workspaceFolder}` stands for (the project root of the file).
    pub workspace_folder: &'a str,
    /// Expanding a server's `command` or `args` (set by [`expand_value`]).
    pub in_command_line: bool,
}

/// A failed expansion at a JSON pointer below the expanded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub pointer: String,
    pub message: String,
}

/// Keys whose values are numbers or booleans: a value that is one whole `${VAR}`
/// there is read as a number or boolean after expansion, so `port: ${PORT}` works.
const TYPED_KEYS: &[&str] = &[
    "port",
    "max_retries",
    "failure_threshold",
    "recovery_threshold",
    "auto_restart",
    "max_restart_attempts",
    "max_concurrent_requests",
    "request_rate_limit",
    "replicas",
    "priority",
    "enabled",
    "disabled",
    "memory_mb",
    "cpu_seconds",
    "nofile",
    "insecure_skip_verify",
];

/// Expands every string inside `value`, collecting one error per failed string.
pub fn expand_value(value: &mut Value, ctx: &ExpandContext<'_>, pointer: &mut String, errors: &mut Vec<ExpandError>) {
    match value {
        Value::String(s) => match expand_str(
            s,
            &ExpandContext {
                in_command_line: is_command_line(pointer),
                ..*ctx
            },
        ) {
            Ok(expanded) => {
                let key = pointer.rsplit('/').next().unwrap_or("");
                if expanded != *s && is_single_reference(s) && TYPED_KEYS.contains(&key) {
                    *value = retype(expanded);
                } else {
                    *s = expanded;
                }
            }
            Err(message) => errors.push(ExpandError {
                pointer: pointer.clone(),
                message,
            }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                expand_value(item, ctx, pointer, errors);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                expand_value(item, ctx, pointer, errors);
                pointer.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `…/command` or `…/args/N`: a server's command line.
fn is_command_line(pointer: &str) -> bool {
    let mut parts = pointer.rsplit('/');
    match (parts.next(), parts.next()) {
        (Some("command"), _) => true,
        // `pod_template`'s containers: `command` is a list there.
        (Some(index), Some("command" | "args")) => index.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

fn is_single_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && find_close(s, 2) == Some(s.len() - 1)
}

fn retype(s: String) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s.as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    match s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        Some(n) => Value::Number(n),
        None => Value::String(s),
    }
}

/// Index of the `}` closing a `${` whose body starts at `start`, honouring nesting.
fn find_close(s: &str, start: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 1;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Expands one string.
pub fn expand_str(s: &str, ctx: &ExpandContext<'_>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    // A literal `$` in a pod's command line is `$$` to Kubernetes (which
    // would expand `$(…)` of the text otherwise).
    let dollar = if ctx.in_command_line && for_cluster(ctx) {
        "$$"
    } else {
        "$"
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push_str(dollar);
            rest = after;
        } else if tail.starts_with("${") {
            // The value itself is not quoted: it may be a secret written literally.
            let close = find_close(tail, 2).ok_or_else(|| "unclosed `${`: add the closing `}`".to_string())?;
            out.push_str(&expand_reference(&tail[2..close], ctx)?);
            rest = &tail[close + 1..];
        } else {
            out.push_str(dollar);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether the lookup is a cluster's ([`CLUSTER_MARK`]).
fn for_cluster(ctx: &ExpandContext<'_>) -> bool {
    (ctx.lookup)("").is_some_and(|v| v.starts_with(CLUSTER_MARK))
}

fn expand_reference(body: &str, ctx: &ExpandContext<'_>) -> Result<String, String> {
    if body == "workspaceFolder" {
        return Ok(ctx.workspace_folder.to_string());
    }
    if let Some(input) = body.strip_prefix("input:") {
        return Err(format!(
            "VS Code input variable `${{input:{input}}}` cannot be prompted for; use `${{VAR}}` with an environment variable instead"
        ));
    }
    let body = body.strip_prefix("env:").unwrap_or(body);
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`${{{body}}}` is not a valid variable reference (use ${{NAME}} or ${{NAME:-default}})"
        ));
    }
    let found = match (ctx.lookup)(name) {
        Some(value) if value.starts_with(CLUSTER_MARK) => {
            if ctx.in_command_line {
                return match default {
                    Some(default) => expand_str(default, ctx),
                    None => Ok(format!("$({name})")),
                };
            }
            value
                .strip_prefix(CLUSTER_MARK)
                .and_then(|v| v.strip_prefix(CLUSTER_MARK))
                .map(str::to_string)
        }
        other => other,
    };
    match (found, default) {
        (Some(value), None) => Ok(value),
        (Some(value), Some(_)) if !value.is_empty() => Ok(value),
        (_, Some(default)) => expand_str(default, ctx),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set; set it or give a default with ${{{name}:-value}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_env<T>(f: impl FnOnce(&ExpandContext<'_>) -> T) -> T {
        let lookup = |name: &str| match name {
            "HOME" => Some("/home/u".to_string()),
            "PORT" => Some("8080".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        f(&ExpandContext {
            lookup: &lookup,
            workspace_folder: "/proj",
            in_command_line: false,
        })
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        with_env(|ctx| {
            assert_eq!(expand_str("${HOME}/x", ctx).unwrap(), "/home/u/x");
            assert_eq!(expand_str("${MISSING:-prod}", ctx).unwrap(), "prod");
            assert_eq!(expand_str("${EMPTY:-fallback}", ctx).unwrap(), "fallback");
            assert_eq!(expand_str("${EMPTY}", ctx).unwrap(), "");
            assert_eq!(expand_str("${MISSING:-${HOME}}", ctx).unwrap(), "/home/u");
            assert_eq!(expand_str("$$HOME and $HOME", ctx).unwrap(), "$HOME and $HOME");
            assert_eq!(expand_str("${env:HOME}", ctx).unwrap(), "/home/u");
            assert_eq!(expand_str("${workspaceFolder}/a", ctx).unwrap(), "/proj/a");
        });
    }

    #[test]
    fn for_a_cluster_the_command_line_leaves_variables_to_kubernetes() {
        let lookup = |name: &str| match name {
            "GITHUB_TOKEN" | "TAG" => Some(format!("{CLUSTER_MARK}{CLUSTER_MARK}value-of-{name}")),
            _ => Some(CLUSTER_MARK.to_string()),
        };
        let mut config = serde_json::json!({"servers": {"gh": {
            "command": "${TOOL:-github-mcp}",
            "args": ["--token=${GITHUB_TOKEN}", "${TZ:-UTC}", "${UNSET}", "$$(HOME) costs $$5"],
            "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}"},
            "kubernetes": {"image": "reg/gh:${TAG}", "service_account": "${SA:-gh}"},
        }}});
        let ctx = ExpandContext {
            lookup: &lookup,
            workspace_folder: "/proj",
            in_command_line: false,
        };
        let mut errors = Vec::new();
        expand_value(&mut config, &ctx, &mut String::new(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let gh = &config["servers"]["gh"];
        assert_eq!(gh["command"], "github-mcp");
        // A literal `$` is `$$` to Kubernetes, which would expand `$(HOME)`.
        assert_eq!(
            gh["args"],
            json!(["--token=$(GITHUB_TOKEN)", "UTC", "$(UNSET)", "$$(HOME) costs $$5"])
        );
        // Elsewhere the environment as usual (a header the gateway sends,
        // an image tag), an unset one without default an error.
        assert_eq!(gh["headers"]["Authorization"], "Bearer value-of-GITHUB_TOKEN");
        assert_eq!(gh["kubernetes"]["image"], "reg/gh:value-of-TAG");
        assert_eq!(gh["kubernetes"]["service_account"], "gh");
        let mut bad = json!({"url": "${UNSET}"});
        expand_value(&mut bad, &ctx, &mut String::new(), &mut errors);
        assert!(errors[0].message.contains("`UNSET` is not set"), "{errors:?}");
    }

    #[test]
    fn reports_missing_and_malformed() {
        with_env(|ctx| {
            let err = expand_str("Bearer ${TOKEN}", ctx).unwrap_err();
            assert!(err.contains("`TOKEN` is not set"), "{err}");
            assert!(expand_str("${A", ctx).unwrap_err().contains("unclosed"));
            assert!(expand_str("${input:key}", ctx).unwrap_err().contains("VS Code input"));
            assert!(expand_str("${A B}", ctx).unwrap_err().contains("not a valid variable"));
        });
    }

    #[test]
    fn typed_fields_are_retyped_and_errors_carry_pointers() {
        with_env(|ctx| {
            let mut v = json!({"port": "${PORT}", "args": ["${PORT}"], "headers": {"A": "${NOPE}"}});
            let mut errors = Vec::new();
            expand_value(&mut v, ctx, &mut String::new(), &mut errors);
            assert_eq!(v["port"], json!(8080));
            assert_eq!(v["args"], json!(["8080"]));
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].pointer, "/headers/A");
        });
    }
}
