//! Policy files for `osgatectl apply`: the node config's `[[policy]]` tables, each with a
//! `name`, and `[[inbound]]` tables that set a listener's `clients` on the nodes. Checked here with the same validation the control plane and nodes run, so a
//! mistake is reported with its file and key before anything is sent.

use std::path::Path;

use osgate_proto::pb;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<Policy>,
    #[serde(default)]
    inbound: Vec<Inbound>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inbound {
    name: String,
    /// host:port, as the nodes' `[[inbound]] listen` says it.
    listener: String,
    clients: OneOrMany,
    #[serde(default)]
    requires: Vec<String>,
}

/// `clients = "fleet"` or `clients = ["fleet", "sha256/…"]`, as in the node config.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// What a policy file holds.
#[derive(Debug, Default)]
pub struct Loaded {
    pub policies: Vec<pb::Policy>,
    pub inbound: Vec<pb::InboundPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    name: String,
    #[serde(rename = "match")]
    selector: String,
    level: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    pins: Vec<String>,
    min_tls: Option<String>,
    allow_cleartext_fallback: Option<bool>,
    #[serde(default)]
    report_only: bool,
    /// Features a node must implement to apply the policy (nodes lacking one NACK it).
    #[serde(default)]
    requires: Vec<String>,
}

/// The policies of `path`, or an error naming the file, the key and the reason.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let deserializer = toml::Deserializer::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    let file: File = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| format!("{shown}: {}: {}", e.path(), e.inner().message()))?;
    let inbound = file
        .inbound
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let policy = pb::InboundPolicy {
                name: p.name,
                listener: p.listener,
                clients: match p.clients {
                    OneOrMany::One(one) => vec![one],
                    OneOrMany::Many(many) => many,
                },
                requires: match p.requires.is_empty() {
                    true => vec![osgate_proto::features::INBOUND_CLIENTS.into()],
                    false => p.requires,
                },
            };
            osgate_proto::validate::inbound_fields(&policy)
                .map(|_| policy)
                .map_err(|e| format!("{shown}: inbound[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policies = policies(&shown.to_string(), file.policy)?;
    Ok(Loaded { policies, inbound })
}

fn policies(shown: &str, policies: Vec<Policy>) -> Result<Vec<pb::Policy>, String> {
    policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let policy = pb::Policy {
                name: p.name,
                r#match: p.selector,
                level: p.level,
                methods: p.methods,
                pins: p.pins,
                min_tls: p.min_tls.unwrap_or_default(),
                allow_cleartext_fallback: p.allow_cleartext_fallback,
                report_only: p.report_only,
                requires: match p.requires.is_empty() {
                    true => vec!["policy.v1".into()],
                    false => p.requires,
                },
            };
            osgate_proto::validate::policy_fields(&policy)
                .map(|_| policy)
                .map_err(|e| format!("{shown}: policy[{i}]: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_example_policy_file_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/controlplane/fleet-policy.toml");
        let loaded = load(&example).unwrap();
        assert_eq!(loaded.policies.len(), 2);
        assert_eq!(loaded.policies[0].methods, ["fleet"]);
        assert_eq!(loaded.inbound.len(), 1);
        assert_eq!(loaded.inbound[0].clients, ["fleet"]);
    }

    #[test]
    fn a_bad_policy_is_named_with_its_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[[policy]]\nname = \"a\"\nmatch = \"*\"\nlevel = \"encrypt\"\n[[policy]]\nname = \"b\"\nmatch = \"*\"\nlevel = \"loud\"\n").unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            error.contains("p.toml: policy[1]: policy/b: level"),
            "{error}"
        );
    }
}
