//! DANE through the fleet (issue 11): the control plane validates TLSA records against the
//! signed nsd testbed and distributes them; a node whose resolver answers SERVFAIL for TLSA
//! (an active attacker's first move) still authenticates the peer with the fleet's set
//! (`source = "fleet"`), never past the set's signature validity, and never over a secure
//! answer or a secure denial it validated itself (CONFORMANCE J.59).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use osgate_tests::certs::{self, Pem};
use osgate_tests::controlplane::{ControlPlane, VIEWER_TOKEN, keygen, revision, wait_applied};
use osgate_tests::dns::{Signing, Testbed, Zone, Zones, spki_sha256_hex, unix_now};
use osgate_tests::faulty_dns::{Fault, FaultyDns, TLSA};
use osgate_tests::openssl::SServer;
use osgate_tests::{Io, Node, WAIT, eventually, peers, per_driver};
use serde_json::Value;

#[path = "fleet_dane/hostile.rs"]
mod hostile;

per_driver!(
    a_node_whose_tlsa_lookups_fail_authenticates_with_the_fleet_set,
    a_fleet_set_past_its_signatures_validity_is_not_used,
    a_tlsa_change_in_the_zone_reaches_the_node_within_one_refresh,
    a_secure_denial_the_node_validated_wins_over_the_fleet_set,
    a_secure_answer_the_node_validated_wins_over_the_fleet_set,
    a_dane_record_requiring_an_unknown_feature_is_nacked_and_not_used,
);

use hostile::a_dane_record_requiring_an_unknown_feature_is_nacked_and_not_used;

pub fn tlsa(port: u16, host: &str, data: &str) -> String {
    format!("_{port}._tcp.{host} IN TLSA 3 1 1 {data}")
}

/// The outbound listener to `peer` (opportunistic: DANE, not the policy, decides) and `dns`.
pub fn outbound(peer: &str, dns: &str) -> String {
    format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{dns}\n"
    )
}

pub fn peer_key(dir: &Path, stem: &str) -> Pem {
    certs::self_signed(dir, stem, "mx.test")
}

/// A control plane whose own resolver is `dns` (validating with its trust anchor), refreshing
/// every second.
fn control_plane(dir: &Path, dns: &Testbed) -> ControlPlane {
    let db = dir.join("cp.db");
    let section = format!("\n{}refresh_max_secs = 1\n", dns.config());
    ControlPlane::start(dir, db.to_str().unwrap(), &section)
}

/// Node `b` of `cp`, assigned `peer` (so the control plane resolves its TLSA), with `dns` as
/// its own resolver; started and in sync.
fn fleet_node(dir: &Path, cp: &ControlPlane, io: Io, peer: &str, dns: &str) -> Node {
    let key = keygen(dir, "b");
    let args = ["nodes", "register", "b", "--spki", &key.pin, "--peer", peer];
    let rev = revision(&cp.admin_json(&args));
    let section = cp.section(&key, &dir.join("b.lkg"), "");
    let mut node = Node::start(dir, io, "", &format!("{}{section}", outbound(peer, dns)));
    wait_applied(&mut node, rev);
    node
}

/// `peer`'s row of `osgatectl get capabilities PEER -o json` (as a viewer), once it has a
/// DANE entry.
fn capability(cp: &ControlPlane, peer: &str) -> Option<Value> {
    let out = cp.ctl(
        Some(VIEWER_TOKEN),
        &["-o", "json", "get", "capabilities", peer],
    );
    if out.code != 0 {
        return None;
    }
    let list: Value = serde_json::from_str(&out.stdout).ok()?;
    let row = list["capabilities"]
        .as_array()?
        .iter()
        .find(|r| r["peer"] == peer)?;
    (!row["dane"].is_null()).then(|| row.clone())
}

/// Waits until the control plane's set for `peer` is the secure `3 1 1 <digest>` and `node`
/// applied the revision carrying it; the capability row.
fn wait_fleet_set(cp: &ControlPlane, node: &mut Node, peer: &str, digest: &str) -> Value {
    let want = Value::from(format!("3 1 1 {digest}"));
    let mut row = None;
    eventually(
        &format!("the fleet's TLSA set for {peer} is {want}"),
        || {
            row = capability(cp, peer).filter(|r| {
                r["dane"]["status"] == "secure"
                    && r["dane"]["tlsa"].as_array() == Some(&vec![want.clone()])
            });
            row.is_some()
        },
    );
    wait_applied(node, revision(&cp.nodes()));
    row.unwrap()
}

/// The next outbound record: `[achieved, method, reason, dane]` and `source` as given; no
/// cleartext despite policy.
pub fn outcome(node: &mut Node, want: [&str; 4], source: Option<&str>) -> Value {
    let out = node.outcome("outbound");
    let got = ["achieved", "method", "reason", "dane"].map(|k| out[k].as_str());
    assert_eq!(
        (got, out["source"].as_str()),
        (want.map(Some), source),
        "{out}"
    );
    assert_eq!(
        node.metric("osgate_cleartext_despite_policy_total", &[]),
        0.0
    );
    out
}

/// Authenticated by DANE with the fleet's set, the node's own TLSA lookup having failed.
pub fn fleet_dane(node: &mut Node, digest: &str) {
    let want = ["authenticated", "dane", "none", "failed"];
    let out = outcome(node, want, Some("fleet"));
    assert_eq!(out["tlsa"], format!("3 1 1 {}…", &digest[..16]), "{out}");
}

/// `mx.test` at 127.0.0.1 with a DANE-EE record for `pem` at `port`, in the signed `test.`.
fn zones_naming(port: u16, pem: &Pem) -> Zones {
    Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    }
}

fn a_node_whose_tlsa_lookups_fail_authenticates_with_the_fleet_set(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = peer_key(dir.path(), "peer");
    let digest = spki_sha256_hex(&pem);
    let server = SServer::start(&pem, &[]);
    let peer = format!("mx.test:{}", server.addr.port());
    let dns = Testbed::start(dir.path(), &zones_naming(server.addr.port(), &pem));
    let faulty = FaultyDns::start(dns.addr, Fault::Servfail(TLSA));
    let blocked = dns.config_via(faulty.addr);

    // Alone, the node's lookup fails and it refuses, as the DANE suite shows.
    let alone_dir = dir.path().join("alone");
    std::fs::create_dir_all(&alone_dir).unwrap();
    let mut alone = Node::start(&alone_dir, io, "", &outbound(&peer, &blocked));
    assert_eq!(peers::call(alone.addr("outbound[0]"), b"SECRET\n"), b"");
    let refused = ["refused", "none", "dns-lookup-failed", "failed"];
    outcome(&mut alone, refused, None);
    drop(alone);

    // In a fleet whose control plane validated the set, the same node authenticates.
    let cp = control_plane(dir.path(), &dns);
    let mut node = fleet_node(dir.path(), &cp, io, &peer, &blocked);
    let row = wait_fleet_set(&cp, &mut node, &peer, &digest);
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 1.0);
    let before = faulty.faults();
    server.send_line(node.addr("outbound[0]"), "through the fleet");
    fleet_dane(&mut node, &digest);
    assert!(
        faulty.faults() > before,
        "the node's own TLSA lookup failed"
    );

    assert_capability_row(&row, &digest);
    let table = cp.ctl(Some(VIEWER_TOKEN), &["get", "capabilities"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let record = format!("3 1 1 {digest}");
    for part in [peer.as_str(), &record] {
        assert!(table.stdout.contains(part), "{part} in {}", table.stdout);
    }
}

/// `osgatectl get capabilities -o json`: the DANE status, the records, their base and
/// validity, when they were resolved, and the node that serves the peer.
fn assert_capability_row(row: &Value, digest: &str) {
    let dane = &row["dane"];
    let now = unix_now();
    let at = |k: &str| dane[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    assert_eq!(dane["status"], "secure", "{row}");
    assert_eq!(dane["tlsa"], serde_json::json!([format!("3 1 1 {digest}")]));
    assert_eq!(
        dane["base"].as_str().map(|b| b.trim_end_matches('.')),
        Some("mx.test")
    );
    assert!(at("valid_from") <= now && now < at("valid_until"), "{row}");
    assert!(
        at("resolved_at") <= now && at("resolved_at") >= at("valid_from"),
        "{row}"
    );
    assert!(dane["error"].is_null() || dane["error"] == "", "{row}");
    assert_eq!(row["nodes"], serde_json::json!(["b"]), "{row}");
}

/// Waits until the clock reaches `at` (unix seconds), for at most [`WAIT`] past it.
fn wait_until(at: u64) {
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(at.saturating_sub(unix_now()))
        + WAIT;
    while unix_now() < at {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not reach {at}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The TLSA records live in `_tcp.mx.test`, a zone of their own whose signatures run out
/// while the test runs; the address, in `test.`, stays valid, so after the expiry the node's
/// own lookup fails as before and only the fleet set's validity decides.
fn a_fleet_set_past_its_signatures_validity_is_not_used(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = peer_key(dir.path(), "peer");
    let digest = spki_sha256_hex(&pem);
    let server = SServer::start(&pem, &[]);
    let port = server.addr.port();
    let peer = format!("mx.test:{port}");
    // Long enough for a loaded machine to start a control plane and a node and connect once.
    let until = unix_now() + 25;
    let zones = Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        children: vec![Zone {
            label: "_tcp.mx",
            records: vec![format!("_{port} IN TLSA 3 1 1 {digest}")],
            signing: Some(Signing::default().expiring_at(until)),
        }],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let faulty = FaultyDns::start(dns.addr, Fault::Servfail(TLSA));
    let cp = control_plane(dir.path(), &dns);
    let mut node = fleet_node(dir.path(), &cp, io, &peer, &dns.config_via(faulty.addr));
    let row = wait_fleet_set(&cp, &mut node, &peer, &digest);
    assert_eq!(row["dane"]["valid_until"].as_u64(), Some(until), "{row}");
    assert!(unix_now() < until, "the machine was too slow for this test");
    server.send_line(node.addr("outbound[0]"), "while the signatures hold");
    fleet_dane(&mut node, &digest);

    wait_until(until);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let refused = ["refused", "none", "dns-lookup-failed", "failed"];
    outcome(&mut node, refused, None);
}

/// The zone's TTL (60 s) is longer than [`WAIT`]: only the control plane's
/// `refresh_max_secs = 1` brings the change to the node in time.
fn a_tlsa_change_in_the_zone_reaches_the_node_within_one_refresh(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let old = peer_key(dir.path(), "old");
    let new = peer_key(dir.path(), "new");
    let (old_digest, new_digest) = (spki_sha256_hex(&old), spki_sha256_hex(&new));
    let server = SServer::start(&old, &[]);
    let addr = server.addr;
    let peer = format!("mx.test:{}", addr.port());
    let mut dns = Testbed::start(dir.path(), &zones_naming(addr.port(), &old));
    let faulty = FaultyDns::start(dns.addr, Fault::Servfail(TLSA));
    let cp = control_plane(dir.path(), &dns);
    let mut node = fleet_node(dir.path(), &cp, io, &peer, &dns.config_via(faulty.addr));
    wait_fleet_set(&cp, &mut node, &peer, &old_digest);
    server.send_line(node.addr("outbound[0]"), "the old key");
    fleet_dane(&mut node, &old_digest);

    // The peer rotates: the zone names the new key, then the peer serves it.
    dns.republish(&zones_naming(addr.port(), &new).secure);
    wait_fleet_set(&cp, &mut node, &peer, &new_digest);
    drop(server);
    let server = SServer::start_on(addr, &new, &[]);
    server.send_line(node.addr("outbound[0]"), "the new key");
    fleet_dane(&mut node, &new_digest);

    // The old key is no longer vouched for.
    drop(server);
    let _old_again = SServer::start_on(addr, &old, &[]);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let refused = ["refused", "none", "tlsa-invalid", "failed"];
    outcome(&mut node, refused, Some("fleet"));
}

/// Two views of `mx.test`: the control plane's testbed publishes a DANE-EE record for the
/// peer's key, the node's own testbed (its own trust anchor) `node_zone`. Returns the node,
/// in sync with the fleet's set, and the peer.
fn two_views(
    dir: &Path,
    io: Io,
    node_zone: impl FnOnce(u16) -> Zones,
) -> (Node, SServer, Vec<Testbed>, ControlPlane) {
    let pem = peer_key(dir, "peer");
    let digest = spki_sha256_hex(&pem);
    let server = SServer::start(&pem, &[]);
    let peer = format!("mx.test:{}", server.addr.port());
    let cp_dir = dir.join("cp-view");
    let node_dir = dir.join("node-view");
    std::fs::create_dir_all(&cp_dir).unwrap();
    std::fs::create_dir_all(&node_dir).unwrap();
    let cp_dns = Testbed::start(&cp_dir, &zones_naming(server.addr.port(), &pem));
    let node_dns = Testbed::start(&node_dir, &node_zone(server.addr.port()));
    let cp = control_plane(dir, &cp_dns);
    let mut node = fleet_node(dir, &cp, io, &peer, &node_dns.config());
    wait_fleet_set(&cp, &mut node, &peer, &digest);
    (node, server, vec![cp_dns, node_dns], cp)
}

/// The peer withdrew its TLSA records and the node validated the denial itself: the fleet's
/// (older) set does not override it; the connection is what the ladder gives without DANE.
fn a_secure_denial_the_node_validated_wins_over_the_fleet_set(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, server, _dns, _cp) = two_views(dir.path(), io, |_| Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        ..Zones::default()
    });
    server.send_line(node.addr("outbound[0]"), "own denial");
    let encrypted = ["encrypted", "none", "certificate-not-trusted", "no-tlsa"];
    outcome(&mut node, encrypted, None);
}

/// The node's own secure answer names another key: it refuses, though the fleet's set would
/// have authenticated the peer.
fn a_secure_answer_the_node_validated_wins_over_the_fleet_set(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, _server, _dns, _cp) = two_views(dir.path(), io, |port| Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &"ab".repeat(32)),
        ],
        ..Zones::default()
    });
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let refused = ["refused", "none", "tlsa-invalid", "secure-usable"];
    outcome(&mut node, refused, None);
}
