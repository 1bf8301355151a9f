//! Endurance: keepalive on both legs (CONFORMANCE F.38), the descriptor limit raised at start,
//! and descriptor exhaustion (F.39) — checked against what the kernel reports for the node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use osgate_tests::peers::{self, Server};
use osgate_tests::sockets::{self, ESTABLISHED, TIMER_KEEPALIVE, TcpSocket};
use osgate_tests::{Io, Node, WAIT, certs, eventually, per_driver};

per_driver!(
    keepalive_is_on_for_both_legs_of_both_nodes,
    the_soft_descriptor_limit_is_raised_to_the_hard_one,
    descriptor_exhaustion_backs_off_quietly_and_recovers
);

/// What the node sets (io/mod.rs): 60 s idle, then 6 probes 10 s apart.
const KEEPALIVE: (bool, Duration, Duration, u32) =
    (true, Duration::from_secs(60), Duration::from_secs(10), 6);
const ACCEPT_FAILED: &str = "accept failed; backing off";

fn inbound_body(dir: &Path, backend: SocketAddr) -> String {
    let pem = certs::self_signed(dir, "node", "gw.test");
    format!(
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"allow\"\n",
        pem.cert.display(),
        pem.key.display()
    )
}

fn keepalive_is_on_for_both_legs_of_both_nodes(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let inbound = Node::start(dir.path(), io, "", &inbound_body(dir.path(), backend.addr));
    let peer = inbound.addr("inbound[0]");
    let outbound = Node::start(
        dir.path(),
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"encrypt\"\n"
        ),
    );
    let entry = outbound.addr("outbound[0]");

    // An echoed ping means all three connections (client, tunnel, backend) are up.
    let mut client = TcpStream::connect(entry).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");

    let legs = [
        (&outbound, "client leg", End::Local(entry)),
        (&outbound, "peer leg", End::Remote(peer)),
        (&inbound, "client leg", End::Local(peer)),
        (&inbound, "backend leg", End::Remote(backend.addr)),
    ];
    for (node, name, end) in legs {
        let socket = leg(node, end);
        let what = format!("{} node, {name}: {socket:?}", node_name(node, &outbound));
        assert_eq!(
            sockets::keepalive(node.pid(), socket.fd),
            KEEPALIVE,
            "{what}"
        );
        // The kernel's own view: once the last segment is acknowledged (no retransmit timer
        // pending), the keepalive timer runs, due within the idle time.
        eventually(&format!("keepalive timer pending on {what}"), || {
            let socket = leg(node, end);
            socket.timer == TIMER_KEEPALIVE && socket.timer_left <= KEEPALIVE.1
        });
    }
}

/// Which socket of a node: the one accepted on a local address, or connected to a remote one.
#[derive(Debug, Clone, Copy)]
enum End {
    Local(SocketAddr),
    Remote(SocketAddr),
}

/// The one established socket of `node` at `end`.
fn leg(node: &Node, end: End) -> TcpSocket {
    let found: Vec<TcpSocket> = sockets::tcp_sockets(node.pid())
        .into_iter()
        .filter(|s| s.state == ESTABLISHED)
        .filter(|s| match end {
            End::Local(addr) => s.local == addr,
            End::Remote(addr) => s.remote == addr,
        })
        .collect();
    assert_eq!(found.len(), 1, "one such socket: {found:?}");
    found[0].clone()
}

fn node_name(node: &Node, outbound: &Node) -> &'static str {
    match node.pid() == outbound.pid() {
        true => "outbound",
        false => "inbound",
    }
}

fn the_soft_descriptor_limit_is_raised_to_the_hard_one(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let body = inbound_body(dir.path(), backend.addr);
    let mut node = Node::start_limited(dir.path(), io, (256, 512), "", &body);

    let logged = node.wait_for(|v| v["message"] == "descriptor limit (RLIMIT_NOFILE)");
    let logged = ["soft", "hard", "raised_from"].map(|k| logged[k].as_u64());
    assert_eq!(logged, [Some(512), Some(512), Some(256)]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&open_files[3..5], ["512", "512"], "{limits}");
}

/// A node at its descriptor limit: clients that connect and stay silent hold one descriptor
/// each (a long peek timeout keeps them), so accept(2) fails with EMFILE.
fn descriptor_exhaustion_backs_off_quietly_and_recovers(io: Io) {
    const LIMIT: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let body = inbound_body(dir.path(), backend.addr);
    let (limit, extra) = (LIMIT as u64, "peek_timeout_ms = 120000");
    let mut node = Node::start_limited(dir.path(), io, (limit, limit), extra, &body);
    let addr = node.addr("inbound[0]");
    let descriptors = [("kind", "descriptors")];
    assert_eq!(node.metric("osgate_accept_errors_total", &descriptors), 0.0);

    let silent: Vec<TcpStream> = (0..LIMIT + 32)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let first = node.wait_for(|v| v["message"] == ACCEPT_FAILED);
    assert!(
        first["error"].as_str().unwrap().contains("os error 24"),
        "EMFILE: {first}"
    );
    let (started, cpu_before) = (Instant::now(), sockets::cpu_time(node.pid()));
    let held = sockets::descriptors(node.pid());
    assert!(
        held >= LIMIT,
        "the node is at its limit: {held} descriptors"
    );

    // The measured period itself (not a wait for an event): the node sits at its limit with
    // clients queued. A spinning accept loop burns a core and logs thousands of lines in it.
    let window = Duration::from_secs(3);
    let lines_before = count(&node, |v| v["message"] == ACCEPT_FAILED);
    std::thread::sleep(window);
    node.process.drain();
    let stalled = started.elapsed();
    let cpu = sockets::cpu_time(node.pid()) - cpu_before;
    assert!(
        cpu < stalled / 10,
        "CPU {cpu:?} over {stalled:?} stalled at the limit: the node spins"
    );
    let lines = count(&node, |v| v["message"] == ACCEPT_FAILED) - lines_before;
    // Per worker: the first failure, then one line per 10 s with the count.
    let bound = 2 * (stalled.as_secs() as usize / 10 + 1);
    assert!(
        lines <= bound,
        "{lines} '{ACCEPT_FAILED}' lines in {stalled:?}"
    );
    assert!(
        sockets::descriptors(node.pid()) >= LIMIT,
        "still at the limit after {stalled:?}"
    );

    drop(silent);
    assert_eq!(peers::call(addr, b"ping"), b"ping", "relays again");
    let recovered = node.wait_for(|v| v["message"] == "accept works again");
    assert!(recovered["failures"].as_u64().unwrap() >= 1, "{recovered}");
    assert!(node.metric("osgate_accept_errors_total", &descriptors) >= 1.0);
    assert!(node.is_running());
}

fn count(node: &Node, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
    node.log().iter().filter(|v| pred(v)).count()
}
