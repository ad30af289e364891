//! JSON Schema validation (DESIGN 3.3, layer 1) with errors a person can act on.
//!
//! `schemas/mcp-manager.schema.json` is embedded and is the single source of truth for
//! which fields exist. Three validators are derived from it: the whole YAML document,
//! a `{servers: ...}` table (pyproject.toml, package.json), and one server
//! (`.mcp.json` entries). Unknown fields get a "did you mean" drawn from the schema.

use std::sync::OnceLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::{Value, json};

/// The schema for YAML config files, embedded in the binary.
pub const MANAGER_SCHEMA: &str = include_str!("../../schemas/mcp-manager.schema.json");
/// The schema for `.mcp.json`-style files, for editors (validation uses the server definition).
pub const MCP_JSON_SCHEMA: &str = include_str!("../../schemas/mcp-json.schema.json");

/// Which shape a value is validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A whole `mcp-manager.yaml`: `servers`, `mcp_servers`, `manager`.
    Document,
    /// `{servers: {...}}` as in `[tool.mcp]` or package.json's `"mcp"`.
    ServersTable,
    /// One server object.
    Server,
}

/// A schema violation at a JSON pointer into the validated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub pointer: String,
    pub message: String,
}

struct Schemas {
    root: Value,
    /// The schema each validator was compiled from, to look up allowed fields.
    sources: [Value; 3],
    document: Validator,
    servers_table: Validator,
    server: Validator,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        // The embedded schema is part of the binary and covered by tests, so failing
        // to parse or compile it is a build defect, not a runtime condition.
        let root: Value = serde_json::from_str(MANAGER_SCHEMA).expect("embedded schema is valid JSON");
        let defs = root["$defs"].clone();
        let compile = |schema: &Value| jsonschema::validator_for(schema).expect("embedded schema compiles");
        let table_schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"servers": root["properties"]["servers"].clone()},
            "$defs": defs.clone(),
        });
        // The server definition itself at the root (not a root `$ref`, which the
        // validator resolved anew on every call: 8,000 servers took gigabytes).
        let mut server_schema = root["$defs"]["server"].clone();
        server_schema["$defs"] = defs;
        let document = compile(&root);
        let servers_table = compile(&table_schema);
        let server = compile(&server_schema);
        Schemas {
            sources: [root.clone(), table_schema, server_schema],
            root,
            document,
            servers_table,
            server,
        }
    })
}

/// Whether `key` is a manager setting (a property of `$defs/manager` in the
/// schema): such keys may also stand at the top level of a YAML file.
pub fn is_manager_key(key: &str) -> bool {
    schemas().root["$defs"]["manager"]["properties"].get(key).is_some()
}

/// Validates `value` against `shape`, returning every violation.
pub fn validate(value: &Value, shape: Shape) -> Vec<SchemaError> {
    let s = schemas();
    let validator = match shape {
        Shape::Document => &s.document,
        Shape::ServersTable => &s.servers_table,
        Shape::Server => &s.server,
    };
    let mut out = Vec::new();
    for error in validator.iter_errors(value) {
        let pointer = error.instance_path().as_str().to_string();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let known = known_properties(shape, error.schema_path().as_str());
                for field in unexpected {
                    out.push(SchemaError {
                        pointer: format!("{pointer}/{}", field.replace('~', "~0").replace('/', "~1")),
                        message: unknown_field_message(field, &known),
                    });
                }
            }
            kind => out.push(SchemaError {
                pointer,
                message: describe(kind, error.instance()),
            }),
        }
    }
    out.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    out.dedup();
    out
}

/// A short, lowercase message for a schema violation.
fn describe(kind: &ValidationErrorKind, instance: &Value) -> String {
    match kind {
        ValidationErrorKind::Type { .. } => {
            let expected = format!("{kind:?}");
            let want = expected
                .split(['(', ')', '{', '}', ',', ' ', '[', ']'])
                .filter(|w| ["Array", "Boolean", "Integer", "Null", "Number", "Object", "String"].contains(w))
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>();
            format!("expected {}, found {}", want.join(" or "), json_type(instance))
        }
        ValidationErrorKind::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            format!("{instance} is not one of {}", allowed.join(", "))
        }
        ValidationErrorKind::AnyOf { .. } if instance.is_string() || instance.is_number() => {
            format!("{instance} is not a duration (use seconds, or a string such as \"30s\", \"500ms\", \"5m\")")
        }
        ValidationErrorKind::Minimum { limit } => format!("{instance} is less than the minimum of {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("{instance} is greater than the maximum of {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("{instance} must be greater than {limit}"),
        ValidationErrorKind::MinLength { .. } => "must not be empty".into(),
        ValidationErrorKind::Pattern { pattern } => format!("{instance} does not match the pattern {pattern}"),
        // No value in the message: it could be a secret written literally.
        _ => format!("this {} is not valid here", json_type(instance)),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The property names allowed where an `additionalProperties` error was raised.
///
/// `schema_path` ends in `/additionalProperties`; the object schema holding it has
/// the `properties` we want. Paths through `$ref` are followed within the root.
fn known_properties(shape: Shape, schema_path: &str) -> Vec<String> {
    let s = schemas();
    let root = &s.root;
    let start = match shape {
        Shape::Document => &s.sources[0],
        Shape::ServersTable => &s.sources[1],
        Shape::Server => &s.sources[2],
    };
    let segments: Vec<&str> = schema_path.split('/').skip(1).collect();
    let Some((_, parents)) = segments.split_last() else {
        return Vec::new();
    };
    let mut node = start;
    for segment in parents {
        let next = if *segment == "$ref" {
            node.get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|p| root.pointer(p))
        } else {
            node.get(*segment)
        };
        match next {
            Some(n) => node = n,
            None => return Vec::new(),
        }
    }
    // The final `$ref` may not appear in the path when the keyword sits beside it.
    if node.get("properties").is_none()
        && let Some(target) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
    {
        node = target;
    }
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// "unknown field `comand`, did you mean `command`?"
pub fn unknown_field_message(field: &str, known: &[String]) -> String {
    match did_you_mean(field, known) {
        Some(best) => format!("unknown field `{field}`, did you mean `{best}`?"),
        None if known.is_empty() => format!("unknown field `{field}`"),
        None if known.len() <= 12 => format!("unknown field `{field}` (expected one of: {})", known.join(", ")),
        None => format!(
            "unknown field `{field}`: none of the {} fields here is close (schemas/mcp-manager.schema.json lists them)",
            known.len()
        ),
    }
}

/// The closest known name, if it is close enough to be a likely typo. Swapped
/// letters count as one edit (`evn` is one edit from `env`).
pub fn did_you_mean<'a>(field: &str, known: &'a [String]) -> Option<&'a str> {
    let lower = field.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.chars().count().max(field.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Edit distance counting insertions, deletions, substitutions and swaps of
/// two neighbouring characters (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i-2, i-1 and i of the table.
    let mut two_back: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two_back[j - 2] + 1);
            }
        }
        two_back = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_compile_and_accept_a_full_example() {
        let doc = json!({
            "servers": {"a": {"command": "python", "args": ["-m", "x"], "environment": {"A": 1},
                               "startup_timeout": "30s", "request_timeout": 0.5, "tools": {"allow": ["read_*"]}}},
            "manager": {"reconcile": {"mode": "manual", "debounce": "250ms"}, "discovery": {"enable_inferred": ["x"]}}
        });
        assert_eq!(validate(&doc, Shape::Document), vec![]);
        let _: Value = serde_json::from_str(MCP_JSON_SCHEMA).unwrap();
    }

    #[test]
    fn unknown_fields_suggest_the_closest_name() {
        let errors = validate(&json!({"servers": {"a": {"comand": "x"}}}), Shape::Document);
        assert_eq!(errors[0].pointer, "/servers/a/comand");
        assert_eq!(errors[0].message, "unknown field `comand`, did you mean `command`?");
        let errors = validate(&json!({"managr": {}}), Shape::Document);
        assert_eq!(errors[0].message, "unknown field `managr`, did you mean `manager`?");
        let errors = validate(&json!({"command": "x", "health_check_interva": 3}), Shape::Server);
        assert_eq!(
            errors[0].message,
            "unknown field `health_check_interva`, did you mean `health_check_interval`?"
        );
        let errors = validate(&json!({"servers": {"a": {"tls": {"ca": "x"}}}}), Shape::ServersTable);
        assert!(errors[0].message.starts_with("unknown field `ca`"), "{errors:?}");
    }

    #[test]
    fn type_enum_range_and_duration_messages() {
        let errors = validate(
            &json!({"port": "x", "connection_type": "grpc", "failure_threshold": 0, "retry_delay": "soon"}),
            Shape::Server,
        );
        let by = |p: &str| {
            errors
                .iter()
                .find(|e| e.pointer == p)
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(by("/port"), "expected integer, found string");
        assert!(by("/connection_type").starts_with("\"grpc\" is not one of \"stdio\""));
        assert_eq!(by("/failure_threshold"), "0 is less than the minimum of 1");
        assert!(by("/retry_delay").contains("is not a duration"));
    }

    /// The editor-facing `.mcp.json` schema refers to the main one by a relative
    /// `$ref`, as editors resolve it next to the file; check it resolves and accepts
    /// the real-world client files in the fixtures.
    #[test]
    fn mcp_json_schema_resolves_and_accepts_client_files() {
        let main: Value = serde_json::from_str(MANAGER_SCHEMA).unwrap();
        let mcp_json: Value = serde_json::from_str(MCP_JSON_SCHEMA).unwrap();
        let registry = jsonschema::Registry::new()
            .add("json-schema:///mcp-manager.schema.json", main)
            .unwrap()
            .prepare()
            .unwrap();
        let validator = jsonschema::options().with_registry(&registry).build(&mcp_json).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sources");
        for file in [
            ".mcp.json",
            ".cursor/mcp.json",
            "claude/claude_desktop_config.json",
            ".vscode/mcp.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let value = crate::config::located::parse_json(&text, &Default::default())
                .unwrap()
                .to_json();
            let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{file}: {errors:?}");
        }
        let bad = json!({"mcpServers": {"x": {"comand": "y"}}});
        assert!(!validator.is_valid(&bad));
    }

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("evn", "env"), 1);
        assert_eq!(edit_distance("ca", "abc"), 3);
        assert_eq!(did_you_mean("zzzz", &["command".into()]), None);
    }

    /// Issue 13: a typo of an alias (`env` for `environment`) is suggested, not a
    /// list of every field.
    #[test]
    fn unknown_fields_suggest_aliases_too() {
        let errors = validate(&json!({"command": "x", "evn": {"A": "1"}}), Shape::Server);
        assert_eq!(errors[0].message, "unknown field `evn`, did you mean `env`?");
        let errors = validate(&json!({"command": "x", "cwdd": "/"}), Shape::Server);
        assert_eq!(errors[0].message, "unknown field `cwdd`, did you mean `cwd`?");
        let errors = validate(&json!({"command": "x", "zzzzzzzz": 1}), Shape::Server);
        assert!(!errors[0].message.contains(", "), "{}", errors[0].message);
        let errors = validate(&json!({"discovery": {"auto_discover": true}}), Shape::Document);
        assert_eq!(
            errors[0].message,
            "unknown field `auto_discover`, did you mean `auto_discovery`?"
        );
    }
}
