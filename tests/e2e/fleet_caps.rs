//! The fleet ratchet end to end (issue 11): one node's TLS with a peer commits every node of
//! the fleet to TLS with it, on first contact too; `osgatectl capabilities clear` undoes that,
//! audited, with its blast radius shown; reports for a peer a node is not assigned are refused
//! (CONFORMANCE J.57); a Capability that needs a feature the node lacks is NACKed (G.43).
//! A real control plane (SQLite and PostgreSQL), real nodes on both I/O drivers, an OpenSSL
//! peer, and a plain TCP server that takes its port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use osgate_proto::pb::{self, watch_request::Msg};
use osgate_tests::certs;
use osgate_tests::controlplane::{
    ADMIN_TOKEN, ControlPlane, VIEWER_TOKEN, keygen, revision, wait_applied,
};
use osgate_tests::hostile_cp::HostileControlPlane;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::postgres::{Store, database};
use osgate_tests::{Io, Node, eventually, per_driver, per_store};
use prost::Message;
use serde_json::{Value, json};

/// Each scenario on both stores, with the node under test on both drivers.
macro_rules! per_store_and_driver {
    (@tests $store:ident $io:ident $($name:ident)*) => {
        use osgate_tests::{Io, postgres::Store};
        $(#[test] fn $name() { super::super::$name(Store::$store, Io::$io) })*
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            mod uring { per_store_and_driver!(@tests Sqlite Uring $($name)*); }
            mod epoll { per_store_and_driver!(@tests Sqlite Epoll $($name)*); }
        }
        mod postgres {
            mod uring { per_store_and_driver!(@tests Postgres Uring $($name)*); }
            mod epoll { per_store_and_driver!(@tests Postgres Epoll $($name)*); }
        }
    };
}

per_store_and_driver!(
    one_nodes_tls_makes_a_node_that_never_met_the_peer_refuse_cleartext_until_an_operator_clears_it,
);

mod by_store {
    use super::*;
    per_store!(
        get_capabilities_shows_the_reporters_and_how_long_tls_is_required,
        capability_reports_for_peers_a_node_is_not_assigned_are_refused_and_counted,
        tls_seen_after_a_clear_sets_the_fleet_ratchet_again_and_reports_from_before_stay_void,
    );
}

mod by_driver {
    use super::*;
    per_driver!(a_capability_that_needs_an_unknown_feature_is_nacked_and_the_last_known_good_stays);
}

/// What the plain server says first, as an SMTP server would.
const BANNER: &[u8] = b"220 plain now\r\n";

fn other(io: Io) -> Io {
    match io {
        Io::Uring => Io::Epoll,
        Io::Epoll => Io::Uring,
    }
}

/// A node of `cp` named `name` with one opportunistic outbound listener to `peer`,
/// registered as serving `assigned`, started and in sync.
fn fleet_node(
    dir: &Path,
    cp: &ControlPlane,
    name: &str,
    io: Io,
    peer: SocketAddr,
    assigned: &[SocketAddr],
) -> Node {
    let key = keygen(dir, name);
    let rev = cp.register_serving(name, &key, &[], assigned);
    let section = cp.section(&key, &dir.join(format!("{name}.lkg")), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{section}"
    );
    // Its own state folder, so its own capability store: a node that never met the peer
    // has no local ratchet for it.
    let mut node = Node::start(dir, io, &own_state(dir, name), &body);
    wait_applied(&mut node, rev);
    node
}

fn own_state(dir: &Path, name: &str) -> String {
    let state = dir.join(format!("{name}-state"));
    format!("state_dir = \"{}\"\n", state.display())
}

/// A plain TCP server on `addr` that greets first and records what it is sent.
fn plain_server(addr: SocketAddr) -> Server<Vec<u8>> {
    Server::start_on(addr, |mut stream| {
        let _ = stream.write_all(BANNER);
        peers::record(stream)
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn field<'a>(out: &'a Value, key: &str) -> &'a str {
    out[key].as_str().unwrap_or("")
}

/// Every row of `osgatectl get capabilities -o json`.
fn capabilities(cp: &ControlPlane) -> Vec<Value> {
    let list = cp.admin_json(&["get", "capabilities"]);
    list["capabilities"].as_array().cloned().unwrap_or_default()
}

/// The row for `peer`, if the control plane lists it.
fn row(cp: &ControlPlane, peer: SocketAddr) -> Option<Value> {
    let peer = peer.to_string();
    capabilities(cp).into_iter().find(|c| c["peer"] == peer)
}

/// The row for `peer` if the fleet holds it to TLS (a row stays after a clear, without
/// `tls_until`).
fn capability(cp: &ControlPlane, peer: SocketAddr) -> Option<Value> {
    row(cp, peer).filter(|c| c["tls_until"].is_u64())
}

/// The node names in an `ApplyReply`'s blast radius, sorted, each once.
fn affected_nodes(reply: &Value) -> Vec<String> {
    let mut nodes: Vec<String> = reply["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `node`'s next outbound record must be a refusal the ratchet committed (`ratchet` says
/// whose fact it was), with nothing but a ClientHello sent to `plain`.
fn assert_ratchet_refused(node: &mut Node, plain: &Server<Vec<u8>>, ratchet: &str) {
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\r\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (field(&out, "achieved"), field(&out, "reason")),
        ("refused", "peer-no-tls"),
        "{out}"
    );
    assert_eq!(out["downgrade_suspected"], true, "{out}");
    assert_eq!(field(&out, "ratchet"), ratchet, "{out}");
    let seen = plain.result();
    assert_eq!(seen.first(), Some(&0x16), "only a ClientHello was sent");
    assert!(!contains(&seen, b"SECRET"), "no payload byte reached it");
}

fn one_nodes_tls_makes_a_node_that_never_met_the_peer_refuse_cleartext_until_an_operator_clears_it(
    store: Store,
    io: Io,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "p", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let p = server.addr;
    let mut a = fleet_node(dir.path(), &cp, "node-a", other(io), p, &[p]);
    let mut b = fleet_node(dir.path(), &cp, "node-b", io, p, &[p]);
    let _c = fleet_node(dir.path(), &cp, "node-c", other(io), p, &[p]);

    server.send_line(a.addr("outbound[0]"), "from a");
    assert_eq!(a.outcome("outbound")["achieved"], "encrypted");
    eventually("the control plane has A's capability for P", || {
        capability(&cp, p).is_some()
    });
    let peer = p.to_string();
    let changes =
        |change: &str| cp.metric("osgate_cp_capability_changes_total", &[("change", change)]);
    assert!(changes("reported") >= 1.0);
    assert_eq!(changes("cleared"), 0.0, "exported at 0 from start");
    let audit = cp.audit();
    assert!(
        audit
            .iter()
            .any(|(who, action, detail)| who == "node:node-a"
                && action == "capabilities.report"
                && detail.contains(&peer)),
        "{audit:?}"
    );
    wait_applied(&mut b, revision(&cp.nodes()));

    // P stops doing TLS. B never met it: only the fleet's fact commits B to TLS.
    drop(server);
    let plain = plain_server(p);
    assert_ratchet_refused(&mut b, &plain, "fleet");
    assert_eq!(b.metric("osgate_downgrade_suspected_total", &[]), 1.0);
    assert!(plain.try_result().is_none(), "no cleartext retry");

    // P really dropped TLS: the operator sees who is affected, then clears the fact.
    let everyone = ["node-a", "node-b", "node-c"];
    let dry = cp.admin_json(&["capabilities", "clear", &peer, "--dry-run"]);
    assert_eq!(dry["revision"], 0, "{dry}");
    assert_eq!(affected_nodes(&dry), everyone, "{dry}");
    assert!(capability(&cp, p).is_some(), "a dry run clears nothing");
    assert_eq!(changes("cleared"), 0.0);
    let cleared = cp.ctl(Some(ADMIN_TOKEN), &["capabilities", "clear", &peer]);
    assert_eq!(cleared.code, 0, "{}", cleared.stderr);
    for name in everyone {
        assert!(cleared.stdout.contains(name), "{}", cleared.stdout);
    }
    let after = row(&cp, p).expect("the peer is still listed, cleared");
    assert_eq!(after["tls_until"], Value::Null, "{after}");
    assert_eq!(after["reporters"], json!([]), "{after}");
    assert!(after["cleared_at"].as_u64() > Some(0), "{after}");
    assert_eq!(changes("cleared"), 1.0);
    let audit = cp.audit();
    assert!(
        audit.iter().any(|(who, action, detail)| who == "admin:ops"
            && action == "capabilities.clear"
            && detail.contains(&peer)),
        "{audit:?}"
    );

    // B falls back as its opportunistic policy allows: the plain server gets the bytes.
    wait_applied(&mut b, revision(&cp.nodes()));
    assert_eq!(
        peers::call(b.addr("outbound[0]"), b"after clear\r\n"),
        BANNER
    );
    let out = b.outcome("outbound");
    assert_eq!(
        (field(&out, "achieved"), field(&out, "reason")),
        ("cleartext", "peer-no-tls"),
        "{out}"
    );
    assert_ne!(out["downgrade_suspected"], true, "{out}");
    let mut seen = [plain.result(), plain.result()];
    seen.sort_by_key(|bytes| bytes.first() != Some(&0x16));
    assert_eq!(seen[0].first(), Some(&0x16), "TLS was tried first");
    assert_eq!(
        seen[1], b"after clear\r\n",
        "the cleartext retry carried it"
    );
    assert_eq!(b.metric("osgate_downgrade_suspected_total", &[]), 1.0);

    // A's own ratchet is A's: the fleet clear does not touch it.
    assert_ratchet_refused(&mut a, &plain, "local");
}

fn get_capabilities_shows_the_reporters_and_how_long_tls_is_required(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "p", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let p = server.addr;
    let mut a = fleet_node(dir.path(), &cp, "node-a", Io::Uring, p, &[p]);
    let _b = fleet_node(dir.path(), &cp, "node-b", Io::Epoll, p, &[p]);
    server.send_line(a.addr("outbound[0]"), "from a");
    assert_eq!(a.outcome("outbound")["achieved"], "encrypted");
    eventually("the control plane has A's capability for P", || {
        capability(&cp, p).is_some()
    });

    let peer = p.to_string();
    let shown = cp
        .ctl(
            Some(VIEWER_TOKEN),
            &["-o", "json", "get", "capabilities", &peer],
        )
        .json();
    let rows = shown["capabilities"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{shown}");
    let row = &rows[0];
    assert_eq!(row["peer"], peer.as_str());
    assert_eq!(row["reporters"], json!(["node-a"]), "B never met P: {row}");
    assert_eq!(names(&row["nodes"]), ["node-a", "node-b"], "{row}");
    assert_eq!(row["tls_version"], "1.3", "{row}");
    assert!(!field(row, "group").is_empty(), "{row}");
    assert_eq!(row["starttls"], false, "{row}");
    assert_eq!(row["dane"], Value::Null, "an address has no TLSA: {row}");
    // The newest report plus the default ratchet TTL (720 h), which is in the future.
    let until = row["tls_until"].as_u64().unwrap();
    let ttl = 720 * 3600;
    let now = unix_now();
    assert!(until > now, "{row}");
    assert!(until <= now + ttl && until + 300 >= now + ttl, "{row}");

    let table = cp.ctl(Some(VIEWER_TOKEN), &["get", "capabilities", &peer]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for part in [peer.as_str(), "node-a", "1.3"] {
        assert!(table.stdout.contains(part), "{part} in {}", table.stdout);
    }
    let anonymous = cp.ctl(None, &["get", "capabilities"]);
    assert_ne!(anonymous.code, 0);
    assert_eq!(anonymous.stdout, "", "nothing is read without a token");

    // The fact is stored, not held in memory: it survives kill -9 of the control plane.
    drop(a);
    cp.restart();
    let again = capability(&cp, p).expect("the capability after a restart");
    assert_eq!(again["reporters"], json!(["node-a"]), "{again}");
    assert_eq!(again["tls_until"].as_u64(), Some(until), "{again}");
}

fn capability_reports_for_peers_a_node_is_not_assigned_are_refused_and_counted(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "p", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let p = server.addr;
    let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let refused = || {
        cp.metric(
            "osgate_cp_capability_reports_refused_total",
            &[("reason", "unassigned-peer")],
        )
    };
    assert_eq!(refused(), 0.0, "exported at 0 from start");

    // Two nodes carry traffic to P (and say so in their Hello), but are assigned another peer.
    let mut h1 = fleet_node(dir.path(), &cp, "h1", Io::Uring, p, &[elsewhere]);
    let mut h2 = fleet_node(dir.path(), &cp, "h2", Io::Epoll, p, &[elsewhere]);
    for node in [&mut h1, &mut h2] {
        server.send_line(node.addr("outbound[0]"), "tls to p");
        assert_eq!(node.outcome("outbound")["achieved"], "encrypted");
    }
    eventually("both reports were handled", || {
        refused() >= 2.0 || capability(&cp, p).is_some()
    });
    assert_eq!(capability(&cp, p), None, "{:?}", capabilities(&cp));
    assert!(refused() >= 2.0);

    // A node assigned P that never met it has no fleet ratchet: P's plain successor gets
    // cleartext, as its opportunistic policy allows.
    let mut c = fleet_node(dir.path(), &cp, "c", Io::Epoll, p, &[p]);
    wait_applied(&mut c, revision(&cp.nodes()));
    drop(server);
    let plain = plain_server(p);
    assert_eq!(peers::call(c.addr("outbound[0]"), b"QUIT\r\n"), BANNER);
    let out = c.outcome("outbound");
    assert_eq!(field(&out, "achieved"), "cleartext", "{out}");
    assert_ne!(out["downgrade_suspected"], true, "{out}");
    drop(plain);
}

fn tls_seen_after_a_clear_sets_the_fleet_ratchet_again_and_reports_from_before_stay_void(
    store: Store,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let pem = certs::self_signed(dir.path(), "p", "127.0.0.1");
    let server = SServer::start(&pem, &[]);
    let p = server.addr;
    let mut a = fleet_node(dir.path(), &cp, "node-a", Io::Uring, p, &[p]);
    let mut c = fleet_node(dir.path(), &cp, "node-c", Io::Epoll, p, &[p]);
    server.send_line(a.addr("outbound[0]"), "from a");
    assert_eq!(a.outcome("outbound")["achieved"], "encrypted");
    eventually("the control plane has A's capability for P", || {
        capability(&cp, p).is_some()
    });
    cp.admin_json(&["capabilities", "clear", &p.to_string()]);
    let cleared_at = row(&cp, p).unwrap()["cleared_at"].as_u64().unwrap();

    // A sighting counts when it is newer than the clear, which is kept in whole seconds.
    eventually("a second has passed since the clear", || {
        unix_now() > cleared_at
    });
    server.send_line(c.addr("outbound[0]"), "from c");
    assert_eq!(c.outcome("outbound")["achieved"], "encrypted");
    eventually("C's sighting set the fleet ratchet again", || {
        capability(&cp, p).is_some()
    });
    let fact = capability(&cp, p).unwrap();
    assert_eq!(
        fact["reporters"],
        json!(["node-c"]),
        "A's report predates the clear: {fact}"
    );
    assert!(fact["tls_until"].as_u64() > Some(unix_now()), "{fact}");
}

/// Appends field `number` holding `body` (wire type 2).
fn length_delimited(number: u32, body: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_varint(u64::from(number) << 3 | 2, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// Appends varint field `number`.
fn varint(number: u32, value: u64, out: &mut Vec<u8>) {
    prost::encoding::encode_varint(u64::from(number) << 3, out);
    prost::encoding::encode_varint(value, out);
}

/// An `osgate.v1.Capability` (TLS seen at `peer` two hours ago, required until `tls_until`)
/// that `requires` the named feature, as the bytes a control plane sends.
fn capability_bytes(peer: SocketAddr, tls_until: u64, requires: &str) -> Vec<u8> {
    let seen = unix_now() - 7200;
    let mut out = Vec::new();
    length_delimited(1, peer.to_string().as_bytes(), &mut out);
    varint(2, tls_until, &mut out);
    length_delimited(3, b"1.3", &mut out);
    length_delimited(4, b"X25519", &mut out);
    varint(6, seen, &mut out);
    varint(7, seen, &mut out);
    length_delimited(15, requires.as_bytes(), &mut out);
    out
}

/// A snapshot update of `revision` holding `capabilities` (Resource.capability = 4).
fn snapshot(revision: u64, capabilities: &[Vec<u8>]) -> Vec<u8> {
    let mut out = pb::Update {
        revision,
        snapshot: true,
        ..Default::default()
    }
    .encode_to_vec();
    for capability in capabilities {
        let mut resource = Vec::new();
        length_delimited(4, capability, &mut resource);
        length_delimited(3, &resource, &mut out);
    }
    out
}

fn a_capability_that_needs_an_unknown_feature_is_nacked_and_the_last_known_good_stays(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let p = plain_server("127.0.0.1:0".parse().unwrap());
    let q = plain_server("127.0.0.1:0".parse().unwrap());
    // The good snapshot commits the node to TLS with P, and holds Q's fact that expired a
    // minute ago; the next one, which needs a feature the node lacks, would replace both
    // with a fact about Q that holds for an hour.
    let now = unix_now();
    let good = snapshot(
        1,
        &[
            capability_bytes(p.addr, now + 3600, "capability.v1"),
            capability_bytes(q.addr, now - 60, "capability.v1"),
        ],
    );
    let future = snapshot(2, &[capability_bytes(q.addr, now + 3600, "capability.v2")]);
    let decoded = pb::Update::decode(future.as_slice()).unwrap();
    let Some(pb::resource::Kind::Capability(sent)) = &decoded.upserts[0].kind else {
        panic!("the bytes are not a Capability as osgate.proto defines it: {decoded:?}");
    };
    assert_eq!(sent.requires, ["capability.v2"]);
    let hostile = HostileControlPlane::start(dir.path(), vec![good, future]);
    let key = keygen(dir.path(), "n1");
    let listeners = [p.addr, q.addr].map(|peer| {
        format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n"
        )
    });
    let section = hostile.section(&key, &dir.path().join("n1.lkg"));
    let body = format!("{}\n{}\n{section}", listeners[0], listeners[1]);
    let mut node = Node::start(dir.path(), io, &own_state(dir.path(), "n1"), &body);

    assert_eq!(hostile.reply(), Msg::Ack(pb::Ack { revision: 1 }));
    let Msg::Nack(nack) = hostile.reply() else {
        panic!("the Capability needing capability.v2 was not NACKed");
    };
    assert_eq!(nack.revision, 2);
    for part in [format!("capability/{}", q.addr), "capability.v2".into()] {
        assert!(nack.error.contains(&part), "{part} in {:?}", nack.error);
    }
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");
    assert_eq!(node.metric("osgate_controlplane_revision", &[]), 1.0);
    assert_eq!(
        node.metric("osgate_controlplane_updates_total", &[("result", "nack")]),
        1.0
    );

    // The last-known-good is in force: P under the fleet ratchet; Q not, its fact expired.
    assert_ratchet_refused(&mut node, &p, "fleet");
    assert_eq!(peers::call(node.addr("outbound[1]"), b"QUIT\r\n"), BANNER);
    let out = node.outcome("outbound");
    assert_eq!(field(&out, "achieved"), "cleartext", "{out}");
    assert_ne!(out["downgrade_suspected"], true, "{out}");
}
