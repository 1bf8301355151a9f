//! Files an operator keeps: `get policies -o toml` round trips, `tlsa` records.

use std::path::Path;
use std::process::Command;

use osgate_tests::certs::openssl_spki_sha256;
use osgate_tests::controlplane::{ControlPlane, keygen, revision};
use osgate_tests::node::bin;
use osgate_tests::per_store;
use osgate_tests::postgres::{Store, database};
use osgate_tests::process::stdout_of;

use super::ADMIN;

per_store!(get_policies_as_toml_applies_back_as_a_no_op);

/// `[[policy]]` tables using every field a policy file has.
const EVERY_FIELD: &str = r#"
[[policy]]
name = "fleet-in"
match = "127.0.0.1:7443"
level = "authenticate"
methods = ["fleet", "pinned"]
pins = ["sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
min_tls = "1.3"
report_only = true
requires = ["policy.v1"]

[[policy]]
name = "lab-fallback"
match = "10.0.0.0/8"
level = "opportunistic"
allow_cleartext_fallback = false

[[policy]]
name = "trial"
match = "*"
level = "encrypt"
"#;

fn get_policies_as_toml_applies_back_as_a_no_op(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let rev = revision(&cp.apply(dir.path(), EVERY_FIELD, &[]).json());
    let before = cp.admin_json(&["get", "policies"]);

    let toml = cp.ctl(Some(ADMIN), &["get", "policies", "-o", "toml"]);
    assert_eq!(toml.code, 0, "{}", toml.stderr);
    let again = cp.apply(dir.path(), &toml.stdout, &[]).json();
    assert_eq!(revision(&again), rev, "{again}");
    let changes = again["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{again}");
    assert!(
        changes.iter().all(|c| c["action"] == "unchanged"),
        "{again}"
    );
    assert_eq!(cp.admin_json(&["get", "policies"]), before);
    let twice = cp.ctl(Some(ADMIN), &["get", "policies", "-o", "toml"]);
    assert_eq!(twice.stdout, toml.stdout);

    let refused = cp.ctl(Some(ADMIN), &["get", "nodes", "-o", "toml"]);
    assert_eq!(refused.code, 64);
    assert!(
        refused.stderr.contains("-o toml is for `get policies`"),
        "{}",
        refused.stderr
    );
}

#[test]
fn tlsa_prints_the_spki_sha256_of_the_current_and_next_key() {
    let dir = tempfile::tempdir().unwrap();
    let current = keygen(dir.path(), "controlplane");
    let next = keygen(dir.path(), "controlplane-next");
    let config = dir.path().join("cp.toml");
    let mut text = format!(
        "[controlplane]\nlisten = \"0.0.0.0:7400\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        current.cert.display(),
        current.key.display()
    );
    let tlsa = |config: &Path, extra: &[&str]| {
        let mut command = Command::new(bin("osgate-controlplane"));
        stdout_of(command.args(["tlsa", "-c"]).arg(config).args(extra))
    };
    std::fs::write(&config, &text).unwrap();
    let hash = openssl_spki_sha256(&current.cert);
    assert_eq!(
        tlsa(&config, &[]),
        format!("_7400._tcp.localhost. IN TLSA 3 1 1 {hash} ; current key\n")
    );
    text.push_str(&format!(
        "next_certificate = \"{}\"\nnext_private_key = \"{}\"\n",
        next.cert.display(),
        next.key.display()
    ));
    std::fs::write(&config, &text).unwrap();
    let next_hash = openssl_spki_sha256(&next.cert);
    assert_ne!(hash, next_hash);
    assert_eq!(
        tlsa(&config, &["--name", "cp.example.net."]),
        format!(
            "_7400._tcp.cp.example.net. IN TLSA 3 1 1 {hash} ; current key\n\
             _7400._tcp.cp.example.net. IN TLSA 3 1 1 {next_hash} ; next key\n"
        )
    );
}
