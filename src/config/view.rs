//! A spec as the planner and the state store see it: the normalized spec as JSON
//! fields, with every sensitive value replaced by a fingerprint.
//!
//! Architecture invariant: secrets never leave [`ServerSpec`]. Plans, observed state
//! in sled and every output are built from views, so a changed secret is detectable
//! (the fingerprint changes) but never printable.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::{self, ServerSpec};

/// Field name → value, sensitive values fingerprinted.
pub type SpecView = BTreeMap<String, Value>;

const FINGERPRINT_PREFIX: &str = "sensitive:hmac:";
/// Unkeyed fingerprints written by earlier versions (see [`forget_legacy`]).
const LEGACY_PREFIX: &str = "sensitive:sha256:";

/// What a sensitive value looks like in output.
pub const REDACTED: &str = "(sensitive)";

/// The key of secret fingerprints: per install (the state dir's `secret-key`),
/// so a fingerprint that leaves the process (sled, `/api/v1/observed`,
/// `storage.state_file`) cannot confirm a guessed secret offline.
pub type SecretKey = [u8; 32];

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &SecretKey, message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let inner = Sha256::new().chain_update(inner_pad).chain_update(message).finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn fingerprint(key: &SecretKey, value: &str) -> Value {
    let digest = hmac_sha256(key, value.as_bytes());
    let mut out = String::with_capacity(FINGERPRINT_PREFIX.len() + 24);
    out.push_str(FINGERPRINT_PREFIX);
    out.push_str(&hex(&digest[..12]));
    Value::String(out)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Whether a view value is a fingerprint of a sensitive value.
pub fn is_fingerprint(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.starts_with(FINGERPRINT_PREFIX) || s.starts_with(LEGACY_PREFIX))
}

/// Replaces unkeyed fingerprints that earlier versions stored (a plain
/// sha256 confirms a guessed secret offline) with a value that says only
/// "some secret". Returns whether anything was replaced. The view's stored
/// hash still differs from the desired one, so the next plan still sees the
/// change it would have seen.
pub fn forget_legacy(view: &mut SpecView) -> bool {
    fn walk(value: &mut Value) -> bool {
        match value {
            Value::String(s) if s.starts_with(LEGACY_PREFIX) => {
                *s = format!("{FINGERPRINT_PREFIX}legacy");
                true
            }
            Value::Object(map) => map.values_mut().fold(false, |any, v| walk(v) | any),
            Value::Array(items) => items.iter_mut().fold(false, |any, v| walk(v) | any),
            _ => false,
        }
    }
    view.values_mut().fold(false, |any, v| walk(v) | any)
}

/// Builds the view of a spec, fingerprinting secrets under `key`.
pub fn spec_view(spec: &ServerSpec, key: &SecretKey) -> SpecView {
    let Ok(Value::Object(map)) = serde_json::to_value(spec) else {
        // ServerSpec is a plain struct of strings, numbers and maps with string keys.
        unreachable!("a ServerSpec always serializes to a JSON object")
    };
    let mut view: SpecView = map.into_iter().collect();
    // Deployment settings: changing them must not restart the local server.
    view.remove("kubernetes");
    if spec.connection_type.is_remote() && spec.command.is_none() {
        // Nothing is started in it: moving the project must not plan a restart.
        view.remove("working_directory");
    }
    for field in ["environment", "headers"] {
        if let Some(Value::Object(values)) = view.get_mut(field) {
            for value in values.values_mut() {
                if let Value::String(s) = value {
                    *value = fingerprint(key, s);
                }
            }
        }
    }
    if let Some(Value::Object(auth)) = view.get_mut("auth")
        && let Some(Value::String(secret)) = auth.get("client_secret")
    {
        let fp = fingerprint(key, secret);
        auth.insert("client_secret".into(), fp);
    }
    if let Some(Value::Array(args)) = view.get_mut("args") {
        for i in spec::sensitive_args(&spec.args) {
            if let Some(Value::String(s)) = args.get(i) {
                let fp = fingerprint(key, s);
                args[i] = fp;
            }
        }
    }
    if let Some(url) = &spec.url
        && spec::url_is_sensitive(url)
    {
        view.insert("url".into(), fingerprint(key, url));
    }
    for value in view.values_mut() {
        redact_secret_keys(value, key);
    }
    view
}

/// Fingerprints values under secret-looking keys anywhere in nested objects.
fn redact_secret_keys(value: &mut Value, key: &SecretKey) {
    match value {
        Value::Object(map) => {
            for (name, v) in map.iter_mut() {
                match v {
                    Value::String(s) if spec::is_secret_key(name) && !s.starts_with(FINGERPRINT_PREFIX) => {
                        let fp = fingerprint(key, s);
                        *v = fp;
                    }
                    _ => redact_secret_keys(v, key),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_secret_keys(v, key)),
        _ => {}
    }
}

/// Replaces fingerprints with [`REDACTED`], for output.
pub fn redact(value: &Value) -> Value {
    match value {
        v if is_fingerprint(v) => Value::String(REDACTED.into()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), redact(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// A stable hash of any serializable value (hex sha256 of its JSON), streamed into
/// the hasher without building the JSON text.
pub fn stable_hash<T: serde::Serialize>(value: &T) -> String {
    let mut hasher = Sha256::new();
    // Writing into a hasher cannot fail, and our values serialize without error.
    let _ = serde_json::to_writer(&mut hasher, value);
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::{NormalizeContext, normalize};
    use std::path::Path;

    const KEY: SecretKey = [42; 32];

    fn spec(v: Value) -> ServerSpec {
        let Value::Object(map) = v else { panic!("object") };
        normalize(
            &map,
            &NormalizeContext {
                base_dir: Path::new("/x"),
            },
        )
        .0
        .unwrap()
    }

    #[test]
    fn kubernetes_settings_do_not_change_the_local_view() {
        let plain = spec(serde_json::json!({"command": "srv"}));
        let deployed = spec(serde_json::json!({"command": "srv", "kubernetes": {"image": "x", "replicas": 3}}));
        assert_eq!(spec_view(&plain, &KEY), spec_view(&deployed, &KEY));
    }

    #[test]
    fn an_oauth_client_secret_is_fingerprinted() {
        let s = spec(serde_json::json!({
            "url": "https://h/mcp",
            "auth": {"type": "oauth", "client_id": "me", "client_secret": "hunter2"},
        }));
        let view = spec_view(&s, &KEY);
        let text = serde_json::to_string(&view).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(is_fingerprint(&view["auth"]["client_secret"]));
        assert_eq!(view["auth"]["client_id"], "me");
    }

    #[test]
    fn secrets_are_fingerprinted_everywhere() {
        let s = spec(serde_json::json!({
            "command": "srv", "args": ["--token", "hunter2", "--mode", "fast"],
            "environment": {"MODE": "supersecret-mode", "API_KEY": "hunter2"},
        }));
        let view = spec_view(&s, &KEY);
        let text = serde_json::to_string(&view).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("supersecret-mode"),
            "{text}"
        );
        assert_eq!(view["args"][3], "fast");
        assert!(is_fingerprint(&view["environment"]["MODE"]));
        let redacted = serde_json::to_string(&redact(&Value::Object(view.into_iter().collect()))).unwrap();
        assert!(redacted.contains("(sensitive)") && !redacted.contains(FINGERPRINT_PREFIX));
    }

    #[test]
    fn remote_secrets_too() {
        let s = spec(serde_json::json!({"url": "https://u:pw@h/mcp", "headers": {"Authorization": "Bearer abc"}}));
        let text = serde_json::to_string(&spec_view(&s, &KEY)).unwrap();
        assert!(!text.contains("pw@") && !text.contains("Bearer abc"), "{text}");
    }

    #[test]
    fn fingerprints_change_with_the_secret() {
        let a = spec_view(&spec(serde_json::json!({"command": "s", "env": {"K": "1"}})), &KEY);
        let b = spec_view(&spec(serde_json::json!({"command": "s", "env": {"K": "2"}})), &KEY);
        assert_ne!(a["environment"], b["environment"]);
        assert_ne!(stable_hash(&a), stable_hash(&b));
    }

    /// Issue 11, defect 12: an unkeyed sha256 let anyone who could read the
    /// state dir or the API confirm a guessed secret offline. Fingerprints are
    /// keyed per install: the same secret under another key looks unrelated,
    /// and the plain sha256 of the secret appears nowhere.
    #[test]
    fn fingerprints_are_keyed_per_install() {
        let s = spec(serde_json::json!({"command": "s", "env": {"API_KEY": "hunter2"}}));
        let ours = spec_view(&s, &KEY);
        let theirs = spec_view(&s, &[7; 32]);
        assert_ne!(ours["environment"], theirs["environment"]);
        let plain = hex(&Sha256::digest(b"hunter2")[..12]);
        let text = serde_json::to_string(&ours).unwrap();
        assert!(!text.contains(&plain), "{text}");
    }

    #[test]
    fn unkeyed_fingerprints_of_earlier_versions_are_forgotten() {
        let mut view: SpecView = serde_json::from_value(serde_json::json!({
            "command": "s",
            "environment": {"API_KEY": "sensitive:sha256:0123456789abcdef01234567"},
            "args": ["--token", "sensitive:sha256:aaaaaaaaaaaaaaaaaaaaaaaa"],
        }))
        .unwrap();
        assert!(
            is_fingerprint(&view["environment"]["API_KEY"]),
            "still redacted in output"
        );
        assert!(forget_legacy(&mut view));
        let text = serde_json::to_string(&view).unwrap();
        assert!(!text.contains("sha256") && !text.contains("0123456789abcdef"), "{text}");
        assert!(is_fingerprint(&view["args"][1]));
        assert!(!forget_legacy(&mut view), "nothing left to forget");
    }

    /// RFC 4231, test case 2 (a key shorter than a block, padded with zeros).
    #[test]
    fn hmac_matches_the_rfc_vectors() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // A 32-byte key padded with zeros is the same HMAC key as "Jefe".
        assert_eq!(
            hex(&hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
