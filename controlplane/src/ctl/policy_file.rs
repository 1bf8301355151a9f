//! Policy files for `osgatectl apply`: the node config's `[[policy]]` tables, each with a
//! `name`. Checked here with the same validation the control plane and nodes run, so a
//! mistake is reported with its file and key before anything is sent.

use std::path::Path;

use osgate_api::pb;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: Vec<Policy>,
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
pub fn load(path: &Path) -> Result<Vec<pb::Policy>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let deserializer = toml::Deserializer::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    let file: File = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| format!("{shown}: {}: {}", e.path(), e.inner().message()))?;
    file.policy
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
            osgate_api::validate::policy_fields(&policy)
                .map(|_| policy)
                .map_err(|e| format!("{shown}: policy[{i}]: {e}"))
        })
        .collect()
}
