//! The security engine end to end: explicit policy, pins, TOFU and the ratchet, against
//! OpenSSL servers and plain TCP servers (CONFORMANCE B and D).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use osgate_tests::certs::{self, pin_of};
use osgate_tests::node::osgate;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::{Io, Node, per_driver};

per_driver!(
    pinned_key_authenticates,
    wrong_pin_is_refused_and_nothing_is_sent,
    authenticate_pkix_with_untrusted_chain_is_refused_not_downgraded,
    deny_never_connects,
    explicit_cleartext_rule_overrides_the_listener,
    tls13_floor_refuses_a_tls12_peer,
    a_tls13_floor_on_an_opportunistic_rule_refuses_a_tls12_peer_never_cleartext,
    tofu_pins_on_first_use_then_refuses_a_changed_key,
    ratchet_refuses_a_peer_that_stops_doing_tls,
    missing_store_refuses_rather_than_turning_verification_off,
    report_only_rule_is_reported_but_not_enforced,
    learned_pins_survive_kill_9,
    planned_rotation_accepts_both_keys_then_only_the_new_one,
    tofu_and_the_ratchet_are_on_by_default,
    a_state_folder_made_before_the_first_start_is_a_first_start,
);

/// An outbound node to `peer` with `extra` config (policy rules, `[tofu]`).
fn node(dir: &Path, io: Io, peer: SocketAddr, extra: &str) -> Node {
    Node::start(
        dir,
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{extra}"
        ),
    )
}

fn rule(peer: SocketAddr, body: &str) -> String {
    format!("[[policy]]\nmatch = \"{}\"\n{body}\n", peer.ip())
}

fn assert_outcome(
    node: &mut Node,
    achieved: &str,
    method: &str,
    reason: &str,
) -> serde_json::Value {
    let out = node.outcome("outbound");
    assert_eq!(
        (
            out["achieved"].as_str(),
            out["method"].as_str(),
            out["reason"].as_str()
        ),
        (Some(achieved), Some(method), Some(reason)),
        "{out}"
    );
    for alarm in [
        "osgate_cleartext_despite_policy_total",
        "osgate_encrypted_despite_authentication_expected_total",
    ] {
        assert_eq!(node.metric(alarm, &[]), 0.0, "{alarm}");
    }
    out
}

fn pinned_key_authenticates(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let extra = rule(
        server.addr,
        &format!(
            "level = \"authenticate\"\nmethods = [\"pinned\"]\npins = [\"{}\"]",
            pin_of(&pem)
        ),
    );
    let mut node = node(dir.path(), io, server.addr, &extra);
    let mut client = TcpStream::connect(node.addr("outbound[0]")).unwrap();
    client.write_all(b"hello pinned\n").unwrap();
    assert_eq!(server.wait_line("hello"), "hello pinned");
    drop(client);
    let out = assert_outcome(&mut node, "authenticated", "pinned", "none");
    assert_eq!(out["policy"], "policy[0]");
    assert_eq!(out["peer_key"], pin_of(&pem));
    assert_eq!(
        node.metric(
            "osgate_policy_decisions_total",
            &[("level", "authenticate"), ("report_only", "false")]
        ),
        1.0
    );
}

fn wrong_pin_is_refused_and_nothing_is_sent(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let other = certs::self_signed(dir.path(), "other", "127.0.0.1");
    let server = Server::start_on(osgate_tests::node::free_port(), {
        let config = certs::server_config(&pem);
        move |tcp| {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut got = Vec::new();
            let _ = tls.read_to_end(&mut got);
            got
        }
    });
    let extra = rule(
        server.addr,
        &format!(
            "level = \"authenticate\"\nmethods = [\"pinned\"]\npins = [\"{}\"]",
            pin_of(&other)
        ),
    );
    let mut node = node(dir.path(), io, server.addr, &extra);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET"), b"");
    assert_outcome(&mut node, "refused", "none", "pin-mismatch");
    assert_eq!(server.result(), b"", "no application byte reached the peer");
    assert!(
        server.try_result().is_none(),
        "no retry, in TLS or cleartext"
    );
}

fn authenticate_pkix_with_untrusted_chain_is_refused_not_downgraded(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(&certs::self_signed(dir.path(), "peer", "127.0.0.1"), &[]);
    let extra = rule(
        server.addr,
        "level = \"authenticate\"\nmethods = [\"pkix\"]",
    );
    let mut node = node(dir.path(), io, server.addr, &extra);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_outcome(&mut node, "refused", "none", "certificate-not-trusted");
}

fn deny_never_connects(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(peers::record);
    let mut node = node(
        dir.path(),
        io,
        server.addr,
        &rule(server.addr, "level = \"deny\""),
    );
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    assert_outcome(&mut node, "refused", "none", "policy-deny");
    assert!(server.try_result().is_none());
}

fn explicit_cleartext_rule_overrides_the_listener(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(peers::record);
    let mut node = Node::start(
        dir.path(),
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"encrypt\"\n\n{}",
            server.addr,
            rule(server.addr, "level = \"cleartext\"")
        ),
    );
    peers::call(node.addr("outbound[0]"), b"plain by policy");
    assert_eq!(server.result(), b"plain by policy");
    assert_outcome(&mut node, "cleartext", "none", "policy-cleartext");
}

fn tls13_floor_refuses_a_tls12_peer(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(
        &certs::self_signed(dir.path(), "peer", "127.0.0.1"),
        &["-tls1_2"],
    );
    let extra = rule(server.addr, "level = \"encrypt\"\nmin_tls = \"1.3\"");
    let mut node = node(dir.path(), io, server.addr, &extra);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x\n"), b"");
    assert_outcome(&mut node, "refused", "none", "tls-handshake-failed");
}

/// Issue 8.3: the same rule without the floor gives `encrypted`; tightening it must refuse,
/// never retry in cleartext (the peer's TLS 1.2 handshake fails under the floor).
fn a_tls13_floor_on_an_opportunistic_rule_refuses_a_tls12_peer_never_cleartext(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &["-tls1_2"]);
    let without = rule(server.addr, "level = \"opportunistic\"");
    let mut loose = node(dir.path(), io, server.addr, &without);
    server.send_line(loose.addr("outbound[0]"), "no floor");
    assert_outcome(&mut loose, "encrypted", "none", "certificate-not-trusted");
    drop(loose);

    // A fresh node: no pin or ratchet learned by the first one commits the peer to TLS.
    let fresh = tempfile::tempdir().unwrap();
    let with = rule(server.addr, "level = \"opportunistic\"\nmin_tls = \"1.3\"");
    let mut strict = node(fresh.path(), io, server.addr, &with);
    assert_eq!(peers::call(strict.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_outcome(&mut strict, "refused", "none", "tls-handshake-failed");
    assert_eq!(
        strict.metric("osgate_connections_total", &[("achieved", "cleartext")]),
        0.0
    );
}

fn init_store(dir: &Path) -> String {
    osgate_tests::node::tofu_store(&dir.join("capabilities"))
}

fn pins_list(dir: &Path) -> String {
    let store = dir.join("capabilities");
    let out = std::process::Command::new(osgate_tests::node::osgate_bin())
        .args(["pins", "--store", store.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tofu_pins_on_first_use_then_refuses_a_changed_key(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let tofu = init_store(dir.path());
    let first_key = certs::self_signed(dir.path(), "first", "127.0.0.1");
    let server = SServer::start(&first_key, &[]);
    let addr = server.addr;
    let mut node = node(dir.path(), io, addr, &tofu);

    server.send_line(node.addr("outbound[0]"), "first contact");
    assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");
    assert!(
        pins_list(dir.path()).contains(&pin_of(&first_key)),
        "{}",
        pins_list(dir.path())
    );
    server.send_line(node.addr("outbound[0]"), "same key");
    assert_outcome(&mut node, "authenticated", "tofu", "none");
    drop(server);

    let second_key = certs::self_signed(dir.path(), "second", "127.0.0.1");
    let impostor = SServer::start_on(addr, &second_key, &[]);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = assert_outcome(&mut node, "refused", "none", "key-changed");
    assert_eq!(
        out["peer_key"],
        pin_of(&second_key),
        "the record names the new key"
    );
    assert!(
        pins_list(dir.path()).contains(&pin_of(&first_key)),
        "the old pin stays"
    );
    // `pins show` names the pinned key and the refused one (CONFORMANCE D.25).
    let store = dir.path().join("capabilities");
    let shown = std::process::Command::new(osgate_tests::node::osgate_bin())
        .args(["pins", "--store", store.to_str().unwrap(), "show"])
        .arg(addr.to_string())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&pin_of(&first_key)), "{shown}");
    assert!(shown.contains(&pin_of(&second_key)), "{shown}");
    assert_eq!(
        node.metric("osgate_tofu_checks_total", &[("decision", "key-changed")]),
        1.0
    );
    assert_eq!(
        node.metric("osgate_tofu_checks_total", &[("decision", "learned")]),
        1.0
    );
    drop(impostor);
}

fn ratchet_refuses_a_peer_that_stops_doing_tls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let tofu = init_store(dir.path()) + "mode = \"off\"\n";
    let server = SServer::start(&certs::self_signed(dir.path(), "peer", "127.0.0.1"), &[]);
    let addr = server.addr;
    let mut node = node(dir.path(), io, addr, &tofu);
    server.send_line(node.addr("outbound[0]"), "tls works");
    assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");
    drop(server);

    let plain = Server::start_on(addr, |mut stream| {
        let _ = stream.write_all(b"220 plain now\r\n");
        peers::record(stream)
    });
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET"), b"");
    let out = assert_outcome(&mut node, "refused", "none", "peer-no-tls");
    assert_eq!(out["downgrade_suspected"], true);
    assert_eq!(node.metric("osgate_downgrade_suspected_total", &[]), 1.0);
    let seen = plain.result();
    assert!(!seen.windows(6).any(|w| w == b"SECRET"));
    assert!(plain.try_result().is_none(), "no cleartext retry");
}

fn missing_store_refuses_rather_than_turning_verification_off(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(&certs::self_signed(dir.path(), "peer", "127.0.0.1"), &[]);
    let tofu = format!(
        "[tofu]\nstore = \"{}\"\n",
        dir.path().join("missing").display()
    );
    let mut node = node(dir.path(), io, server.addr, &tofu);
    node.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("capability store unavailable"))
    });
    assert_eq!(node.metric("osgate_pin_store_available", &[]), 0.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_outcome(&mut node, "refused", "none", "pin-store-unavailable");
}

fn report_only_rule_is_reported_but_not_enforced(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(&certs::self_signed(dir.path(), "peer", "127.0.0.1"), &[]);
    let extra = rule(
        server.addr,
        "level = \"authenticate\"\nmethods = [\"pkix\"]\nreport_only = true",
    );
    let mut node = node(dir.path(), io, server.addr, &extra);
    server.send_line(node.addr("outbound[0]"), "still flows");
    let out = assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");
    assert_eq!(out["policy"], "listener");
    assert_eq!(out["report_only_policy"], "policy[0]");
    assert_eq!(out["report_only_achieved"], "refused");
    assert_eq!(out["report_only_reason"], "certificate-not-trusted");
    assert_eq!(
        node.metric("osgate_policy_decisions_total", &[("report_only", "true")]),
        1.0
    );
}

/// The store is written (fsync, rename, fsync of the folder) before the connection relays a
/// byte, so a pin learned just before a kill -9 is there after it.
fn learned_pins_survive_kill_9(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let tofu = init_store(dir.path());
    let key = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&key, &[]);
    let mut first = node(dir.path(), io, server.addr, &tofu);
    server.send_line(first.addr("outbound[0]"), "learn me");
    assert_outcome(&mut first, "encrypted", "none", "certificate-not-trusted");
    drop(first); // SIGKILL
    assert!(pins_list(dir.path()).contains(&pin_of(&key)));
    let mut second = node(dir.path(), io, server.addr, &tofu);
    server.send_line(second.addr("outbound[0]"), "remembered");
    assert_outcome(&mut second, "authenticated", "tofu", "none");
}

fn pins(dir: &Path, args: &[&str]) {
    let store = dir.join("capabilities");
    let mut all = vec!["pins", "--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, err) = osgate(&all);
    assert_eq!(code, 0, "{err}");
}

/// CONFORMANCE D.27: an operator vouches for the next key; both work during the overlap; once
/// the peer presents the new key, the old one is refused.
fn planned_rotation_accepts_both_keys_then_only_the_new_one(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let tofu = init_store(dir.path());
    let old_key = certs::self_signed(dir.path(), "old", "127.0.0.1");
    let new_key = certs::self_signed(dir.path(), "new", "127.0.0.1");
    let old = SServer::start(&old_key, &[]);
    let addr = old.addr;
    let mut node = node(dir.path(), io, addr, &tofu);
    old.send_line(node.addr("outbound[0]"), "first contact");
    assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");

    pins(dir.path(), &["vouch", &addr.to_string(), &pin_of(&new_key)]);
    old.send_line(node.addr("outbound[0]"), "old key, during the overlap");
    assert_outcome(&mut node, "authenticated", "tofu", "none");
    drop(old);

    let new = SServer::start_on(addr, &new_key, &[]);
    new.send_line(node.addr("outbound[0]"), "new key, during the overlap");
    assert_outcome(&mut node, "authenticated", "tofu", "none");
    let listed = pins_list(dir.path());
    let row = listed
        .lines()
        .find(|l| l.starts_with(&addr.to_string()))
        .unwrap();
    assert!(
        row.contains(&pin_of(&new_key)) && row.ends_with("\t-"),
        "rotation completed: {row}"
    );
    drop(new);

    let back = SServer::start_on(addr, &old_key, &[]);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_outcome(&mut node, "refused", "none", "key-changed");
    drop(back);
}

fn tofu_and_the_ratchet_are_on_by_default(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let key = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&key, &[]);
    let addr = server.addr;
    // No [tofu] section: the store is made next to the config on first start.
    let mut node = node(dir.path(), io, addr, "");
    node.wait_for(|v| {
        v["message"]
            == "first start: created the pin store (TOFU and the ratchet are on by default)"
    });
    server.send_line(node.addr("outbound[0]"), "first");
    assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");
    server.send_line(node.addr("outbound[0]"), "second");
    assert_outcome(&mut node, "authenticated", "tofu", "none");
    let store = dir.path().join("state/pins");
    let listed = std::process::Command::new(osgate_tests::node::osgate_bin())
        .args(["pins", "--store", store.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&pin_of(&key)));
    drop(server);

    // The ratchet: the peer did TLS, so cleartext from it now is a suspected downgrade.
    let plain = Server::start_on(addr, |mut stream| {
        let _ = stream.write_all(b"220 plain now\r\n");
        peers::record(stream)
    });
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET"), b"");
    let out = assert_outcome(&mut node, "refused", "none", "peer-no-tls");
    assert_eq!(out["downgrade_suspected"], true, "{out}");
    drop(plain);
    drop(node);

    // A lost store is not a first start: the first start left its marker in the state
    // folder, so peers are refused rather than checked against nothing (CONFORMANCE D.26),
    // and /ready says why.
    assert!(dir.path().join("state/.initialized").exists());
    std::fs::remove_file(&store).unwrap();
    let server = SServer::start(&key, &[]);
    let mut again = self::node(dir.path(), io, server.addr, "");
    assert_eq!(peers::call(again.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_outcome(&mut again, "refused", "none", "pin-store-unavailable");
    assert!(!store.exists(), "nothing recreated the store silently");
    let (status, body) = osgate_tests::process::http_get(again.metrics.unwrap(), "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pin store"), "{body}");
    drop(server);
}

/// The README's demo makes `state/` (for its own logs) before the node's first start: with
/// no marker yet, that is a first start, not a lost store.
fn a_state_folder_made_before_the_first_start_is_a_first_start(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/controlplane.log"), "").unwrap();
    let key = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&key, &[]);
    let mut node = node(dir.path(), io, server.addr, "");
    server.send_line(node.addr("outbound[0]"), "first");
    assert_outcome(&mut node, "encrypted", "none", "certificate-not-trusted");
    assert_eq!(node.metric("osgate_pin_store_available", &[]), 1.0);
}
