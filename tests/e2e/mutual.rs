//! Mutual fleet authentication and the inbound `clients` rule (issue 11, part 5): real nodes
//! under a real control plane (SQLite), `openssl s_client` as the foreign client, and a
//! backend that counts the connections that reach it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};

use osgate_proto::pb::{self, watch_request::Msg};
use osgate_tests::certs;
use osgate_tests::controlplane::{ControlPlane, Key, keygen, revision, wait_applied};
use osgate_tests::hostile_cp::HostileControlPlane;
use osgate_tests::node::{free_port, osgate};
use osgate_tests::openssl::s_client;
use osgate_tests::peers;
use osgate_tests::{Io, Node, WAIT, per_driver};
use prost::Message;

per_driver!(
    a_fleet_pair_is_authenticated_fleet_on_both_records,
    clients_fleet_refuses_foreign_clients_and_the_backend_sees_none,
    clients_any_serves_an_openssl_client_without_a_certificate,
    clients_pins_admit_the_pinned_client_only,
    clients_fleet_and_a_pin_admit_both_and_no_one_else,
    a_control_plane_inbound_policy_replaces_the_local_clients,
    an_inbound_policy_requiring_an_unknown_feature_is_nacked,
    an_inbound_rule_needing_a_newer_node_is_stored_and_nacked_by_the_node,
);

/// What every client sends; the backend answers `got 4 bytes` once it has read it.
const PING: &[u8] = b"ping";
const REPLY: &[u8] = b"got 4 bytes";

/// A backend on a fresh port that counts accepted connections in its accept loop, before
/// any handler runs: once a later connection's reply arrived, every earlier connection
/// that reached the backend is counted (one accept queue, taken in order).
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Receiver<Vec<u8>>,
}

impl Backend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = channel();
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(WAIT));
                    let _ = tx.send(peers::read_then_reply(PING.len())(stream));
                });
            }
        });
        Self {
            addr,
            accepted,
            seen,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// What the next connection that reached the backend sent.
    fn received(&self) -> Vec<u8> {
        self.seen.recv_timeout(WAIT).expect("a backend connection")
    }
}

/// An `[[inbound]]` table to `backend` presenting `key`, cleartext allowed (so that a
/// cleartext client is refused by `clients`, not by `cleartext`), with `clients` lines.
fn inbound(listen: SocketAddr, backend: SocketAddr, key: &Key, clients: &str) -> String {
    format!(
        "[[inbound]]\nlisten = \"{listen}\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"allow\"\n{clients}\n",
        key.cert.display(),
        key.key.display()
    )
}

/// Node B (inbound, its listener address assigned to its key) and node A (outbound to B,
/// assigned B as a peer), both registered and in sync with one control plane.
struct Fleet {
    cp: ControlPlane,
    a: Node,
    b: Node,
    b_addr: SocketAddr,
    backend: Backend,
}

fn fleet(dir: &Path, io: Io, clients: &str) -> Fleet {
    let cp = ControlPlane::start(dir, dir.join("cp.db").to_str().unwrap(), "");
    let backend = Backend::start();
    // A fixed port: registered before B starts, and what an InboundPolicy's `listener` names.
    let b_addr = free_port();
    let (key_a, key_b) = (keygen(dir, "a"), keygen(dir, "b"));
    cp.register("b", &key_b, &[b_addr]);
    cp.register_serving("a", &key_a, &[], &[b_addr]);
    let b_body = format!(
        "{}\n{}",
        inbound(b_addr, backend.addr, &key_b, clients),
        cp.section(&key_b, &dir.join("b.lkg"), "")
    );
    let mut b = Node::start(dir, io, "", &b_body);
    let a_body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{b_addr}\"\npolicy = \"opportunistic\"\n\n{}",
        cp.section(&key_a, &dir.join("a.lkg"), "")
    );
    let mut a = Node::start(dir, io, "", &a_body);
    let rev = revision(&cp.nodes());
    wait_applied(&mut a, rev);
    wait_applied(&mut b, rev);
    Fleet {
        cp,
        a,
        b,
        b_addr,
        backend,
    }
}

impl Fleet {
    /// A → B → backend, and both records: A's outbound, B's inbound.
    fn through_a(&mut self) -> (serde_json::Value, serde_json::Value) {
        assert_eq!(peers::call(self.a.addr("outbound[0]"), PING), REPLY);
        assert_eq!(self.backend.received(), PING);
        (self.a.outcome("outbound"), self.b.outcome("inbound"))
    }
}

fn level(record: &serde_json::Value) -> (&str, &str, &str) {
    let field = |k: &str| record[k].as_str().unwrap_or("");
    (field("achieved"), field("method"), field("reason"))
}

/// The inbound record says A by its registered name, with its key proved in the handshake.
fn assert_fleet_client(record: &serde_json::Value) {
    assert_eq!(
        level(record),
        ("authenticated", "fleet", "none"),
        "{record}"
    );
    assert_eq!(record["client"], "a", "{record}");
}

/// `openssl s_client` to `addr` with `extra` arguments, sending [`PING`]; its output.
fn openssl_client(addr: SocketAddr, extra: &[&str]) -> String {
    let mut args = vec!["-servername", "localhost"];
    args.extend_from_slice(extra);
    s_client(addr, &args, PING)
}

/// `-cert`/`-key` arguments presenting `key` as the client certificate.
fn presenting(key: &Key) -> [&str; 4] {
    [
        "-cert",
        key.cert.to_str().unwrap(),
        "-key",
        key.key.to_str().unwrap(),
    ]
}

fn assert_not_authorized(node: &mut Node, what: &str) {
    let record = node.outcome("inbound");
    assert_eq!(
        (record["achieved"].as_str(), record["reason"].as_str()),
        (Some("refused"), Some("client-not-authorized")),
        "{what}: {record}"
    );
}

/// Issue 11: "a node pair under one control plane shows `authenticated`/`fleet` on both
/// records" — the inbound side no longer says `encrypted` about a registered node.
fn a_fleet_pair_is_authenticated_fleet_on_both_records(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), io, "");
    let (out, inb) = f.through_a();
    assert_eq!(level(&out), ("authenticated", "fleet", "none"), "{out}");
    assert_fleet_client(&inb);
    assert_eq!(
        f.b.metric(
            "osgate_connections_total",
            &[("direction", "inbound"), ("achieved", "authenticated")]
        ),
        1.0
    );
    // Without the node key, the same listener (clients = "any" by default) sees a foreign
    // client: encrypted, no name.
    assert_eq!(
        openssl_client(f.b_addr, &[]),
        String::from_utf8_lossy(REPLY)
    );
    let foreign = f.b.outcome("inbound");
    assert_eq!(level(&foreign).0, "encrypted", "{foreign}");
    assert!(
        foreign["client"].as_str().is_none_or(str::is_empty),
        "{foreign}"
    );
}

/// `clients = "fleet"`: no certificate, a certificate of a key the fleet does not know, and a
/// cleartext client are refused `client-not-authorized`, and none of them reaches the
/// backend; node A still gets through.
fn clients_fleet_refuses_foreign_clients_and_the_backend_sees_none(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), io, "clients = \"fleet\"");
    assert_eq!(openssl_client(f.b_addr, &[]), "", "no certificate");
    assert_not_authorized(&mut f.b, "no certificate");
    let foreign = keygen(dir.path(), "foreign");
    assert_eq!(
        openssl_client(f.b_addr, &presenting(&foreign)),
        "",
        "foreign"
    );
    assert_not_authorized(&mut f.b, "a foreign certificate");
    assert_eq!(peers::call(f.b_addr, PING), b"", "cleartext");
    assert_not_authorized(&mut f.b, "a cleartext client");

    let (out, inb) = f.through_a();
    assert_eq!(level(&out), ("authenticated", "fleet", "none"), "{out}");
    assert_fleet_client(&inb);
    assert_eq!(
        f.backend.accepted(),
        1,
        "only the fleet node reached the backend"
    );
    assert_eq!(
        f.b.metric(
            "osgate_connections_total",
            &[("achieved", "refused"), ("reason", "client-not-authorized")]
        ),
        3.0
    );
}

/// `clients = "any"`, written out: a client without a certificate is served, encrypted.
fn clients_any_serves_an_openssl_client_without_a_certificate(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), io, "clients = \"any\"");
    assert_eq!(
        openssl_client(f.b_addr, &[]),
        String::from_utf8_lossy(REPLY)
    );
    assert_eq!(f.backend.received(), PING);
    let record = f.b.outcome("inbound");
    assert_eq!(level(&record), ("encrypted", "none", "none"), "{record}");
    assert_eq!(record["tls_version"], "TLSv1_3");
    let (_, inb) = f.through_a();
    assert_fleet_client(&inb);
}

/// `clients = ["sha256/…"]` on a node without a control plane: the pinned client is
/// `authenticated`/`pinned`; another certificate and no certificate are refused, and only
/// the pinned client reaches the backend.
fn clients_pins_admit_the_pinned_client_only(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let (server, pinned, other) = (
        keygen(dir.path(), "server"),
        keygen(dir.path(), "pinned"),
        keygen(dir.path(), "other"),
    );
    let clients = format!("clients = [\"{}\"]", pinned.pin);
    let listen = free_port();
    let mut node = Node::start(
        dir.path(),
        io,
        "",
        &inbound(listen, backend.addr, &server, &clients),
    );
    assert_eq!(openssl_client(listen, &presenting(&other)), "", "other key");
    assert_not_authorized(&mut node, "another certificate");
    assert_eq!(openssl_client(listen, &[]), "", "no certificate");
    assert_not_authorized(&mut node, "no certificate");

    let served = openssl_client(listen, &presenting(&pinned));
    assert_eq!(served, String::from_utf8_lossy(REPLY));
    assert_eq!(backend.received(), PING);
    let record = node.outcome("inbound");
    assert_eq!(
        level(&record),
        ("authenticated", "pinned", "none"),
        "{record}"
    );
    assert_eq!(
        backend.accepted(),
        1,
        "only the pinned client reached the backend"
    );
}

/// `clients = ["fleet", "sha256/…"]`: node A and the pinned client are both served, each
/// named by what it proved; a foreign key is still refused.
fn clients_fleet_and_a_pin_admit_both_and_no_one_else(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pinned = keygen(dir.path(), "pinned");
    let clients = format!("clients = [\"fleet\", \"{}\"]", pinned.pin);
    let mut f = fleet(dir.path(), io, &clients);
    let (_, inb) = f.through_a();
    assert_fleet_client(&inb);
    let served = openssl_client(f.b_addr, &presenting(&pinned));
    assert_eq!(served, String::from_utf8_lossy(REPLY));
    let record = f.b.outcome("inbound");
    assert_eq!(
        level(&record),
        ("authenticated", "pinned", "none"),
        "{record}"
    );
    let foreign = keygen(dir.path(), "foreign");
    assert_eq!(openssl_client(f.b_addr, &presenting(&foreign)), "");
    assert_not_authorized(&mut f.b, "a foreign certificate");
    assert_eq!(f.backend.accepted(), 2);
}

/// An `[[inbound]]` rule in the policy file (`osgatectl apply -f`) replaces B's own
/// `clients = "any"` for that listener; deleting the rule gives the listener its own back.
fn a_control_plane_inbound_policy_replaces_the_local_clients(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), io, "clients = \"any\"");
    assert_eq!(
        openssl_client(f.b_addr, &[]),
        String::from_utf8_lossy(REPLY)
    );
    assert_eq!(level(&f.b.outcome("inbound")).0, "encrypted");

    let rule = format!(
        "[[inbound]]\nname = \"b-fleet-only\"\nlistener = \"{}\"\nclients = \"fleet\"\n",
        f.b_addr
    );
    let applied = revision(&f.cp.apply(dir.path(), &rule, &[]).json());
    wait_applied(&mut f.b, applied);
    assert_eq!(openssl_client(f.b_addr, &[]), "", "fleet only now");
    assert_not_authorized(&mut f.b, "no certificate under the fleet's rule");
    let (_, inb) = f.through_a();
    assert_fleet_client(&inb);

    let deleted = revision(&f.cp.admin_json(&["delete", "b-fleet-only"]));
    wait_applied(&mut f.b, deleted);
    assert_eq!(
        openssl_client(f.b_addr, &[]),
        String::from_utf8_lossy(REPLY)
    );
    assert_eq!(level(&f.b.outcome("inbound")).0, "encrypted", "any again");
    assert_eq!(
        f.backend.accepted(),
        3,
        "the refused client never reached it"
    );
}

/// An update upserting one `InboundPolicy` for `listener` (a snapshot at revision 1).
fn inbound_policy_update(
    revision: u64,
    listener: SocketAddr,
    clients: &str,
    requires: &str,
) -> Vec<u8> {
    let policy = pb::InboundPolicy {
        name: "listener-rule".into(),
        listener: listener.to_string(),
        clients: vec![clients.into()],
        requires: vec![requires.into()],
    };
    pb::Update {
        revision,
        snapshot: revision == 1,
        upserts: vec![pb::Resource {
            kind: Some(pb::resource::Kind::Inbound(policy)),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// Issue 11, part 6: an InboundPolicy that requires a feature the node lacks is NACKed,
/// naming it, and the one before it (requiring `inbound-clients.v1`, which the node has)
/// stays in force: the pinned client only, not the local or the newer "any".
fn an_inbound_policy_requiring_an_unknown_feature_is_nacked(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let listen = free_port();
    let pinned = keygen(dir.path(), "pinned");
    let updates = vec![
        inbound_policy_update(1, listen, &pinned.pin, "inbound-clients.v1"),
        inbound_policy_update(2, listen, "any", "inbound-clients.v2"),
    ];
    let hostile = HostileControlPlane::start(dir.path(), updates);
    let key = keygen(dir.path(), "n1");
    let body = format!(
        "{}\n{}",
        inbound(listen, backend.addr, &key, "clients = \"any\""),
        hostile.section(&key, &dir.path().join("n1.lkg"))
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    assert_eq!(hostile.reply(), Msg::Ack(pb::Ack { revision: 1 }));
    let Msg::Nack(nack) = hostile.reply() else {
        panic!("the InboundPolicy requiring inbound-clients.v2 was not NACKed");
    };
    assert_eq!(nack.revision, 2);
    assert!(
        nack.error.contains("inbound-clients.v2"),
        "{:?}",
        nack.error
    );
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");
    assert_eq!(node.metric("osgate_controlplane_revision", &[]), 1.0);

    assert_eq!(openssl_client(listen, &[]), "", "revision 1 is in force");
    assert_not_authorized(&mut node, "no certificate under revision 1");
    let served = openssl_client(listen, &presenting(&pinned));
    assert_eq!(served, String::from_utf8_lossy(REPLY));
    assert_eq!(level(&node.outcome("inbound")).1, "pinned");
    assert_eq!(
        backend.accepted(),
        1,
        "only the pinned client reached the backend"
    );
}

/// As for `[[policy]]` (controlplane.rs): the control plane stores an `[[inbound]]` rule
/// that needs a feature some nodes lack (a fleet upgrades node by node); B NACKs it, naming
/// the feature, keeps serving on its own `clients = "any"`, and is back in sync once the
/// rule is deleted.
fn an_inbound_rule_needing_a_newer_node_is_stored_and_nacked_by_the_node(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), io, "clients = \"any\"");
    let rule = format!(
        "[[inbound]]\nname = \"future-clients\"\nlistener = \"{}\"\nclients = \"fleet\"\nrequires = [\"inbound-clients.v2\"]\n",
        f.b_addr
    );
    let bad = revision(&f.cp.apply(dir.path(), &rule, &[]).json());
    f.b.wait_for(|v| {
        v["message"] == "refused control plane update; keeping the last-known-good"
            && v["revision"] == bad
    });
    osgate_tests::eventually("the control plane shows B's NACK", || {
        f.cp.node("b").is_some_and(|b| b["nacked_revision"] == bad)
    });
    let status = f.cp.node("b").unwrap();
    let error = status["nack_error"].as_str().unwrap_or("");
    assert!(error.contains("inbound-clients.v2"), "{status}");

    assert_eq!(
        openssl_client(f.b_addr, &[]),
        String::from_utf8_lossy(REPLY)
    );
    assert_eq!(
        level(&f.b.outcome("inbound")).0,
        "encrypted",
        "the rule is not in force"
    );
    let fixed = revision(&f.cp.admin_json(&["delete", "future-clients"]));
    wait_applied(&mut f.b, fixed);
}

/// A `clients` value the node does not know is a config error naming the file, the key and
/// the value; so are a pin that is not one and `any` among others.
#[test]
fn clients_config_errors_name_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "node", "gw.test");
    let path = dir.path().join("osgate.toml");
    for (clients, value) in [
        ("\"everyone\"", "everyone"),
        ("[\"fleet\", \"sha256/not-a-pin\"]", "sha256/not-a-pin"),
        // `any` with others would silently mean everyone.
        ("[\"any\", \"fleet\"]", "any"),
    ] {
        let body = format!(
            "[[inbound]]\nlisten = \"127.0.0.1:7443\"\nbackend = \"127.0.0.1:8080\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclients = {clients}\n",
            pem.cert.display(),
            pem.key.display()
        );
        std::fs::write(&path, body).unwrap();
        let (code, err) = osgate(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "clients = {clients}: {err}");
        let expected = format!("config error: {}: inbound[0].clients: ", path.display());
        assert!(
            err.starts_with(&expected),
            "expected `{expected}…`, got `{err}`"
        );
        assert!(err.contains(value), "the value is named: {err}");
    }
}
