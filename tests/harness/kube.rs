//! deploy/kubernetes as the tests see it: the tree with the operator's files stubbed, rendered
//! by a real kustomize into JSON documents, and the files a pod's volumes mount.
//! kustomize (or kubectl's built-in one) and kubernetes-validate must be installed: a missing
//! tool fails the test (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use crate::controlplane::keygen;

/// The overlays under deploy/kubernetes/overlays.
pub const OVERLAYS: [&str; 2] = ["postgres", "sqlite"];

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name` on PATH, or the file named by the environment variable `var`.
pub fn tool(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `kustomize build DIR`, or kubectl's built-in `kubectl kustomize DIR`.
pub fn kustomize(dir: &Path) -> String {
    let mut command = match (
        tool("OSGATE_KUSTOMIZE", "kustomize"),
        tool("OSGATE_KUBECTL", "kubectl"),
    ) {
        (Some(kustomize), _) => {
            let mut c = Command::new(kustomize);
            c.arg("build");
            c
        }
        (None, Some(kubectl)) => {
            let mut c = Command::new(kubectl);
            c.arg("kustomize");
            c
        }
        (None, None) => {
            panic!("neither kustomize nor kubectl is installed (.ci/run checks for them)")
        }
    };
    let out = command.arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kubernetes-validate, from PATH or `OSGATE_KUBERNETES_VALIDATE`.
pub fn validator() -> PathBuf {
    tool("OSGATE_KUBERNETES_VALIDATE", "kubernetes-validate")
        .expect("kubernetes-validate is not installed (.ci/run installs it from PyPI)")
}

/// The Python that runs kubernetes-validate: it has PyYAML, a dependency of the validator.
pub fn validator_python() -> PathBuf {
    let script = std::fs::read_to_string(validator()).unwrap();
    let shebang = script.lines().next().unwrap_or_default();
    let python = shebang
        .strip_prefix("#!")
        .expect("kubernetes-validate is a Python script");
    PathBuf::from(python.split_whitespace().next().unwrap())
}

/// A copy of deploy/kubernetes with what the operator makes by hand: keys from
/// `osgate keygen` and the database password.
pub fn stubbed_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("deploy/kubernetes");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let keys = dir.path().join("kubernetes/base/keys");
    for stem in ["node", "controlplane", "admin"] {
        keygen(&keys, stem);
    }
    let password = dir
        .path()
        .join("kubernetes/overlays/postgres/postgres.password");
    std::fs::write(password, "test-password-not-for-use\n").unwrap();
    dir
}

/// The overlay rendered as YAML text.
pub fn render(tree: &Path, overlay: &str) -> String {
    kustomize(&tree.join("kubernetes/overlays").join(overlay))
}

/// The YAML stream as JSON documents.
pub fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(validator_python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the rendered YAML does not parse");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// `overlay` of a freshly stubbed tree, rendered, as JSON documents.
pub fn rendered(overlay: &str) -> Vec<Value> {
    let tree = stubbed_tree();
    documents(&render(tree.path(), overlay))
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered overlay"))
}

/// The DaemonSets, Deployments and StatefulSets.
pub fn workloads(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| {
        ["DaemonSet", "Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap())
    })
}

/// A pod spec's containers, then its init containers.
pub fn containers(pod: &Value) -> Vec<&Value> {
    let mut all: Vec<&Value> = pod["containers"].as_array().unwrap().iter().collect();
    if let Some(init) = pod["initContainers"].as_array() {
        all.extend(init);
    }
    all
}

/// The pod volume behind `mount` (`None`: a StatefulSet's volume claim template).
pub fn volume<'a>(pod: &'a Value, mount: &Value) -> Option<&'a Value> {
    pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])
}

/// Writes the files a container sees from its ConfigMap and Secret volumes under `root`.
pub fn lay_out_mounts(docs: &[Value], pod: &Value, container: &Value, root: &Path) {
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = volume(pod, mount).unwrap();
        let (source, decode) = if let Some(name) = volume["configMap"]["name"].as_str() {
            (find(docs, "ConfigMap", name), false)
        } else if let Some(name) = volume["secret"]["secretName"].as_str() {
            (find(docs, "Secret", name), true)
        } else {
            continue;
        };
        let dir = root.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for (key, value) in source["data"].as_object().unwrap() {
            let text = value.as_str().unwrap();
            let bytes = match decode {
                // kustomize wraps base64 at 70 columns.
                true => {
                    let text: String = text.split_whitespace().collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap()
                }
                false => text.as_bytes().to_vec(),
            };
            std::fs::write(dir.join(key), bytes).unwrap();
        }
    }
}

/// The file after `-c` in the container's arguments.
pub fn config_arg(container: &Value) -> String {
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "-c")
        .expect("a -c FILE argument");
    args[i + 1].to_owned()
}

/// Pod-level settings apply unless the container overrides them.
pub fn effective<'a>(pod: &'a Value, container: &'a Value, key: &str) -> &'a Value {
    match &container["securityContext"][key] {
        Value::Null => &pod["securityContext"][key],
        own => own,
    }
}
