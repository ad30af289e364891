//! `mcp-manager render kubernetes`: the manifests of `deploy/example`
//! (golden), validated with PyPI `kubernetes-validate --strict` against
//! Kubernetes 1.33 and the newest version it ships (installed by `.ci/run`);
//! no secret value in them; a server without an image is an error.

use std::process::Command;

use crate::service::BIN;

fn render(config: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(["render", "kubernetes", "--config"])
        .arg(config)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The Kubernetes example: outside `examples/`, which the README's first
/// command runs locally.
fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("example")
}

#[test]
fn the_kubernetes_example_renders_valid_manifests_without_secrets() {
    let out = render(&example(), &[("TZ_API_KEY", "a-secret-api-key-value")]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("a-secret-api-key-value") && !stderr.contains("a-secret-api-key-value"));
    assert!(
        stderr.contains("search: a http server reached over the network"),
        "{stderr}"
    );
    assert!(stderr.contains("environment `LOCAL_TZ` is not rendered"), "{stderr}");
    assert!(
        !stderr.contains("`TZ_API_KEY` is not rendered"),
        "it comes from the Secret: {stderr}"
    );
    insta::assert_snapshot!("kubernetes_example", stdout);

    let documents = yaml_rust2::YamlLoader::load_from_str(&stdout).unwrap();
    let kinds: Vec<String> = documents
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        ["Deployment/tasks", "Service/tasks", "Deployment/time", "Service/time"]
    );

    let Some(validate) = std::env::var("MCP_KUBERNETES_VALIDATE").ok().filter(|v| !v.is_empty()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "MCP_KUBERNETES_VALIDATE is not set (.ci/run installs it)"
        );
        eprintln!("skipping validation: MCP_KUBERNETES_VALIDATE is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, &stdout).unwrap();
    for version in [Some("1.33.0"), None] {
        let mut command = Command::new(&validate);
        command.arg("--strict");
        if let Some(version) = version {
            command.args(["--kubernetes-version", version]);
        }
        // And the RBAC the service needs.
        let out = command.arg(&file).arg(example().join("../rbac.yaml")).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubernetes-validate {version:?}: {said}");
        assert!(
            !said.contains("WARN") && !said.to_lowercase().contains("error"),
            "{said}"
        );
    }
}

#[test]
fn no_variable_of_the_shell_reaches_a_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mcp-manager.yaml"),
        "servers:\n  gh:\n    command: github-mcp\n    args: [--token, \"${GITHUB_TOKEN}\", --tz, \"${TZ:-UTC}\"]\n    kubernetes:\n      env_from_secret: {GITHUB_TOKEN: {name: gh, key: token}}\nmanager:\n  kubernetes: {image: i}\n",
    )
    .unwrap();
    let out = render(dir.path(), &[("GITHUB_TOKEN", "ghp_a-secret-token-value")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("ghp_a-secret-token-value") && !stderr.contains("ghp_a-secret-token-value"));
    // Kubernetes expands it from the container's env (the Secret); a default stays.
    let documents = yaml_rust2::YamlLoader::load_from_str(&stdout).unwrap();
    let args: Vec<&str> = documents[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        args[args.len() - 5..],
        ["github-mcp", "--token", "$(GITHUB_TOKEN)", "--tz", "UTC"]
    );
}

#[test]
fn a_stdio_server_without_an_image_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mcp-manager.yaml"),
        "servers:\n  tasks:\n    command: mcp-manager\n",
    )
    .unwrap();
    let out = render(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tasks: no image") && stderr.contains("manager.kubernetes.image"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mcp-manager.yaml:2:3: tasks"),
        "where it is written: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing half rendered");
}

/// Each object's spec-hash annotation covers what it renders: a change of the
/// Service alone (its type) changes the Service's hash and not the
/// Deployment's, and a change of the pod (its image) the other way round, so
/// drift of either one shows.
#[test]
fn each_object_hashes_its_own_spec() {
    let hashes = |kubernetes: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mcp-manager.yaml"),
            format!(
                "servers:\n  tasks:\n    command: mcp-manager\n    args: [task-runner]\n    kubernetes: {kubernetes}\n"
            ),
        )
        .unwrap();
        let out = render(dir.path(), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let documents = yaml_rust2::YamlLoader::load_from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let hash = |kind: &str| {
            documents
                .iter()
                .find(|d| d["kind"].as_str() == Some(kind))
                .and_then(|d| d["metadata"]["annotations"]["mcp-manager.io/spec-hash"].as_str())
                .unwrap()
                .to_string()
        };
        (hash("Deployment"), hash("Service"))
    };
    let base = hashes("{image: 'reg.example/mcp:1'}");
    let service_changed = hashes("{image: 'reg.example/mcp:1', service_type: NodePort}");
    let pod_changed = hashes("{image: 'reg.example/mcp:2'}");
    assert_eq!(base.0, service_changed.0);
    assert_ne!(base.1, service_changed.1);
    assert_ne!(base.0, pod_changed.0);
    assert_eq!(base.1, pod_changed.1);
}
