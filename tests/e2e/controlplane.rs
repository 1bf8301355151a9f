//! The fleet end to end: a real control plane (SQLite), osgatectl, and real nodes carrying
//! traffic to plain TCP servers and OpenSSL peers (CONFORMANCE G, D.28).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use osgate_tests::certs::{self, pin_of};
use osgate_tests::controlplane::{
    ADMIN_TOKEN, ControlPlane, Key, VIEWER_TOKEN, keygen, revision, wait_applied,
};
use osgate_tests::node::tofu_store;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::per_store;
use osgate_tests::postgres::{Store, database};
use osgate_tests::{Io, Node, eventually};

per_store!(
    a_policy_applied_with_osgatectl_changes_what_the_next_connection_gets,
    an_update_the_node_cannot_apply_is_nacked_and_traffic_flows_on_the_last_known_good,
    a_bad_policy_in_a_batch_is_rejected_by_name_and_nothing_of_the_batch_is_stored,
    a_node_restarted_while_the_control_plane_is_down_serves_its_persisted_snapshot,
    acknowledged_writes_survive_kill_9_of_the_control_plane,
    no_token_gets_nothing_and_a_viewer_cannot_write,
    dangerous_changes_show_their_blast_radius_and_need_confirmation,
    a_learned_pin_spreads_only_after_corroboration_or_approval,
    an_approved_pin_is_an_operator_pin_for_every_node,
    conflicting_pins_are_kept_side_by_side_and_neither_spreads,
    fleet_node_keys_authenticate_node_to_node_without_a_ca,
    an_enrolment_token_registers_a_node_once,
    a_silently_dead_stream_is_detected_and_learned_pins_are_reported_later,
);

/// A node of `cp` named `name`, registered, with one outbound listener to `peer` and `extra`
/// config; started and in sync with the control plane.
fn fleet_node(
    dir: &Path,
    cp: &ControlPlane,
    name: &str,
    io: Io,
    peer: SocketAddr,
    extra: &str,
) -> (Node, Key) {
    let key = keygen(dir, name);
    // Assigned the peer it serves: its pin reports count for that peer only.
    let rev = cp.register_serving(name, &key, &[], &[peer]);
    let section = cp.section(&key, &dir.join(format!("{name}.lkg")), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{extra}\n{section}"
    );
    let mut node = Node::start(dir, io, "", &body);
    wait_applied(&mut node, rev);
    (node, key)
}

fn outcome_of(node: &mut Node) -> (String, String, String, String) {
    let out = node.outcome("outbound");
    let field = |k: &str| out[k].as_str().unwrap_or("").to_owned();
    (
        field("achieved"),
        field("method"),
        field("reason"),
        field("policy"),
    )
}

fn deny(name: &str, selector: &str) -> String {
    format!("[[policy]]\nname = \"{name}\"\nmatch = \"{selector}\"\nlevel = \"deny\"\n")
}

fn a_policy_applied_with_osgatectl_changes_what_the_next_connection_gets(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let (mut node, _) = fleet_node(dir.path(), &cp, "n1", Io::Uring, server.addr, "");

    assert_eq!(peers::call(node.addr("outbound[0]"), b"before"), b"before");
    assert_eq!(outcome_of(&mut node).0, "cleartext");

    let reply = cp
        .apply(dir.path(), &deny("no-lab", "127.0.0.1"), &[])
        .json();
    let rev = revision(&reply);
    assert_eq!(reply["changes"][0]["action"], "created");
    wait_applied(&mut node, rev);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"after"), b"");
    let (achieved, _, reason, policy) = outcome_of(&mut node);
    assert_eq!(
        (achieved.as_str(), reason.as_str()),
        ("refused", "policy-deny")
    );
    assert_eq!(
        policy,
        format!("cp:no-lab@{rev}"),
        "the record names the rule and revision"
    );

    // The node logs the update before its ACK reaches the control plane.
    eventually("the control plane has the node's ACK", || {
        cp.nodes()["nodes"][0]["acked_revision"].as_u64() == Some(rev)
    });
    // The node reports what its connections got.
    let count = |achieved: &str, reason: &str| {
        cp.nodes()["nodes"][0]["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| {
                o["direction"] == "outbound" && o["achieved"] == achieved && o["reason"] == reason
            })
            .map(|o| o["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    eventually("the node reported its outcomes", || {
        count("cleartext", "tls-handshake-failed") == 1 && count("refused", "policy-deny") == 1
    });
    assert_eq!(node.metric("osgate_controlplane_revision", &[]), rev as f64);

    let deleted = revision(&cp.admin_json(&["delete", "no-lab"]));
    wait_applied(&mut node, deleted);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"again"), b"again");
    let audit = cp.admin_json(&["get", "audit"]);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["nodes.register", "policies.apply", "policies.delete"]
    );
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["who"] == "admin:ops" && e["at"].as_u64() > Some(0))
    );
}

fn an_update_the_node_cannot_apply_is_nacked_and_traffic_flows_on_the_last_known_good(
    store: Store,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let (mut node, _) = fleet_node(dir.path(), &cp, "n1", Io::Epoll, server.addr, "");
    let good = revision(
        &cp.apply(dir.path(), &deny("deny-other", "10.0.0.0/8"), &[])
            .json(),
    );
    wait_applied(&mut node, good);

    // A policy that needs a feature this node does not implement: the control plane stores
    // it (other nodes may have it), this node must not apply it with the field ignored.
    let future = "[[policy]]\nname = \"needs-ct\"\nmatch = \"127.0.0.1\"\nlevel = \"deny\"\nrequires = [\"policy.require-ct\"]\n";
    let bad = revision(&cp.apply(dir.path(), future, &[]).json());
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");

    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"still flowing"),
        b"still flowing"
    );
    let (achieved, _, _, _) = outcome_of(&mut node);
    assert_eq!(
        achieved, "cleartext",
        "the refused deny rule is not in force"
    );
    assert_eq!(
        node.metric("osgate_controlplane_revision", &[]),
        good as f64
    );
    assert_eq!(
        node.metric("osgate_controlplane_updates_total", &[("result", "nack")]),
        1.0
    );

    let status = &cp.nodes()["nodes"][0];
    assert_eq!(status["nacked_revision"].as_u64(), Some(bad));
    assert_eq!(status["acked_revision"].as_u64(), Some(good));
    assert!(
        status["nack_error"]
            .as_str()
            .unwrap()
            .contains("policy.require-ct"),
        "{status}"
    );
    let table = cp.ctl(Some(ADMIN_TOKEN), &["get", "nodes"]).stdout;
    assert!(table.contains(&format!("NACK {bad}")), "{table}");
    assert_eq!(cp.metric("osgate_cp_nacks_total", &[]), 1.0);

    // Removing the bad policy brings the node back in sync.
    let fixed = revision(&cp.admin_json(&["delete", "needs-ct"]));
    wait_applied(&mut node, fixed);
}

fn a_bad_policy_in_a_batch_is_rejected_by_name_and_nothing_of_the_batch_is_stored(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let batch = format!(
        "{}\n[[policy]]\nname = \"broken\"\nmatch = \"*.example\"\nlevel = \"authenticate\"\nallow_cleartext_fallback = true\n",
        deny("fine", "10.0.0.0/8")
    );
    let out = cp.apply(dir.path(), &batch, &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("policy[1]") && out.stderr.contains("policy/broken"),
        "{}",
        out.stderr
    );
    let stored = cp.admin_json(&["get", "policies"]);
    assert_eq!(stored["policies"].as_array().unwrap().len(), 0, "{stored}");
    assert_eq!(stored["revision"], 0);
}

fn a_node_restarted_while_the_control_plane_is_down_serves_its_persisted_snapshot(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let (mut node, _) = fleet_node(dir.path(), &cp, "n1", Io::Uring, server.addr, "");
    let rev = revision(
        &cp.apply(dir.path(), &deny("no-lab", "127.0.0.1"), &[])
            .json(),
    );
    wait_applied(&mut node, rev);
    let config = node.config.clone();
    drop(node);
    cp.process.kill9();

    let mut node = Node::run(config.clone(), None);
    let loaded = node.wait_for(|v| {
        v["message"] == "serving the last-known-good until the control plane answers"
    });
    assert_eq!(loaded["revision"].as_u64(), Some(rev));
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    assert_eq!(outcome_of(&mut node).2, "policy-deny");
    drop(node);

    // A damaged snapshot is refused as a whole: no overrides, and the node says so.
    let lkg = dir.path().join("n1.lkg");
    let mut bytes = std::fs::read(&lkg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&lkg, bytes).unwrap();
    let mut node = Node::run(config, None);
    node.wait_for(|v| v["message"] == "last-known-good is unreadable: running with no overrides until the control plane answers");
    assert_eq!(peers::call(node.addr("outbound[0]"), b"open"), b"open");
    assert_eq!(outcome_of(&mut node).0, "cleartext");
}

fn acknowledged_writes_survive_kill_9_of_the_control_plane(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, "");
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let writer = {
        let (addr, pin) = (cp.addr, cp.key.pin.clone());
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            for i in 0..400 {
                let file = dir.join(format!("p{i}.toml"));
                std::fs::write(
                    &file,
                    deny(
                        &format!("p{i}"),
                        &format!("10.{}.{}.0/24", i / 256, i % 256),
                    ),
                )
                .unwrap();
                let out = std::process::Command::new(osgate_tests::node::bin("osgatectl"))
                    .env("OSGATE_SERVER", addr.to_string())
                    .env("OSGATE_SERVER_PIN", &pin)
                    .env("OSGATE_TOKEN", ADMIN_TOKEN)
                    .args(["apply", "-f", file.to_str().unwrap()])
                    .output()
                    .unwrap();
                if !out.status.success() {
                    break;
                }
                if acked_tx.send(format!("p{i}")).is_err() {
                    break;
                }
            }
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 25 {
        acked.push(acked_rx.recv_timeout(osgate_tests::WAIT).unwrap());
    }
    cp.process.kill9();
    writer.join().unwrap();
    acked.extend(acked_rx.try_iter());

    cp.restart();
    let stored = cp.admin_json(&["get", "policies"]);
    let names: Vec<&str> = stored["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in &acked {
        assert!(
            names.contains(&name.as_str()),
            "acknowledged {name} was lost; stored: {names:?}"
        );
    }
    assert!(stored["revision"].as_u64().unwrap() >= acked.len() as u64);
}

fn no_token_gets_nothing_and_a_viewer_cannot_write(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    cp.apply(dir.path(), &deny("seed", "10.0.0.0/8"), &[])
        .json();

    let anonymous = cp.ctl(None, &["get", "policies"]);
    assert_eq!(anonymous.code, 1);
    assert!(anonymous.stderr.contains("--token"), "{}", anonymous.stderr);
    assert_eq!(anonymous.stdout, "", "nothing is read without a token");
    let wrong = cp.ctl(Some("not-a-token"), &["get", "policies"]);
    assert_eq!(wrong.code, 1);

    let viewer_read = cp
        .ctl(Some(VIEWER_TOKEN), &["-o", "json", "get", "policies"])
        .json();
    assert_eq!(viewer_read["policies"][0]["name"], "seed");
    let file = dir.path().join("w.toml");
    std::fs::write(&file, deny("viewer-write", "10.1.0.0/16")).unwrap();
    let viewer_write = cp.ctl(Some(VIEWER_TOKEN), &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(viewer_write.code, 1);
    assert!(
        viewer_write.stderr.contains("role viewer"),
        "{}",
        viewer_write.stderr
    );
    let anonymous_write = cp.ctl(None, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(anonymous_write.code, 1);

    let stored = cp.admin_json(&["get", "policies"]);
    assert_eq!(
        stored["policies"].as_array().unwrap().len(),
        1,
        "no write got through"
    );
    let audit = cp.admin_json(&["get", "audit"]);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    assert!(
        cp.metric(
            "osgate_cp_requests_refused_total",
            &[("code", "Unauthenticated")]
        ) >= 3.0
    );
    assert_eq!(
        cp.metric(
            "osgate_cp_requests_refused_total",
            &[("code", "PermissionDenied")]
        ),
        1.0
    );
    assert!(
        cp.metric(
            "osgate_cp_admin_requests_total",
            &[("method", "ApplyPolicies"), ("code", "Ok")]
        ) >= 1.0
    );
}

fn dangerous_changes_show_their_blast_radius_and_need_confirmation(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let (mut node, _) = fleet_node(dir.path(), &cp, "n1", Io::Epoll, server.addr, "");
    let encrypt_all = "[[policy]]\nname = \"encrypt-all\"\nmatch = \"*\"\nlevel = \"encrypt\"\n";
    let first = revision(&cp.apply(dir.path(), encrypt_all, &[]).json());
    wait_applied(&mut node, first);
    let clear_all = "[[policy]]\nname = \"encrypt-all\"\nmatch = \"*\"\nlevel = \"cleartext\"\n";

    let dry = cp.apply(dir.path(), clear_all, &["--dry-run"]).json();
    assert_eq!(dry["revision"], 0);
    assert!(
        dry["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cleartext the default for every peer"),
        "{dry}"
    );
    let affected = &dry["affected"][0];
    assert_eq!(affected["node"], "n1");
    assert_eq!(affected["peer"], server.addr.to_string());
    assert_eq!(affected["before"], "cp:encrypt-all (encrypt)");
    assert_eq!(affected["after"], "cp:encrypt-all (cleartext)");

    let refused = cp.apply(dir.path(), clear_all, &[]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--confirm"), "{}", refused.stderr);
    assert_eq!(
        cp.admin_json(&["get", "policies"])["policies"][0]["level"],
        "encrypt"
    );

    let confirmed = revision(&cp.apply(dir.path(), clear_all, &["--confirm"]).json());
    wait_applied(&mut node, confirmed);
    assert_eq!(
        cp.admin_json(&["get", "policies"])["policies"][0]["level"],
        "cleartext"
    );

    let all_pins = cp.ctl(Some(ADMIN_TOKEN), &["pins", "delete", "--all"]);
    assert_ne!(all_pins.code, 0);
    assert!(all_pins.stderr.contains("--confirm"), "{}", all_pins.stderr);
    let contradiction =
        "[[policy]]\nname = \"c\"\nmatch = \"x.example\"\nlevel = \"deny\"\nmethods = [\"pkix\"]\n";
    assert_ne!(cp.apply(dir.path(), contradiction, &[]).code, 0);
}

/// A pin-sharing node with its own pin store. Scenarios mix the drivers: the node that
/// learns runs on one, the node the pin spreads to on the other.
fn tofu_node(dir: &Path, cp: &ControlPlane, name: &str, io: Io, peer: SocketAddr) -> Node {
    let tofu = tofu_store(&dir.join(format!("{name}.pins")));
    fleet_node(dir, cp, name, io, peer, &tofu).0
}

fn a_learned_pin_spreads_only_after_corroboration_or_approval(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let mut a = tofu_node(dir.path(), &cp, "a", Io::Uring, server.addr);
    let mut b = tofu_node(dir.path(), &cp, "b", Io::Uring, server.addr);
    let mut c = tofu_node(dir.path(), &cp, "c", Io::Epoll, server.addr);

    server.send_line(a.addr("outbound[0]"), "from a");
    assert_eq!(outcome_of(&mut a).0, "encrypted");
    eventually("a reported the pin", || {
        cp.pin_rows()
            .iter()
            .any(|r| r["reporters"] == serde_json::json!(["a"]))
    });
    let rows = cp.pin_rows();
    assert_eq!(
        rows[0]["state"], "learned",
        "one node is no corroboration: {rows:?}"
    );
    assert_eq!(rows[0]["spki"], pin_of(&pem));
    let before = revision(&cp.nodes());

    server.send_line(b.addr("outbound[0]"), "from b");
    assert_eq!(outcome_of(&mut b).0, "encrypted");
    eventually("b's report corroborated it", || {
        cp.pin_rows().iter().any(|r| r["state"] == "corroborated")
    });
    let spread = revision(&cp.nodes());
    assert!(spread > before);
    wait_applied(&mut c, spread);

    // Node c never met the peer, and authenticates it on first contact with the fleet's pin.
    server.send_line(c.addr("outbound[0]"), "from c");
    let (achieved, method, _, _) = outcome_of(&mut c);
    assert_eq!(
        (achieved.as_str(), method.as_str()),
        ("authenticated", "tofu")
    );

    // An operator revokes the key: every node refuses it, whatever it pinned.
    let revoked =
        revision(&cp.admin_json(&["pins", "revoke", &server.addr.to_string(), &pin_of(&pem)]));
    wait_applied(&mut a, revoked);
    assert_eq!(peers::call(a.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_eq!(outcome_of(&mut a).2, "pin-revoked");
}

fn an_approved_pin_is_an_operator_pin_for_every_node(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let mut c = tofu_node(dir.path(), &cp, "c", Io::Epoll, server.addr);
    let approved =
        revision(&cp.admin_json(&["pins", "approve", &server.addr.to_string(), &pin_of(&pem)]));
    wait_applied(&mut c, approved);
    server.send_line(c.addr("outbound[0]"), "approved");
    let (achieved, method, _, _) = outcome_of(&mut c);
    assert_eq!(
        (achieved.as_str(), method.as_str()),
        ("authenticated", "pinned")
    );

    // A vouched next key works alongside, for a rotation without outage.
    let next = certs::self_signed(dir.path(), "next", "127.0.0.1");
    let vouched = revision(&cp.admin_json(&[
        "pins",
        "vouch",
        &server.addr.to_string(),
        &pin_of(&pem),
        &pin_of(&next),
    ]));
    wait_applied(&mut c, vouched);
    let addr = server.addr;
    drop(server);
    let rotated = SServer::start_on(addr, &next, &[]);
    rotated.send_line(c.addr("outbound[0]"), "rotated");
    assert_eq!(outcome_of(&mut c).1, "pinned");
}

fn conflicting_pins_are_kept_side_by_side_and_neither_spreads(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let first = certs::self_signed(dir.path(), "first", "127.0.0.1");
    let server = SServer::start(&first, &[]);
    let addr = server.addr;
    let mut a = tofu_node(dir.path(), &cp, "a", Io::Uring, addr);
    let mut b = tofu_node(dir.path(), &cp, "b", Io::Epoll, addr);
    server.send_line(a.addr("outbound[0]"), "a sees the first key");
    assert_eq!(outcome_of(&mut a).0, "encrypted");
    eventually("a reported", || !cp.pin_rows().is_empty());
    drop(server);
    let second = certs::self_signed(dir.path(), "second", "127.0.0.1");
    let other = SServer::start_on(addr, &second, &[]);
    other.send_line(b.addr("outbound[0]"), "b sees another key");
    assert_eq!(outcome_of(&mut b).0, "encrypted");
    eventually("b reported", || cp.pin_rows().len() == 2);

    let rows = cp.pin_rows();
    assert!(
        rows.iter()
            .all(|r| r["conflict"] == true && r["state"] == "learned"),
        "{rows:?}"
    );
    let table = cp.ctl(Some(ADMIN_TOKEN), &["get", "pins"]).stdout;
    assert_eq!(table.matches("CONFLICT").count(), 2, "{table}");
    assert_eq!(cp.metric("osgate_cp_pin_conflicts", &[]), 1.0);
}

fn fleet_node_keys_authenticate_node_to_node_without_a_ca(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let backend = Server::start(peers::echo);
    // The inbound node, registered with the address it serves.
    let key_b = keygen(dir.path(), "b");
    let inbound = format!(
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        backend.addr,
        key_b.cert.display(),
        key_b.key.display()
    );
    let b = Node::start(
        dir.path(),
        Io::Epoll,
        "",
        &format!(
            "{inbound}\n{}",
            cp.section(&key_b, &dir.path().join("b.lkg"), "")
        ),
    );
    let b_addr = b.addr("inbound[0]");
    cp.register("b", &key_b, &[b_addr]);
    let rule = "[[policy]]\nname = \"fleet-only\"\nmatch = \"127.0.0.1\"\nlevel = \"authenticate\"\nmethods = [\"fleet\"]\n";
    cp.apply(dir.path(), rule, &[]).json();
    let (mut a, _) = fleet_node(dir.path(), &cp, "a", Io::Uring, b_addr, "");
    wait_applied(&mut a, revision(&cp.nodes()));

    assert_eq!(
        peers::call(a.addr("outbound[0]"), b"node to node"),
        b"node to node"
    );
    let (achieved, method, _, _) = outcome_of(&mut a);
    assert_eq!(
        (achieved.as_str(), method.as_str()),
        ("authenticated", "fleet")
    );

    // Re-registering b with another key: a's next connection is refused, never downgraded.
    let impostor = keygen(dir.path(), "impostor");
    let rev = cp.register("b", &impostor, &[b_addr]);
    wait_applied(&mut a, rev);
    assert_eq!(peers::call(a.addr("outbound[0]"), b"SECRET"), b"");
    assert_eq!(outcome_of(&mut a).2, "fleet-key-mismatch");
}

fn an_enrolment_token_registers_a_node_once(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let token = cp
        .ctl(Some(ADMIN_TOKEN), &["nodes", "enroll", "edge-1"])
        .stdout
        .trim()
        .to_owned();
    assert!(!token.is_empty());
    let server = Server::start(peers::echo);
    let key = keygen(dir.path(), "edge");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{}",
        server.addr,
        cp.section(
            &key,
            &dir.path().join("edge.lkg"),
            &format!("enroll_token = \"{token}\"")
        )
    );
    let mut node = Node::start(dir.path(), Io::Epoll, "", &body);
    node.wait_for(|v| v["message"] == "enrolled with the control plane");
    wait_applied(&mut node, 1);
    let nodes = cp.nodes();
    assert_eq!(nodes["nodes"][0]["name"], "edge-1");
    assert_eq!(nodes["nodes"][0]["spki"], key.pin.as_str());

    // The token is spent: another key cannot use it.
    let other = keygen(dir.path(), "other");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{}",
        server.addr,
        cp.section(
            &other,
            &dir.path().join("other.lkg"),
            &format!("enroll_token = \"{token}\"")
        )
    );
    let mut second = Node::start(dir.path(), Io::Epoll, "", &body);
    second.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("control plane stream ended"))
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("token is unknown, used or expired"))
    });
    assert_eq!(cp.nodes()["nodes"].as_array().unwrap().len(), 1);
}

fn a_silently_dead_stream_is_detected_and_learned_pins_are_reported_later(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let mut a = tofu_node(dir.path(), &cp, "a", Io::Epoll, server.addr);
    let pid = cp.process.child.id().to_string();
    // Stopped, not killed: the TCP connection stays open and silent.
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    a.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("control plane stream ended"))
    });
    assert_eq!(a.metric("osgate_controlplane_connected", &[]), 0.0);

    eventually(
        "the config age grows while the control plane is away",
        || a.metric("osgate_controlplane_config_age_seconds", &[]) >= 3.0,
    );
    server.send_line(a.addr("outbound[0]"), "learned while away");
    assert_eq!(outcome_of(&mut a).0, "encrypted");
    eventually("the pin waits in the queue", || {
        a.metric("osgate_controlplane_pins_pending", &[]) == 1.0
    });

    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("the queued pin was reported", || cp.pin_rows().len() == 1);
    assert_eq!(cp.pin_rows()[0]["spki"], pin_of(&pem));
    assert!(a.metric("osgate_controlplane_config_age_seconds", &[]) < 10.0);
}

#[test]
fn postgres_replicas_stream_each_others_changes_to_their_own_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(Store::Postgres, dir.path());
    let one = ControlPlane::start(dir.path(), &url, "");
    let two = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    // Registered through replica one, connected to replica two.
    let key = keygen(dir.path(), "n1");
    let registered = one.register("n1", &key, &[]);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{}",
        server.addr,
        two.section(&key, &dir.path().join("n1.lkg"), "")
    );
    let mut node = Node::start(dir.path(), Io::Uring, "", &body);
    wait_applied(&mut node, registered);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"open"), b"open");
    assert_eq!(outcome_of(&mut node).0, "cleartext");

    let rev = revision(
        &one.apply(dir.path(), &deny("from-one", "127.0.0.1"), &[])
            .json(),
    );
    wait_applied(&mut node, rev);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    assert_eq!(outcome_of(&mut node).3, format!("cp:from-one@{rev}"));
    // Either replica shows the node, in sync, whichever it is connected to.
    eventually("replica one sees the ACK given to replica two", || {
        let status = &one.nodes()["nodes"][0];
        status["connected"] == true && status["acked_revision"].as_u64() == Some(rev)
    });
    assert_eq!(two.metric("osgate_cp_nodes_connected", &[]), 1.0);
    assert_eq!(one.metric("osgate_cp_nodes_connected", &[]), 0.0);
}

#[test]
fn an_oversized_request_is_refused_with_a_clear_error_and_nothing_stored() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), dir.path().join("cp.db").to_str().unwrap(), "");
    // About 18 MB of valid pins: over the 16 MiB message limit.
    let pins: Vec<String> = (0..340_000u32)
        .map(|i| {
            let digest = Sha256::digest(i.to_be_bytes());
            format!("\"sha256/{}\"", STANDARD.encode(digest))
        })
        .collect();
    let body = format!(
        "[[policy]]\nname = \"huge\"\nmatch = \"*\"\nlevel = \"authenticate\"\nmethods = [\"pinned\"]\npins = [{}]\n",
        pins.join(",")
    );
    let out = cp.apply(dir.path(), &body, &[]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("too large"), "{}", out.stderr);
    let mut cp = cp;
    assert!(cp.process.is_running(), "the control plane survives");
    assert_eq!(
        cp.admin_json(&["get", "policies"])["policies"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
