//! Two osgate nodes (outbound → inbound) carrying traffic to a backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use osgate_tests::certs;
use osgate_tests::peers::{self, Seen, Server, Stream};
use osgate_tests::{Io, Node, per_driver};

const MB: u64 = 1_000_000;

per_driver!(
    bulk_100_mb_each_way_is_encrypted_and_intact,
    half_close_carries_the_reply
);

/// Starts inbound node (to `backend`) and outbound node (to the inbound node).
fn pair(dir: &std::path::Path, io: Io, backend: std::net::SocketAddr) -> (Node, Node) {
    let pem = certs::self_signed(dir, "node", "gw.test");
    let inbound = Node::start(
        dir,
        io,
        "",
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            pem.cert.display(),
            pem.key.display()
        ),
    );
    let peer = inbound.addr("inbound[0]");
    let outbound = Node::start(
        dir,
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"encrypt\"\n"
        ),
    );
    (inbound, outbound)
}

fn bulk_100_mb_each_way_is_encrypted_and_intact(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(|stream| peers::exchange(stream, 2, 100 * MB).unwrap());
    let (mut inbound, mut outbound) = pair(dir.path(), io, backend.addr);

    let client = TcpStream::connect(outbound.addr("outbound[0]")).unwrap();
    let client_saw = peers::exchange(client, 1, 100 * MB).unwrap();

    assert_eq!(
        client_saw,
        Stream::expected(2, 100 * MB),
        "backend → client stream"
    );
    let backend_saw: Seen = backend.result();
    assert_eq!(
        backend_saw,
        Stream::expected(1, 100 * MB),
        "client → backend stream"
    );

    let out = outbound.outcome("outbound");
    assert_eq!(out["achieved"], "encrypted");
    assert_eq!(out["method"], "none");
    assert_eq!(out["reason"], "certificate-not-trusted");
    assert_eq!(out["tls_version"], "TLSv1_3");
    assert_eq!(out["tls_group"], "X25519MLKEM768");
    assert_eq!(out["bytes_up"], 100 * MB);
    assert_eq!(out["bytes_down"], 100 * MB);
    assert_eq!(out["close"], "clean");
    let inb = inbound.outcome("inbound");
    assert_eq!(inb["achieved"], "encrypted");
    assert_eq!(inb["bytes_up"], 100 * MB);
    assert_eq!(inb["bytes_down"], 100 * MB);
    assert_eq!(inb["close"], "clean");

    let encrypted = [("direction", "outbound"), ("achieved", "encrypted")];
    assert_eq!(outbound.metric("osgate_connections_total", &encrypted), 1.0);
    assert_eq!(
        outbound.metric("osgate_bytes_total", &encrypted),
        200.0 * MB as f64
    );
    assert_eq!(
        outbound.metric("osgate_io_driver_info", &[("driver", io.as_str())]),
        1.0
    );
    assert_eq!(
        outbound.metric("osgate_cleartext_despite_policy_total", &[]),
        0.0
    );
    assert_eq!(
        outbound.metric("osgate_connections_active", &[("direction", "outbound")]),
        0.0
    );
}

fn half_close_carries_the_reply(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::reply_after_eof);
    let (mut inbound, mut outbound) = pair(dir.path(), io, backend.addr);

    let mut client = TcpStream::connect(outbound.addr("outbound[0]")).unwrap();
    client.set_read_timeout(Some(osgate_tests::WAIT)).unwrap();
    client.write_all(b"request body").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();

    assert_eq!(reply, "got 12 bytes");
    assert_eq!(backend.result(), 12);
    let out = outbound.outcome("outbound");
    assert_eq!(
        (out["close"].as_str(), out["bytes_up"].as_u64()),
        (Some("clean"), Some(12))
    );
    let inb = inbound.outcome("inbound");
    assert_eq!(
        (inb["close"].as_str(), inb["bytes_down"].as_u64()),
        (Some("clean"), Some(12))
    );
}
