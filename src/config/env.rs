//! Environment expansion in config values: `${VAR}`, `${VAR:-default}`, VS Code's
//! `${env:VAR}` and `${workspaceFolder}`, and `$$` for a literal `$`.
//!
//! Pure: the environment is passed in as a lookup function.

use serde_json::Value;

/// A lookup's answer that starts with this (NUL, which no environment value
/// holds) means "not set; if there is no default, the rest of the answer"
/// (see [`crate::config::Environment::for_cluster`]).
pub const UNSET_MARK: char = '\0';

/// What the expander needs from the outside world.
pub struct ExpandContext<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The folder `${workspaceFolder}` stands for (the project root of the file).
    pub workspace_folder: &'a str,
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
        Value::String(s) => match expand_str(s, ctx) {
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
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if tail.starts_with("${") {
            // The value itself is not quoted: it may be a secret written literally.
            let close = find_close(tail, 2).ok_or_else(|| "unclosed `${`: add the closing `}`".to_string())?;
            out.push_str(&expand_reference(&tail[2..close], ctx)?);
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
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
    match ((ctx.lookup)(name), default) {
        (Some(value), default) if value.starts_with(UNSET_MARK) => match default {
            Some(default) => expand_str(default, ctx),
            None => Ok(value[UNSET_MARK.len_utf8()..].to_string()),
        },
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
    fn for_a_cluster_a_variable_without_a_default_is_left_to_kubernetes() {
        let lookup = |name: &str| Some(format!("{UNSET_MARK}$({name})"));
        let ctx = ExpandContext {
            lookup: &lookup,
            workspace_folder: "/proj",
        };
        assert_eq!(
            expand_str("--token=${GITHUB_TOKEN}", &ctx).unwrap(),
            "--token=$(GITHUB_TOKEN)"
        );
        assert_eq!(expand_str("${TZ:-UTC}", &ctx).unwrap(), "UTC");
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
