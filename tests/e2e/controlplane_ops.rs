//! Operating the control plane (issue #9): SIGTERM drain with nodes connected, gRPC health
//! and `/ready`, systemd notifications, backup and restore, the snapshot before a schema
//! migration, `get policies -o toml` round trips, and `tlsa`. Real control-plane, node,
//! PostgreSQL, Python sqlite3 and OpenSSL processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "controlplane_ops/drain.rs"]
mod drain;
#[path = "controlplane_ops/files.rs"]
mod files;
#[path = "controlplane_ops/store.rs"]
mod store;

use osgate_tests::controlplane::ControlPlane;

/// The drain bound of these control planes: long enough to show that they exit sooner.
const DRAIN: &str = "drain_timeout_ms = 15000";
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

const ADMIN: &str = osgate_tests::controlplane::ADMIN_TOKEN;

fn deny(name: &str) -> String {
    format!("[[policy]]\nname = \"{name}\"\nmatch = \"192.0.2.1\"\nlevel = \"deny\"\n")
}

fn policy_names(cp: &ControlPlane) -> Vec<String> {
    let list = cp.admin_json(&["get", "policies"]);
    list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}
