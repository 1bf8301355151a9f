//! deploy/kubernetes: each overlay renders with a real kustomize and validates against the
//! Kubernetes schemas (kubernetes-validate, offline); the configs in its ConfigMaps pass the
//! real `check-config` with the pod's files laid out as the kubelet mounts them; the pods are
//! unprivileged and probed; and the node's seccomp profile lets io_uring through (without it,
//! `io = "auto"` runs epoll). A missing tool fails the test: `.ci/run` installs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use osgate_tests::kube::{
    OVERLAYS, config_arg, containers, documents, effective, find, lay_out_mounts, render, rendered,
    repo, stubbed_tree, validator, volume, workloads,
};
use osgate_tests::node::{bin, free_port};
use osgate_tests::openssl::s_client;
use osgate_tests::peers::{self, Server};
use osgate_tests::{Node, certs};

#[test]
fn every_overlay_validates_against_the_kubernetes_schemas() {
    let tree = stubbed_tree();
    for overlay in OVERLAYS {
        let file = tree.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render(tree.path(), overlay)).unwrap();
        let out = Command::new(validator())
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{overlay}: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            documents(&std::fs::read_to_string(&file).unwrap()).len(),
            "{report}"
        );
    }
}

#[test]
fn every_config_in_the_configmaps_passes_check_config_where_the_pod_mounts_it() {
    let mut checked = Vec::new();
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        for workload in workloads(&docs) {
            let pod = &workload["spec"]["template"]["spec"];
            for container in pod["containers"].as_array().unwrap() {
                let program = container["command"][0].as_str().unwrap_or_default();
                if !program.starts_with("osgate") {
                    continue;
                }
                let root = tempfile::tempdir().unwrap();
                lay_out_mounts(&docs, pod, container, root.path());
                let config = root
                    .path()
                    .join(config_arg(container).trim_start_matches('/'));
                let out = Command::new(bin(program))
                    .arg("check-config")
                    .arg(&config)
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{overlay}: {program}: {err}");
                checked.push(format!("{overlay}/{program}"));
            }
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "postgres/osgate",
            "postgres/osgate-controlplane",
            "sqlite/osgate",
            "sqlite/osgate-controlplane"
        ]
    );
}

#[test]
fn sqlite_runs_one_control_plane_on_a_volume_and_postgres_several_on_the_database() {
    let sqlite = rendered("sqlite");
    let cp = find(&sqlite, "Deployment", "osgate-controlplane");
    assert_eq!(cp["spec"]["replicas"], 1);
    assert_eq!(cp["spec"]["strategy"]["type"], "Recreate");
    let volumes = cp["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    let claim = data["persistentVolumeClaim"]["claimName"].as_str().unwrap();
    find(&sqlite, "PersistentVolumeClaim", claim);
    assert!(data.get("emptyDir").is_none(), "{data}");

    let postgres = rendered("postgres");
    let cp = find(&postgres, "Deployment", "osgate-controlplane");
    assert!(cp["spec"]["replicas"].as_u64().unwrap() >= 2);
    find(&postgres, "StatefulSet", "osgate-postgres");
    find(&postgres, "PodDisruptionBudget", "osgate-controlplane");
    let container = &cp["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    let password = env.iter().find(|e| e["name"] == "PGPASSWORD").unwrap();
    assert!(password["valueFrom"]["secretKeyRef"]["name"].is_string());
    let config = postgres
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["controlplane.toml"].is_string())
        .unwrap();
    let toml = config["data"]["controlplane.toml"].as_str().unwrap();
    assert!(toml.contains("database = \"postgres://osgate@osgate-postgres:5432/osgate\""));
}

#[test]
fn containers_run_unprivileged_read_only_and_images_name_no_registry() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        for workload in workloads(&docs) {
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false);
            for container in containers(pod) {
                let name = format!("{overlay}: {}", container["name"]);
                let sc = &container["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(
                    effective(pod, container, "seccompProfile")["type"].is_string(),
                    "{name}"
                );
                let image = container["image"].as_str().unwrap();
                let host = image.split_once('/').map(|(h, _)| h);
                assert!(
                    !host.is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost"),
                    "{name}: {image} names a registry host"
                );
                if container["name"] == "state-owner" {
                    // The one root container: chown of the hostPath state folder, nothing else.
                    assert_eq!(
                        sc["capabilities"]["add"],
                        serde_json::json!(["CHOWN", "FOWNER"])
                    );
                    continue;
                }
                assert_eq!(effective(pod, container, "runAsNonRoot"), true, "{name}");
                for mount in container["volumeMounts"].as_array().unwrap() {
                    let Some(volume) = volume(pod, mount) else {
                        continue;
                    };
                    if volume["configMap"].is_object() || volume["secret"].is_object() {
                        assert_eq!(mount["readOnly"], true, "{name}: {}", mount["name"]);
                    }
                }
            }
        }
    }
}

fn http_probe_paths(container: &Value) -> (String, String) {
    let path = |probe: &str| {
        container[probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (path("livenessProbe"), path("readinessProbe"))
}

/// `[node] drain_timeout_ms` of the rendered node config (its default when unset).
fn drain_timeout_ms(docs: &[Value]) -> u64 {
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["node.toml"].is_string())
        .unwrap();
    let node: toml::Table = config["data"]["node.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    node.get("node")
        .and_then(|n| n.get("drain_timeout_ms"))
        .map_or(25_000, |v| v.as_integer().unwrap().try_into().unwrap())
}

#[test]
fn node_and_control_plane_are_probed_and_drain_within_their_grace_period() {
    let docs = rendered("sqlite");
    let node = find(&docs, "DaemonSet", "osgate-node");
    let pod = &node["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let osgate = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "osgate")
        .unwrap();
    assert_eq!(http_probe_paths(osgate), ("/live".into(), "/ready".into()));
    assert_eq!(
        osgate["securityContext"]["seccompProfile"]["type"],
        "Localhost"
    );
    let profile = osgate["securityContext"]["seccompProfile"]["localhostProfile"]
        .as_str()
        .unwrap();
    let file = Path::new(profile).file_name().unwrap();
    assert!(
        repo()
            .join("deploy/kubernetes/seccomp")
            .join(file)
            .is_file(),
        "{profile}"
    );
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    let drain = drain_timeout_ms(&docs);
    assert!(
        grace_ms >= drain + 5_000,
        "grace {grace_ms} ms, drain {drain} ms"
    );
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(state["hostPath"]["path"], "/var/lib/osgate");

    let cp = find(&docs, "Deployment", "osgate-controlplane");
    let pod = &cp["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        http_probe_paths(container),
        ("/live".into(), "/ready".into())
    );
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > pre_stop + 10);
}

#[test]
fn images_are_the_workspace_version() {
    let docs = rendered("postgres");
    let expected = format!("osgate:{}", env!("CARGO_PKG_VERSION"));
    let images: Vec<String> = workloads(&docs)
        .flat_map(|w| containers(&w["spec"]["template"]["spec"]))
        .map(|c| c["image"].as_str().unwrap().to_owned())
        .filter(|i| i.starts_with("osgate"))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(images.iter().all(|i| *i == expected), "{images:?}");
}

const IO_URING: &str = "io_uring_setup,io_uring_enter,io_uring_register";

/// A node on an inbound listener (cleartext allowed) to `backend`, started under the node's
/// seccomp profile the way runc applies it, less the syscalls in `block`.
fn node_under_profile(dir: &Path, backend: std::net::SocketAddr, block: Option<&str>) -> Node {
    let pem = certs::self_signed(dir, "node", "gw.test");
    let metrics = free_port();
    let config = dir.join("node.toml");
    let body = format!(
        "[node]\nio = \"auto\"\nworkers = 2\nmetrics_listen = \"{metrics}\"\n\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"allow\"\n\n[tofu]\nmode = \"off\"\nratchet_hours = 0\n\n[dns]\ndane = false\n",
        pem.cert.display(),
        pem.key.display()
    );
    std::fs::write(&config, body).unwrap();
    let profile = repo().join("deploy/kubernetes/seccomp/osgate-io-uring.json");
    let profile = profile.to_str().unwrap();
    let mut args = vec![profile];
    if let Some(names) = block {
        args.extend(["--block", names]);
    }
    args.push("--");
    let launcher = repo().join("tests/harness/seccomp_exec.py");
    let mut command = Node::command_via(launcher.to_str().unwrap(), &args, &config);
    // The default state_dir: keeps the first-start marker out of /var/lib.
    command.env("STATE_DIRECTORY", dir.join("state"));
    Node::launch(command, config, Some(metrics))
}

/// The node under the profile relays a TLS and a plain client, with outcome records.
/// The plain client goes first: it gives up after `WAIT` where a refused syscall stalls the
/// node, and s_client would wait for ever.
fn serves_under_the_profile(node: &mut Node, backend: &Server<Vec<u8>>) {
    assert_eq!(
        peers::call(node.addr("inbound[0]"), b"PLAIN"),
        b"got 5 bytes"
    );
    assert_eq!(backend.result(), b"PLAIN");
    assert_eq!(node.outcome("inbound")["achieved"], "cleartext");
    let out = s_client(
        node.addr("inbound[0]"),
        &["-servername", "gw.test"],
        b"hello",
    );
    assert_eq!(out, "got 5 bytes");
    assert_eq!(backend.result(), b"hello");
    assert_eq!(node.outcome("inbound")["achieved"], "encrypted");
}

/// The line where `io = "auto"` says which driver it chose, and why.
fn auto_choice(node: &mut Node) -> Value {
    node.wait_for(|v| {
        v["target"] == "osgate::node"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("io = auto:"))
    })
}

#[test]
fn under_the_seccomp_profile_auto_picks_io_uring_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(5));
    let mut node = node_under_profile(dir.path(), backend.addr, None);
    assert_eq!(auto_choice(&mut node)["driver"], "uring");
    serves_under_the_profile(&mut node, &backend);
}

/// The runtime's default profile does not allow io_uring: auto detects it and runs epoll.
#[test]
fn without_io_uring_in_the_profile_auto_picks_epoll_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(5));
    let mut node = node_under_profile(dir.path(), backend.addr, Some(IO_URING));
    let choice = auto_choice(&mut node);
    assert_eq!(choice["driver"], "epoll");
    // EPERM from the filter, as under the runtime's default profile.
    let error = choice["error"].as_str().unwrap();
    assert!(error.contains("Operation not permitted"), "{choice}");
    serves_under_the_profile(&mut node, &backend);
}
