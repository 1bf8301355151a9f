//! Regressions of the security review (issue 8) that cross the node's evidence sources:
//! operator pins against DANE, fleet revocations on first contact, and the alarm counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use osgate_tests::certs::{self, pin_of};
use osgate_tests::controlplane::{ControlPlane, keygen, revision, wait_applied};
use osgate_tests::dns::{Testbed, Zones, spki_sha256_hex};
use osgate_tests::node::tofu_store;
use osgate_tests::openssl::SServer;
use osgate_tests::peers;
use osgate_tests::{Io, Node, per_driver};

per_driver!(
    alarm_counters_are_exported_at_zero_from_start,
    a_local_operator_pin_outranks_dane_and_dane_never_rewrites_it,
    a_key_the_fleet_revoked_is_refused_on_first_contact,
    dane_ta_accepts_the_original_name_behind_a_cname,
);

const ALARMS: [&str; 3] = [
    "osgate_cleartext_despite_policy_total",
    "osgate_encrypted_despite_authentication_expected_total",
    "osgate_downgrade_suspected_total",
];

fn assert_no_alarm(node: &Node) {
    for alarm in ALARMS {
        assert_eq!(node.metric(alarm, &[]), 0.0, "{alarm}");
    }
}

/// CONFORMANCE I.53: an `increase()` alert needs the series before the first event.
fn alarm_counters_are_exported_at_zero_from_start(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let body = "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:9\"\n";
    let node = Node::start(dir.path(), io, "", body);
    let text = node.scrape();
    for alarm in ALARMS {
        assert!(
            text.lines().any(|l| l == format!("{alarm} 0")),
            "{alarm} missing:\n{text}"
        );
    }
    assert!(
        text.contains("osgate_tofu_checks_total{decision=\"key-changed\"} 0"),
        "{text}"
    );
}

/// Issue 8.8 / CONFORMANCE I.55: `osgate pins add` is an operator pin, above DANE. A peer
/// whose key matches its secure TLSA record but not the operator's pin is refused, and the
/// operator's pin is never rewritten by DANE.
fn a_local_operator_pin_outranks_dane_and_dane_never_rewrites_it(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "peer", "mx.test");
    let operator = certs::self_signed(dir.path(), "operator", "mx.test");
    let server = SServer::start(&pem, &[]);
    let port = server.addr.port();
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(&pem)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let store = dir.path().join("pins");
    let tofu = tofu_store(&store);
    let peer = format!("mx.test:{port}");
    pins(&store, &["add", &peer, &pin_of(&operator)]);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{}\n{tofu}",
        dns.config()
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("pin-mismatch")),
        "{out}"
    );
    let shown = pins(&store, &["show", &peer]);
    assert!(shown.contains(&pin_of(&operator)), "{shown}");
    assert!(shown.contains("approved"), "{shown}");

    // The operator pins the key DANE names: authenticated by the pin, not by DANE.
    pins(&store, &["add", &peer, &pin_of(&pem)]);
    server.send_line(node.addr("outbound[0]"), "pinned");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["method"].as_str()),
        (Some("authenticated"), Some("pinned")),
        "{out}"
    );
    assert_no_alarm(&node);
}

fn pins(store: &Path, args: &[&str]) -> String {
    let mut all = vec!["pins", "--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = std::process::Command::new(osgate_tests::node::osgate_bin())
        .args(&all)
        .output()
        .unwrap();
    assert!(output.status.success(), "{all:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// CONFORMANCE D.29: a key an operator revoked fleet-wide is refused by a node that never
/// met the peer (before the fix it was learned as a TOFU pin and carried `encrypted`).
fn a_key_the_fleet_revoked_is_refused_on_first_contact(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), dir.path().join("cp.db").to_str().unwrap(), "");
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let key = keygen(dir.path(), "n");
    let registered = cp.register("n", &key, &[]);
    let tofu = tofu_store(&dir.path().join("n.pins"));
    let section = cp.section(&key, &dir.path().join("n.lkg"), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"opportunistic\"\n\n{tofu}\n{section}",
        server.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    wait_applied(&mut node, registered);
    let peer = server.addr.to_string();
    let revoked = revision(&cp.admin_json(&["pins", "revoke", &peer, &pin_of(&pem)]));
    wait_applied(&mut node, revoked);

    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("pin-revoked")),
        "{out}"
    );
    let learned = pins(&dir.path().join("n.pins"), &["list"]);
    assert!(
        !learned.contains(&pin_of(&pem)),
        "a revoked key is never learned: {learned}"
    );
    assert_no_alarm(&node);
}

/// RFC 7672 §3.2.2: with DANE-TA the name checked is the TLSA base domain (the CNAME target
/// here), and the original next-hop name is accepted too. A certificate for neither is refused.
fn dane_ta_accepts_the_original_name_behind_a_cname(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::new(dir.path());
    let anchor = certs::Pem {
        cert: ca.cert.clone(),
        key: ca.cert.clone(),
    };
    let chain = ["-cert_chain", ca.cert.to_str().unwrap()];
    let original = SServer::start(&ca.leaf(dir.path(), "alias", "alias.test", false), &chain);
    let port = original.addr.port();
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            "alias IN CNAME mx".into(),
            format!("_{port}._tcp.mx IN TLSA 2 1 1 {}", spki_sha256_hex(&anchor)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"alias.test:{port}\"\npolicy = \"opportunistic\"\n\n{}\n[tofu]\nmode = \"off\"\nratchet_hours = 0\n",
        dns.config()
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    original.send_line(node.addr("outbound[0]"), "original name");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["method"].as_str()),
        (Some("authenticated"), Some("dane")),
        "{out}"
    );
    drop(original);

    let stranger = ca.leaf(dir.path(), "stranger", "stranger.test", false);
    let _server = SServer::start_on(([127, 0, 0, 1], port).into(), &stranger, &chain);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("certificate-host-mismatch")),
        "{out}"
    );
    assert_no_alarm(&node);
}
