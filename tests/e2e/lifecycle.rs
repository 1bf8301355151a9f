//! The node's lifecycle as an operator drives it: SIGHUP and changed key files reload,
//! SIGTERM drains, systemd hears about both, state lives in the state folder (CONFORMANCE
//! H.51, K.60–K.62).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc::{Receiver, channel};

use osgate_tests::certs::{self, Pem, pin_of};
use osgate_tests::controlplane::{ControlPlane, keygen, revision, wait_applied};
use osgate_tests::dns::{Testbed, Zones};
use osgate_tests::node::{free_port, is_reload_end};
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Seen, Server, Stream};
use osgate_tests::process::http_get;
use osgate_tests::{Io, Node, WAIT, per_driver};

per_driver!(
    a_rotated_key_and_sighup_leave_the_live_transfer_intact_and_the_next_connection_gets_the_new_key,
    a_rotated_key_file_reloads_without_a_signal,
    a_broken_config_on_sighup_changes_nothing_and_says_why,
    a_reload_adds_and_removes_listeners_and_removed_ones_keep_their_connections,
    sigterm_lets_a_transfer_finish_and_cuts_what_outlives_the_drain,
    a_reloaded_policy_applies_to_new_connections_while_open_ones_keep_theirs,
    a_reload_that_adds_a_control_plane_follows_it,
    a_reload_onto_another_control_plane_drops_the_old_ones_rules,
    a_reload_that_turns_tofu_on_pins_the_next_peer_key,
    a_reload_that_adds_dns_runs_its_self_test_and_a_broken_one_is_refused,
);

const HALF: u64 = 8_000_000;

fn inbound_config(pem: &Pem, backend: SocketAddr, listen: &str) -> String {
    format!(
        "[[inbound]]\nlisten = \"{listen}\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        pem.cert.display(),
        pem.key.display()
    )
}

/// An outbound node that reports the key it saw, whatever it is (no TOFU).
fn outbound_to(dir: &Path, io: Io, peer: SocketAddr) -> Node {
    Node::start(
        dir,
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"encrypt\"\n[tofu]\nmode = \"off\"\nratchet_hours = 0\n"
        ),
    )
}

/// `osgate_config_reloads_total`: (succeeded, refused).
fn reloads(node: &Node) -> (f64, f64) {
    let count = |result| node.metric("osgate_config_reloads_total", &[("result", result)]);
    (count("success"), count("failure"))
}

/// The text a node started with, `[node]` included.
fn config_of(node: &Node) -> String {
    std::fs::read_to_string(&node.config).unwrap()
}

/// A connection through `addr` (to an echo backend) that sent `first` and got it back: open
/// and relaying.
fn open_echoed(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(first).unwrap();
    let mut echo = vec![0u8; first.len()];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(echo, first);
    stream
}

/// Sends `last` on an [`open_echoed`] connection, half-closes, and returns the rest.
fn finish(mut stream: TcpStream, last: &[u8]) -> Vec<u8> {
    stream.write_all(last).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    rest
}

/// A client that sends `2 * HALF` bytes through `addr`, pausing after the first half until
/// told to go on, while reading the echo; returns the reader's result.
struct PausedTransfer {
    resume: std::sync::mpsc::Sender<()>,
    reader: std::thread::JoinHandle<Seen>,
}

impl PausedTransfer {
    fn start(addr: SocketAddr) -> (Self, Receiver<()>) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let (resume, resumed) = channel();
        let (paused_tx, paused) = channel();
        std::thread::spawn(move || {
            let mut source = Stream::new(7, 2 * HALF);
            let mut buf = vec![0; 64 * 1024];
            let mut sent = 0;
            loop {
                if sent == HALF {
                    paused_tx.send(()).unwrap();
                    resumed.recv().unwrap();
                }
                // Chunks end exactly at the pause.
                let left_in_half = if sent < HALF { HALF - sent } else { u64::MAX };
                let want = buf.len().min(left_in_half as usize);
                let n = source.fill(&mut buf[..want]);
                if n == 0 {
                    break;
                }
                writer.write_all(&buf[..n]).unwrap();
                sent += n as u64;
            }
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut stream = stream;
            peers::receive(&mut stream).unwrap()
        });
        (Self { resume, reader }, paused)
    }

    fn finish(self) -> Seen {
        self.resume.send(()).unwrap();
        self.reader.join().unwrap()
    }
}

fn a_rotated_key_and_sighup_leave_the_live_transfer_intact_and_the_next_connection_gets_the_new_key(
    io: Io,
) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let old = certs::self_signed(dir.path(), "node", "gw.test");
    let old_pin = pin_of(&old);
    let mut inbound = Node::start(
        dir.path(),
        io,
        "",
        &inbound_config(&old, backend.addr, "127.0.0.1:0"),
    );
    let mut outbound = outbound_to(dir.path(), io, inbound.addr("inbound[0]"));
    let (transfer, paused) = PausedTransfer::start(outbound.addr("outbound[0]"));
    paused.recv_timeout(WAIT).unwrap();

    let new = certs::self_signed(dir.path(), "node", "gw.test");
    assert_ne!(pin_of(&new), old_pin);
    let reloaded = inbound.reload(&config_of(&inbound));
    assert_eq!(reloaded["trigger"], "SIGHUP", "{reloaded}");
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs"
    );

    assert_eq!(
        transfer.finish(),
        Stream::expected(7, 2 * HALF),
        "the live transfer is intact"
    );
    let first = outbound.outcome("outbound");
    assert_eq!(
        (first["close"].as_str(), first["peer_key"].as_str()),
        (Some("clean"), Some(old_pin.as_str())),
        "{first}"
    );
    assert_eq!(first["bytes_up"], 2 * HALF);

    assert_eq!(peers::call(outbound.addr("outbound[0]"), b"next"), b"next");
    let second = outbound.outcome("outbound");
    assert_eq!(
        second["peer_key"].as_str(),
        Some(pin_of(&new).as_str()),
        "{second}"
    );
    assert_eq!(reloads(&inbound), (1.0, 0.0), "(succeeded, refused)");
}

fn a_rotated_key_file_reloads_without_a_signal(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let old = certs::self_signed(dir.path(), "node", "gw.test");
    let mut inbound = Node::start(
        dir.path(),
        io,
        "",
        &inbound_config(&old, backend.addr, "127.0.0.1:0"),
    );
    let before = inbound.metric("osgate_config_last_reload_success_timestamp_seconds", &[]);
    assert!(before > 0.0);
    let seen = inbound.log().len();
    let new = certs::self_signed(dir.path(), "node", "gw.test");
    let reloaded = inbound.wait_after(seen, is_reload_end);
    assert_eq!(
        reloaded["trigger"], "a certificate or key file changed",
        "{reloaded}"
    );
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs",
        "{reloaded}"
    );
    let mut outbound = outbound_to(dir.path(), io, inbound.addr("inbound[0]"));
    assert_eq!(peers::call(outbound.addr("outbound[0]"), b"x"), b"x");
    let out = outbound.outcome("outbound");
    assert_eq!(
        out["peer_key"].as_str(),
        Some(pin_of(&new).as_str()),
        "{out}"
    );
}

fn a_broken_config_on_sighup_changes_nothing_and_says_why(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    let good = config_of(&node);

    // A bad value: refused with file, key and reason; the listener serves as before.
    let refused = node.reload(&good.replace("\"cleartext\"", "\"sometimes\""));
    let error = refused["error"].as_str().unwrap();
    let expected = format!(
        "{}: outbound[0].policy: unknown policy `sometimes`",
        node.config.display()
    );
    assert!(error.starts_with(&expected), "{error}");
    assert_eq!(peers::call(node.addr("outbound[0]"), b"still"), b"still");
    assert_eq!(node.outcome("outbound")["achieved"], "cleartext");

    // A new listener on a port another process holds: refused whole, before any swap.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let clash = format!(
        "{good}[[outbound]]\nlisten = \"{taken}\"\npeer = \"{}\"\n",
        backend.addr
    );
    let refused = node.reload(&clash.replace("\"cleartext\"", "\"encrypt\""));
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot listen on {taken}")),
        "{error}"
    );
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"unchanged"),
        b"unchanged"
    );
    let out = node.outcome("outbound");
    assert_eq!(
        out["achieved"], "cleartext",
        "the policy did not change either: {out}"
    );
    assert_eq!(reloads(&node), (0.0, 2.0), "(succeeded, refused)");
}

fn a_reload_adds_and_removes_listeners_and_removed_ones_keep_their_connections(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let first = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &first);
    let head = config_of(&node);
    let old_addr = node.addr("outbound[0]");
    let live = open_echoed(old_addr, b"before ");

    let extra_addr = free_port();
    let second = format!(
        "[[outbound]]\nlisten = \"{extra_addr}\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let seen = node.log().len();
    let added = node.reload(&format!("{head}{second}"));
    assert_eq!(
        (added["added"].as_u64(), added["kept"].as_u64()),
        (Some(1), Some(1)),
        "{added}"
    );
    let listening = node.wait_after(seen, |v| v["message"] == "listening");
    assert_eq!(listening["key"], "outbound[1]");
    assert_eq!(peers::call(extra_addr, b"new"), b"new");
    node.outcome("outbound");

    let only_second = head.replace(&first, "") + &second;
    let removed = node.reload(&only_second);
    assert_eq!(
        (removed["removed"].as_u64(), removed["kept"].as_u64()),
        (Some(1), Some(1)),
        "{removed}"
    );
    let refused = TcpStream::connect(old_addr);
    assert!(
        refused.is_err(),
        "the removed listener is closed: {refused:?}"
    );
    assert_eq!(
        finish(live, b"after"),
        b"after",
        "the open connection went on"
    );
    let out = node.outcome("outbound");
    assert_eq!(
        (out["close"].as_str(), out["listener"].as_str()),
        (Some("clean"), Some("127.0.0.1:0")),
        "{out}"
    );
}

fn sigterm_lets_a_transfer_finish_and_cuts_what_outlives_the_drain(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "drain_timeout_ms = 3000", &body);
    let addr = node.addr("outbound[0]");
    let metrics = node.metrics.unwrap();
    let (transfer, paused) = PausedTransfer::start(addr);
    paused.recv_timeout(WAIT).unwrap();
    let mut idle = open_echoed(addr, b"hold");

    let seen = node.log().len();
    node.signal("TERM");
    let draining = node.wait_after(seen, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))
    });
    assert_eq!(draining["open"], 2, "{draining}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a draining node accepts no new connection"
    );
    let (status, why) = http_get(metrics, "/ready");
    assert_eq!((status, why.trim()), (503, "not ready: draining"));
    assert_eq!(http_get(metrics, "/live").0, 200);

    assert_eq!(
        transfer.finish(),
        Stream::expected(7, 2 * HALF),
        "the transfer finished during the drain"
    );
    let done = node.outcome("outbound");
    assert_eq!(
        (done["close"].as_str(), done["bytes_up"].as_u64()),
        (Some("clean"), Some(2 * HALF)),
        "{done}"
    );
    let cut = node.outcome("outbound");
    assert_eq!(
        (cut["close"].as_str(), cut["bytes_up"].as_u64()),
        (Some("drained"), Some(4)),
        "{cut}"
    );
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert_eq!(node.exit_code(), Some(0));
    let stopped = node
        .log()
        .iter()
        .find(|v| v["message"] == "drained; stopping")
        .cloned()
        .unwrap();
    assert_eq!(stopped["open"], 0, "{stopped}");
}

fn a_reloaded_policy_applies_to_new_connections_while_open_ones_keep_theirs(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    let addr = node.addr("outbound[0]");
    let open = open_echoed(addr, b"one ");

    let stricter = format!(
        "{}[[policy]]\nmatch = \"{}\"\nlevel = \"encrypt\"\n",
        config_of(&node),
        backend.addr.ip()
    );
    let reloaded = node.reload(&stricter);
    assert_eq!(reloaded["kept"], 1, "{reloaded}");
    assert_eq!(
        peers::call(addr, b"new"),
        b"",
        "a new connection gets the new policy"
    );
    let out = node.outcome("outbound");
    // The echo peer answers the ClientHello with itself: not TLS, and this rule needs TLS.
    let decided = (
        out["achieved"].as_str(),
        out["desired"].as_str(),
        out["policy"].as_str(),
    );
    assert_eq!(
        decided,
        (Some("refused"), Some("encrypt"), Some("policy[0]")),
        "{out}"
    );

    let rest = finish(open, b"two");
    assert_eq!(rest, b"two", "the open connection kept its policy");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["close"].as_str()),
        (Some("cleartext"), Some("clean")),
        "{out}"
    );
}

fn a_reload_that_adds_a_control_plane_follows_it(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("cp.db").display().to_string();
    let cp = ControlPlane::start(dir.path(), &url, "");
    let backend = Server::start(peers::echo);
    let key = keygen(dir.path(), "n1");
    cp.register_serving("n1", &key, &[], &[backend.addr]);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"x");
    node.outcome("outbound");

    let deny = format!(
        "[[policy]]\nname = \"no-lab\"\nmatch = \"{}\"\nlevel = \"deny\"\n",
        backend.addr.ip()
    );
    let rev = revision(&cp.apply(dir.path(), &deny, &[]).json());
    let section = cp.section(&key, &dir.path().join("n1.lkg"), "");
    let reloaded = node.reload(&format!("{}\n{section}", config_of(&node)));
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs",
        "{reloaded}"
    );
    wait_applied(&mut node, rev);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    let out = node.outcome("outbound");
    assert_eq!(out["reason"], "policy-deny", "{out}");
}

/// A reload onto another control plane (no last-known-good of it yet) serves this node's
/// own rules until that one answers — never the previous control plane's leftovers.
fn a_reload_onto_another_control_plane_drops_the_old_ones_rules(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("cp.db").display().to_string();
    let cp = ControlPlane::start(dir.path(), &url, "");
    let backend = Server::start(peers::echo);
    let key = keygen(dir.path(), "n1");
    cp.register_serving("n1", &key, &[], &[backend.addr]);
    let deny = format!(
        "[[policy]]\nname = \"no-lab\"\nmatch = \"{}\"\nlevel = \"deny\"\n",
        backend.addr.ip()
    );
    let rev = revision(&cp.apply(dir.path(), &deny, &[]).json());
    let section = cp.section(&key, &dir.path().join("a.lkg"), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n\n{section}",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    wait_applied(&mut node, rev);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    assert_eq!(node.outcome("outbound")["reason"], "policy-deny");

    let elsewhere = free_port();
    let moved = config_of(&node)
        .replace(&cp.addr.to_string(), &elsewhere.to_string())
        .replace("a.lkg", "b.lkg");
    let reloaded = node.reload(&moved);
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs",
        "{reloaded}"
    );
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"own rules"),
        b"own rules"
    );
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["policy"].as_str()),
        (Some("cleartext"), Some("listener")),
        "{out}"
    );
}

/// `[tofu]` turned on by a reload: the next connections learn and then check the peer's key.
fn a_reload_that_turns_tofu_on_pins_the_next_peer_key(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let key = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&key, &[]);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n",
        server.addr
    );
    let off = "[tofu]\nmode = \"off\"\nratchet_hours = 0\n";
    let mut node = Node::start(dir.path(), io, "", &format!("{body}{off}"));
    server.send_line(node.addr("outbound[0]"), "before");
    assert_eq!(
        node.outcome("outbound")["reason"],
        "certificate-not-trusted"
    );

    let on = config_of(&node).replace(off, "");
    let reloaded = node.reload(&on);
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs",
        "{reloaded}"
    );
    server.send_line(node.addr("outbound[0]"), "learns");
    assert_eq!(
        node.outcome("outbound")["reason"],
        "certificate-not-trusted"
    );
    server.send_line(node.addr("outbound[0]"), "checks");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["method"].as_str()),
        (Some("authenticated"), Some("tofu")),
        "{out}"
    );
}

/// `[dns]` given by a reload: the new resolver's self-test runs before the swap, and a
/// `[dns]` that cannot be read is refused with its key.
fn a_reload_that_adds_dns_runs_its_self_test_and_a_broken_one_is_refused(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dns = Testbed::start(dir.path(), &Zones::default());
    let backend = Server::start(peers::echo);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let off = "[dns]\ndane = false\n";
    let mut node = Node::start(dir.path(), io, "", &format!("{body}{off}"));
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 0.0);

    let broken = config_of(&node).replace(off, "[dns]\ntrust_anchor = \"missing.key\"\n");
    let refused = node.reload(&broken);
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains(": dns.trust_anchor: cannot read"), "{error}");

    let seen = node.log().len();
    let reloaded = node.reload(
        &config_of(&node).replace("[dns]\ntrust_anchor = \"missing.key\"\n", &dns.config()),
    );
    assert_eq!(
        reloaded["message"],
        "reloaded: new connections use the new config; open ones finish on theirs",
        "{reloaded}"
    );
    node.wait_after(seen, |v| {
        v["message"] == "DNSSEC validation works: DANE is on"
    });
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 1.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"x");
}
