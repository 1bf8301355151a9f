//! Hostile fleet members against a real control plane and real nodes: a token holder that
//! claims other nodes' addresses, a deleted node that keeps streaming, nodes that report
//! pins for peers they do not serve, a dissenting reporter, a connection flood
//! (CONFORMANCE J.56–J.58, G.47). Nodes of one scenario run on both I/O drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use osgate_tests::certs::{self, pin_of};
use osgate_tests::controlplane::{ControlPlane, Key, keygen, revision, wait_applied};
use osgate_tests::node::tofu_store;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::per_store;
use osgate_tests::postgres::{Store, database};
use osgate_tests::{Io, Node, eventually};

per_store!(
    an_enrolling_node_gets_only_the_addresses_its_token_assigns,
    an_address_of_another_node_is_refused_at_register_and_enrolment,
    a_deleted_node_loses_its_stream_and_its_key_at_once,
    pin_reports_for_peers_a_node_is_not_assigned_are_refused_and_counted,
    one_dissenting_reporter_raises_a_conflict_but_the_established_pin_stays,
);

/// A node with one outbound listener to `peer` and `extra` config, registered as serving
/// `assigned`, started and in sync.
fn fleet_node(
    dir: &Path,
    cp: &ControlPlane,
    name: &str,
    io: Io,
    peer: SocketAddr,
    assigned: &[SocketAddr],
    extra: &str,
) -> Node {
    let key = keygen(dir, name);
    let rev = cp.register_serving(name, &key, &[], assigned);
    let mut node = unregistered_node(dir, cp, &key, name, io, peer, extra);
    wait_applied(&mut node, rev);
    node
}

/// A node of `cp` that has not been registered (yet).
fn unregistered_node(
    dir: &Path,
    cp: &ControlPlane,
    key: &Key,
    name: &str,
    io: Io,
    peer: SocketAddr,
    extra: &str,
) -> Node {
    let section = cp.section(key, &dir.join(format!("{name}.lkg")), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{extra}\n{section}"
    );
    Node::start(dir, io, "", &body)
}

/// A node with its own pin store, learning keys on first use.
fn tofu_extra(dir: &Path, name: &str) -> String {
    tofu_store(&dir.join(format!("{name}.pins")))
}

fn outcome(node: &mut Node) -> (String, String, String) {
    let out = node.outcome("outbound");
    let field = |k: &str| out[k].as_str().unwrap_or("").to_owned();
    (field("achieved"), field("method"), field("reason"))
}

fn stream_ended(v: &serde_json::Value, error: &str) -> bool {
    v["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("control plane stream ended"))
        && v["error"].as_str().is_some_and(|e| e.contains(error))
}

fn addresses(node: &serde_json::Value) -> Vec<String> {
    node["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Node `b` with an inbound listener in front of `backend`, registered by an admin with
/// that listener's address; its key is returned for re-registration.
fn inbound_node(dir: &Path, cp: &ControlPlane, io: Io, backend: SocketAddr) -> (Node, Key) {
    let key = keygen(dir, "b");
    let inbound = format!(
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        key.cert.display(),
        key.key.display()
    );
    let section = cp.section(&key, &dir.join("b.lkg"), "");
    let mut b = Node::start(dir, io, "", &format!("{inbound}\n{section}"));
    let rev = cp.register_serving("b", &key, &[b.addr("inbound[0]")], &[]);
    wait_applied(&mut b, rev);
    (b, key)
}

const FLEET_ONLY: &str = "[[policy]]\nname = \"fleet-only\"\nmatch = \"127.0.0.1\"\nlevel = \"authenticate\"\nmethods = [\"fleet\"]\n";

fn an_enrolling_node_gets_only_the_addresses_its_token_assigns(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let backend = Server::start(peers::echo);
    let (b, _) = inbound_node(dir.path(), &cp, Io::Epoll, backend.addr);
    let b_addr = b.addr("inbound[0]");
    cp.apply(dir.path(), FLEET_ONLY, &[]).json();
    let mut a = fleet_node(dir.path(), &cp, "a", Io::Uring, b_addr, &[], "");
    wait_applied(&mut a, revision(&cp.nodes()));
    assert_eq!(peers::call(a.addr("outbound[0]"), b"to b"), b"to b");
    assert_eq!(outcome(&mut a).1, "fleet");

    // A token holder advertises b's address and an arbitrary destination.
    let token = cp.enroll_token("evil", &[]);
    let evil_key = keygen(dir.path(), "evil");
    let claims =
        format!("enroll_token = \"{token}\"\nadvertise = [\"{b_addr}\", \"203.0.113.7:443\"]");
    let section = cp.section(&evil_key, &dir.path().join("evil.lkg"), &claims);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{section}",
        backend.addr
    );
    let mut evil = Node::start(dir.path(), Io::Uring, "", &body);
    evil.wait_for(|v| v["message"] == "enrolled with the control plane");

    // It is a node now, but its key covers nothing: b's address stays b's alone.
    let listed = cp.node("evil").expect("evil enrolled");
    assert_eq!(addresses(&listed), Vec::<String>::new(), "{listed}");
    assert_eq!(addresses(&cp.node("b").unwrap()), [b_addr.to_string()]);
    let everyone = cp.nodes();
    let claimed: Vec<_> = everyone["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| addresses(n).contains(&b_addr.to_string()))
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(claimed, [serde_json::json!("b")]);
    let audit = cp.audit();
    assert!(
        audit
            .iter()
            .any(|(who, action, detail)| who.starts_with("enrolling:")
                && action == "nodes.enroll"
                && detail.contains("advertised")
                && detail.contains("ignored")),
        "{audit:?}"
    );

    // The other nodes still authenticate b, and only b, at that address.
    wait_applied(&mut a, revision(&cp.nodes()));
    assert_eq!(peers::call(a.addr("outbound[0]"), b"still b"), b"still b");
    let (achieved, method, _) = outcome(&mut a);
    assert_eq!(
        (achieved.as_str(), method.as_str()),
        ("authenticated", "fleet")
    );

    // An address the admin puts in the token is what the key covers.
    let token = cp.enroll_token("edge", &["--address", "EDGE.example.:7443"]);
    let edge_key = keygen(dir.path(), "edge");
    let section = cp.section(
        &edge_key,
        &dir.path().join("edge.lkg"),
        &format!("enroll_token = \"{token}\""),
    );
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{section}",
        backend.addr
    );
    let mut edge = Node::start(dir.path(), Io::Epoll, "", &body);
    edge.wait_for(|v| v["message"] == "enrolled with the control plane");
    assert_eq!(addresses(&cp.node("edge").unwrap()), ["edge.example:7443"]);
}

fn an_address_of_another_node_is_refused_at_register_and_enrolment(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let b_key = keygen(dir.path(), "b");
    let b_addr: SocketAddr = "127.0.0.1:7443".parse().unwrap();
    cp.register_serving("b", &b_key, &[b_addr], &[]);

    let mallory = keygen(dir.path(), "mallory");
    let register = cp.ctl(
        Some(osgate_tests::controlplane::ADMIN_TOKEN),
        &[
            "nodes",
            "register",
            "mallory",
            "--spki",
            &mallory.pin,
            "--address",
            "127.0.0.1:7443",
        ],
    );
    assert_ne!(register.code, 0);
    assert!(
        register
            .stderr
            .contains("address 127.0.0.1:7443 is already claimed by node `b`"),
        "{}",
        register.stderr
    );
    let token = cp.ctl(
        Some(osgate_tests::controlplane::ADMIN_TOKEN),
        &["nodes", "enroll", "mallory", "--address", "127.0.0.1:7443"],
    );
    assert_ne!(token.code, 0);
    assert!(
        token.stderr.contains("already claimed by node `b`"),
        "{}",
        token.stderr
    );
    assert!(cp.node("mallory").is_none());

    // A token made before b claimed the address is refused when redeemed, and audited.
    let early = cp.enroll_token("late", &["--address", "127.0.0.1:8443"]);
    cp.register_serving(
        "c",
        &keygen(dir.path(), "c"),
        &["127.0.0.1:8443".parse().unwrap()],
        &[],
    );
    let late_key = keygen(dir.path(), "late");
    let section = cp.section(
        &late_key,
        &dir.path().join("late.lkg"),
        &format!("enroll_token = \"{early}\""),
    );
    let body =
        format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:9\"\n\n{section}");
    let mut late = Node::start(dir.path(), Io::Uring, "", &body);
    late.wait_for(|v| stream_ended(v, "already claimed by node `c`"));
    assert!(cp.node("late").is_none());
    let audit = cp.audit();
    assert!(
        audit
            .iter()
            .any(|(_, action, detail)| action == "nodes.enroll-refused"
                && detail.contains("node/late")),
        "{audit:?}"
    );
    assert_eq!(
        cp.metric(
            "osgate_cp_enrolments_refused_total",
            &[("reason", "refused")]
        ),
        1.0
    );
}

fn a_deleted_node_loses_its_stream_and_its_key_at_once(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let mut gone_u = fleet_node(dir.path(), &cp, "gone-u", Io::Uring, server.addr, &[], "");
    let mut gone_e = fleet_node(dir.path(), &cp, "gone-e", Io::Epoll, server.addr, &[], "");
    let mut stays = fleet_node(dir.path(), &cp, "stays", Io::Uring, server.addr, &[], "");
    eventually("three streams", || {
        cp.metric("osgate_cp_nodes_connected", &[]) == 3.0
    });
    assert_eq!(cp.metric("osgate_cp_node_streams_cut_total", &[]), 0.0);

    for (name, node) in [("gone-u", &mut gone_u), ("gone-e", &mut gone_e)] {
        let out = cp.admin_json(&["nodes", "delete", name]);
        assert!(revision(&out) > 0);
        node.wait_for(|v| stream_ended(v, "was deleted or registered with another key"));
    }
    eventually("the deleted nodes' streams are gone", || {
        cp.metric("osgate_cp_nodes_connected", &[]) == 1.0
    });
    assert_eq!(cp.metric("osgate_cp_node_streams_cut_total", &[]), 2.0);

    // A later update reaches the remaining node only.
    let rule = "[[policy]]\nname = \"later\"\nmatch = \"127.0.0.1\"\nlevel = \"deny\"\n";
    let later = revision(&cp.apply(dir.path(), rule, &[]).json());
    wait_applied(&mut stays, later);
    for node in [&mut gone_u, &mut gone_e] {
        // Reconnecting with the deleted key is refused before anything is sent.
        node.wait_for(|v| stream_ended(v, "key is not registered"));
        assert_eq!(node.metric("osgate_controlplane_connected", &[]), 0.0);
        let applied_later = node.log().iter().any(|v| {
            v["message"] == "applied control plane update"
                && v["revision"].as_u64().is_some_and(|r| r >= later)
        });
        assert!(!applied_later, "a deleted node received a later update");
        assert_eq!(
            peers::call(node.addr("outbound[0]"), b"own config"),
            b"own config"
        );
    }
    assert!(
        cp.metric(
            "osgate_cp_requests_refused_total",
            &[("code", "Unauthenticated")]
        ) >= 2.0
    );
    let audit = cp.audit();
    assert!(
        audit.iter().any(|(who, action, detail)| who == "admin:ops"
            && action == "nodes.delete"
            && detail.starts_with("node/gone-u")),
        "{audit:?}"
    );
}

fn pin_reports_for_peers_a_node_is_not_assigned_are_refused_and_counted(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let refused = || {
        cp.metric(
            "osgate_cp_pin_reports_refused_total",
            &[("reason", "unassigned-peer")],
        )
    };
    assert_eq!(refused(), 0.0, "exported at 0 from start");
    // Two colluding nodes carry traffic to the peer (and say so in their Hello), but an
    // admin assigned them another peer.
    let mut h1 = fleet_node(
        dir.path(),
        &cp,
        "h1",
        Io::Uring,
        server.addr,
        &[elsewhere],
        &tofu_extra(dir.path(), "h1"),
    );
    let mut h2 = fleet_node(
        dir.path(),
        &cp,
        "h2",
        Io::Epoll,
        server.addr,
        &[elsewhere],
        &tofu_extra(dir.path(), "h2"),
    );
    for node in [&mut h1, &mut h2] {
        server.send_line(node.addr("outbound[0]"), "learn");
        assert_eq!(outcome(node).0, "encrypted");
    }
    eventually("both reports were handled", || {
        refused() >= 2.0 || !cp.pin_rows().is_empty()
    });
    assert_eq!(cp.pin_rows(), Vec::<serde_json::Value>::new());
    assert!(refused() >= 2.0);
    let nodes = cp.nodes();
    let spread = nodes["revision"].as_u64().unwrap();
    let node_pins = cp.admin_json(&["get", "nodes", "h1"]);
    assert_eq!(
        node_pins["nodes"][0]["assigned_peers"],
        serde_json::json!([elsewhere.to_string()])
    );

    // A third node that never met the peer gets no fleet pin for it: first contact is TOFU.
    let mut c = fleet_node(
        dir.path(),
        &cp,
        "c",
        Io::Epoll,
        server.addr,
        &[server.addr],
        &tofu_extra(dir.path(), "c"),
    );
    wait_applied(&mut c, spread);
    server.send_line(c.addr("outbound[0]"), "first contact");
    assert_eq!(
        outcome(&mut c).0,
        "encrypted",
        "no fleet pin: the colluders' key did not spread"
    );
}

fn one_dissenting_reporter_raises_a_conflict_but_the_established_pin_stays(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let real = certs::self_signed(dir.path(), "real", "127.0.0.1");
    let server = SServer::start(&real, &[]);
    let addr = server.addr;
    let assigned = [addr];
    let mut a = fleet_node(
        dir.path(),
        &cp,
        "a",
        Io::Uring,
        addr,
        &assigned,
        &tofu_extra(dir.path(), "a"),
    );
    let mut b = fleet_node(
        dir.path(),
        &cp,
        "b",
        Io::Epoll,
        addr,
        &assigned,
        &tofu_extra(dir.path(), "b"),
    );
    for node in [&mut a, &mut b] {
        server.send_line(node.addr("outbound[0]"), "learn");
        assert_eq!(outcome(node).0, "encrypted");
    }
    eventually("a and b corroborated the key", || {
        cp.pin_rows().iter().any(|r| r["state"] == "corroborated")
    });
    let mut d = fleet_node(
        dir.path(),
        &cp,
        "d",
        Io::Epoll,
        addr,
        &assigned,
        &tofu_extra(dir.path(), "d"),
    );
    wait_applied(&mut d, revision(&cp.nodes()));

    // The dissenter meets another key at the peer's address while it is not yet registered
    // (its report waits), then is registered for the peer and reports it.
    drop(server);
    let fake = certs::self_signed(dir.path(), "fake", "127.0.0.1");
    let impostor = SServer::start_on(addr, &fake, &[]);
    let key = keygen(dir.path(), "dissenter");
    let mut dissenter = unregistered_node(
        dir.path(),
        &cp,
        &key,
        "dissenter",
        Io::Uring,
        addr,
        &tofu_extra(dir.path(), "dissenter"),
    );
    impostor.send_line(dissenter.addr("outbound[0]"), "another key");
    assert_eq!(outcome(&mut dissenter).0, "encrypted");
    cp.register_serving("dissenter", &key, &[], &assigned);
    eventually("the dissenting report arrived", || cp.pin_rows().len() == 2);

    // The operator sees the conflict; the established key stays with the fleet.
    let rows = cp.pin_rows();
    let row = |spki: &str| rows.iter().find(|r| r["spki"] == spki).unwrap().clone();
    assert_eq!(row(&pin_of(&real))["state"], "corroborated", "{rows:?}");
    assert_eq!(row(&pin_of(&fake))["state"], "learned", "{rows:?}");
    assert!(rows.iter().all(|r| r["conflict"] == true), "{rows:?}");
    assert_eq!(cp.metric("osgate_cp_pin_conflicts", &[]), 1.0);
    let audit = cp.audit();
    assert!(
        audit
            .iter()
            .any(|(who, action, detail)| who == "node:dissenter"
                && action == "pins.report"
                && detail.contains("CONFLICT")),
        "{audit:?}"
    );

    // d keeps authenticating the real peer with the fleet's pin, and refuses the impostor.
    wait_applied(&mut d, revision(&cp.nodes()));
    assert_eq!(peers::call(d.addr("outbound[0]"), b"SECRET\n"), b"");
    assert_eq!(outcome(&mut d).0, "refused");
    drop(impostor);
    let back = SServer::start_on(addr, &real, &[]);
    back.send_line(d.addr("outbound[0]"), "real again");
    let (achieved, method, _) = outcome(&mut d);
    assert_eq!(
        (achieved.as_str(), method.as_str()),
        ("authenticated", "tofu")
    );
}

/// Whether the control plane closed `stream` unread: EOF or a reset, well before its 10 s
/// TLS handshake timeout could have closed it.
fn closed_at_once(mut stream: std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn connections_over_the_per_source_cap_are_closed_before_tls_and_streams_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(Store::Sqlite, dir.path());
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this scenario floods from ::1 while nodes use 127.0.0.1: it needs IPv6 loopback"
    );
    let caps = "max_connections = 64\nmax_connections_per_source = 8";
    let mut cp = ControlPlane::start_on(dir.path(), &url, "[::]:0", caps);
    // Nodes and osgatectl come over IPv4; the flood from ::1, another source.
    let port = cp.addr.port();
    cp.addr = SocketAddr::from(([127, 0, 0, 1], port));
    let per_source = || {
        cp.metric(
            "osgate_cp_connections_refused_total",
            &[("reason", "per-source-cap")],
        )
    };
    assert_eq!(per_source(), 0.0, "exported at 0 from start");
    assert_eq!(
        cp.metric(
            "osgate_cp_connections_refused_total",
            &[("reason", "global-cap")]
        ),
        0.0
    );
    let server = Server::start(peers::echo);
    let mut u = fleet_node(dir.path(), &cp, "u", Io::Uring, server.addr, &[], "");
    let mut e = fleet_node(dir.path(), &cp, "e", Io::Epoll, server.addr, &[], "");

    let flood: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(("::1", port)).unwrap())
        .collect();
    eventually("the flood holds its places", || {
        cp.metric("osgate_cp_connections", &[]) >= 10.0
    });
    for _ in 0..3 {
        let excess = std::net::TcpStream::connect(("::1", port)).unwrap();
        assert!(
            closed_at_once(excess),
            "a connection over the cap stayed open"
        );
    }
    eventually("the excess was counted", || per_source() == 3.0);

    // The live streams keep flowing, and IPv4 clients still get in.
    let rule = "[[policy]]\nname = \"during-flood\"\nmatch = \"127.0.0.1\"\nlevel = \"deny\"\n";
    let rev = revision(&cp.apply(dir.path(), rule, &[]).json());
    wait_applied(&mut u, rev);
    wait_applied(&mut e, rev);
    assert_eq!(cp.metric("osgate_cp_nodes_connected", &[]), 2.0);
    drop(flood);
    eventually("closed connections free their places", || {
        cp.metric("osgate_cp_connections", &[]) <= 3.0
    });
    let again = std::net::TcpStream::connect(("::1", port)).unwrap();
    again
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut &again, &mut buf);
    assert!(
        read.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection under the cap waits for its handshake"
    );
}

#[test]
fn lowering_the_level_for_peers_of_several_nodes_needs_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(Store::Sqlite, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let server = Server::start(peers::echo);
    let mut u = fleet_node(
        dir.path(),
        &cp,
        "u",
        Io::Uring,
        server.addr,
        &[server.addr],
        "",
    );
    let _e = fleet_node(
        dir.path(),
        &cp,
        "e",
        Io::Epoll,
        server.addr,
        &[server.addr],
        "",
    );
    let rule = |level: &str| {
        format!("[[policy]]\nname = \"lab\"\nmatch = \"127.0.0.1\"\nlevel = \"{level}\"\n")
    };
    cp.apply(dir.path(), &rule("encrypt"), &[]).json();

    // Not a global rule, but it lowers the level for the peers of two nodes.
    let lower = cp.apply(dir.path(), &rule("opportunistic"), &[]);
    assert_ne!(lower.code, 0);
    assert!(
        lower
            .stderr
            .contains("lowers the level for peers of 2 nodes")
            && lower.stderr.contains("--confirm"),
        "{}",
        lower.stderr
    );
    let rev = revision(
        &cp.apply(dir.path(), &rule("opportunistic"), &["--confirm"])
            .json(),
    );
    wait_applied(&mut u, rev);

    // Two policies with one selector and different levels: refused, naming both.
    let twin = "[[policy]]\nname = \"twin\"\nmatch = \"127.0.0.1\"\nlevel = \"encrypt\"\n";
    let refused = cp.apply(dir.path(), twin, &[]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("policy/lab and policy/twin both match `127.0.0.1`"),
        "{}",
        refused.stderr
    );

    // An operator's pin decision is stored as reports are: lower case, no trailing dot.
    let pem = certs::self_signed(dir.path(), "mx", "mx.example");
    cp.admin_json(&["pins", "approve", "MX.Example.:25", &pin_of(&pem)]);
    let rows = cp.pin_rows();
    assert_eq!(rows[0]["peer"], "mx.example:25", "{rows:?}");
}
