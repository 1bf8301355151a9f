//! Clients against an osgate inbound listener: OpenSSL, rustls, plain, silent and hostile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osgate_tests::certs;
use osgate_tests::openssl::s_client;
use osgate_tests::peers::{self, Server};
use osgate_tests::records;
use osgate_tests::{Io, Node, WAIT, per_driver};

per_driver!(
    openssl_client_is_terminated_and_relayed,
    plain_client_is_relayed_where_cleartext_is_allowed,
    plain_client_is_refused_where_cleartext_is_denied,
    slow_split_post_quantum_client_hello_is_accepted,
    client_hello_fragmented_across_records_is_accepted,
    silent_client_gets_server_first_banner_after_peek_deadline,
    silent_client_is_closed_at_deadline_when_tls_is_required,
    one_byte_then_silence_is_closed_at_deadline,
    tls_lookalike_garbage_is_rejected_and_counted,
    alert_after_client_hello_closes_promptly,
    hundreds_of_stalled_clients_are_closed_while_others_are_served,
    connections_over_a_cap_are_closed_at_once_and_live_ones_keep_flowing,
);

const PEEK_MS: u64 = 400;

fn inbound(dir: &Path, io: Io, backend: SocketAddr, cleartext: &str) -> Node {
    let pem = certs::self_signed(dir, "node", "gw.test");
    Node::start(
        dir,
        io,
        &format!("peek_timeout_ms = {PEEK_MS}"),
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"{cleartext}\"\n",
            pem.cert.display(),
            pem.key.display()
        ),
    )
}

fn openssl_client_is_terminated_and_relayed(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(5));
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    let out = s_client(
        node.addr("inbound[0]"),
        &["-servername", "gw.test"],
        b"hello",
    );
    assert_eq!(out, "got 5 bytes");
    assert_eq!(backend.result(), b"hello");
    let rec = node.outcome("inbound");
    assert_eq!(rec["achieved"], "encrypted");
    assert_eq!(rec["tls_version"], "TLSv1_3");
    assert_eq!(rec["bytes_up"], 5);
    assert_eq!(rec["bytes_down"], 11);
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[("direction", "inbound"), ("achieved", "encrypted")]
        ),
        1.0
    );
}

fn plain_client_is_relayed_where_cleartext_is_allowed(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::reply_after_eof);
    let mut node = inbound(dir.path(), io, backend.addr, "allow");
    assert_eq!(
        peers::call(node.addr("inbound[0]"), b"PING"),
        b"got 4 bytes"
    );
    let rec = node.outcome("inbound");
    assert_eq!(
        (rec["achieved"].as_str(), rec["reason"].as_str()),
        (Some("cleartext"), Some("client-no-tls"))
    );
    assert_eq!(rec["close"], "clean");
}

fn plain_client_is_refused_where_cleartext_is_denied(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::record);
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    assert_eq!(peers::call(node.addr("inbound[0]"), b"PING"), b"");
    let rec = node.outcome("inbound");
    assert_eq!(
        (rec["achieved"].as_str(), rec["reason"].as_str()),
        (Some("refused"), Some("cleartext-denied"))
    );
    assert!(
        backend.try_result().is_none(),
        "the backend was never contacted"
    );
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[("achieved", "refused"), ("reason", "cleartext-denied")]
        ),
        1.0
    );
}

/// A rustls client (default groups: post-quantum first) that accepts any server, and its
/// first flight: the ClientHello bytes it wants sent.
fn client_hello() -> (rustls::ClientConnection, Vec<u8>) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(osgate_tests::certs::AnyServer::default()))
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "gw.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    (conn, hello)
}

/// A rustls client (post-quantum key share: a ClientHello over 1 KiB) whose first flight is
/// written 7 bytes at a time, with pauses, then finishes the handshake normally.
fn slow_split_post_quantum_client_hello_is_accepted(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(4));
    let mut node = inbound(dir.path(), io, backend.addr, "deny");

    let (conn, hello) = client_hello();
    assert!(
        hello.len() > 1024,
        "post-quantum ClientHello is {} bytes",
        hello.len()
    );

    let mut tcp = TcpStream::connect(node.addr("inbound[0]")).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    for piece in hello.chunks(7) {
        tcp.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"ping").unwrap();
    let mut reply = String::new();
    let _ = tls.read_to_string(&mut reply);
    assert_eq!(reply, "got 4 bytes");
    assert_eq!(backend.result(), b"ping");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    drop(tls);
    let rec = node.outcome("inbound");
    assert_eq!(rec["close"], "clean");
    assert_eq!(rec["achieved"], "encrypted");
    assert_eq!(rec["tls_group"], "X25519MLKEM768");
}

/// CONFORMANCE A.1, RFC 8446 §5.1 ("a single message MAY be fragmented across several
/// records"): a real ClientHello re-framed with 1 to 5 handshake bytes in its first record,
/// and one handshake byte per record, completes its handshake through the node (issue 8
/// defect 4: these were refused as `malformed-client-hello`).
fn client_hello_fragmented_across_records_is_accepted(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(4));
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    let framings: Vec<Vec<usize>> = (1..=5)
        .map(|first| vec![first])
        .chain([vec![1; 2048]])
        .collect();
    for sizes in framings {
        let (conn, hello) = client_hello();
        let framed = records::reframe(&hello, &sizes);
        assert_eq!(
            records::handshake_bytes(&framed),
            records::handshake_bytes(&hello)
        );
        let mut tcp = TcpStream::connect(node.addr("inbound[0]")).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(&framed).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").unwrap();
        let mut reply = String::new();
        let _ = tls.read_to_string(&mut reply);
        assert_eq!(reply, "got 4 bytes", "first record of {} bytes", sizes[0]);
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        drop(tls);
        let rec = node.outcome("inbound");
        assert_eq!(
            (rec["achieved"].as_str(), rec["reason"].as_str()),
            (Some("encrypted"), Some("none")),
            "first record of {} bytes: {rec}",
            sizes[0]
        );
    }
    assert_eq!(
        node.metric("osgate_connections_total", &[("achieved", "encrypted")]),
        6.0
    );
}

fn silent_client_gets_server_first_banner_after_peek_deadline(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(|mut stream| {
        let _ = stream.write_all(b"220 ready\r\n");
        peers::record(stream)
    });
    let mut node = inbound(dir.path(), io, backend.addr, "allow");
    let started = Instant::now();
    let mut client = TcpStream::connect(node.addr("inbound[0]")).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 11];
    client.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    assert!(started.elapsed() >= Duration::from_millis(PEEK_MS));
    drop(client);
    let rec = node.outcome("inbound");
    assert_eq!(
        (rec["achieved"].as_str(), rec["reason"].as_str()),
        (Some("cleartext"), Some("client-silent"))
    );
}

/// Connects, optionally sends `first`, and returns how long until the node closed on us.
fn closed_after(addr: SocketAddr, first: &[u8]) -> Duration {
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(first).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no bytes before the close: {rest:?}");
    started.elapsed()
}

fn silent_client_is_closed_at_deadline_when_tls_is_required(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::record);
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    let waited = closed_after(node.addr("inbound[0]"), b"");
    assert!(
        waited >= Duration::from_millis(PEEK_MS) && waited < WAIT,
        "{waited:?}"
    );
    let rec = node.outcome("inbound");
    assert_eq!(
        (rec["achieved"].as_str(), rec["reason"].as_str()),
        (Some("refused"), Some("client-silent"))
    );
    assert!(backend.try_result().is_none());
}

fn one_byte_then_silence_is_closed_at_deadline(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::record);
    let mut node = inbound(dir.path(), io, backend.addr, "allow");
    let waited = closed_after(node.addr("inbound[0]"), &[0x16]);
    assert!(
        waited >= Duration::from_millis(PEEK_MS) && waited < WAIT,
        "{waited:?}"
    );
    let rec = node.outcome("inbound");
    assert_eq!(
        (rec["achieved"].as_str(), rec["reason"].as_str()),
        (Some("refused"), Some("client-silent"))
    );
}

fn tls_lookalike_garbage_is_rejected_and_counted(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::record);
    let mut node = inbound(dir.path(), io, backend.addr, "allow");
    for (bytes, kind) in [
        (&[0x16, 0x03, 0x01, 0x00, 0x00][..], "bad-record-length"),
        (&[0x80, 0x2e, 0x01, 0x00, 0x02][..], "sslv2-hello"),
        (
            &[0x16, 0x03, 0x01, 0x00, 0x30, 0x02, 0, 0, 0x2c, 3, 3][..],
            "not-client-hello",
        ),
    ] {
        closed_after(node.addr("inbound[0]"), bytes);
        let rec = node.outcome("inbound");
        assert_eq!(
            (rec["achieved"].as_str(), rec["reason"].as_str()),
            (Some("refused"), Some("malformed-client-hello"))
        );
        assert_eq!(
            node.metric("osgate_detect_rejected_total", &[("kind", kind)]),
            1.0,
            "{kind}"
        );
    }
    assert!(backend.try_result().is_none());
}

fn alert_after_client_hello_closes_promptly(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::record);
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    let (_, mut hello) = client_hello();
    // close_notify alert in a plaintext record (TLS 1.3 before keys: RFC 8446 §6).
    hello.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    let started = Instant::now();
    let mut client = TcpStream::connect(node.addr("inbound[0]")).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(&hello).unwrap();
    let _ = client.shutdown(Shutdown::Write); // the node may already have closed
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(PEEK_MS),
        "closed after {waited:?}"
    );
    let rec = node.outcome("inbound");
    assert_eq!(rec["achieved"], "refused");
    assert!(backend.try_result().is_none());
}

/// CONFORMANCE A.3 / F.35: stalled clients (silent, or one byte of a TLS header) are closed
/// at their deadline, nothing piles up, and the listener keeps serving others meanwhile.
fn hundreds_of_stalled_clients_are_closed_while_others_are_served(io: Io) {
    const STALLED: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::read_then_reply(5));
    let mut node = inbound(dir.path(), io, backend.addr, "deny");
    let addr = node.addr("inbound[0]");
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 1 {
                s.write_all(&[0x16]).unwrap();
            }
            s
        })
        .collect();
    assert_eq!(
        s_client(addr, &[], b"hello"),
        "got 5 bytes",
        "served while others stall"
    );
    for s in &mut stalled {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    let mut silent = 0;
    for _ in 0..=STALLED {
        let rec = node.outcome("inbound");
        if rec["reason"] == "client-silent" {
            silent += 1;
        }
    }
    assert_eq!(silent, STALLED);
    assert_eq!(
        node.metric("osgate_connections_active", &[("direction", "inbound")]),
        0.0
    );
}

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.x).
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Sends `bytes` and reads them back from the echoing backend: the node admitted and relays
/// this connection.
fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    let mut back = vec![0; bytes.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, bytes);
}

/// Connects from `source`, sends nothing, and returns how long until the node closed.
fn refused_after(source: [u8; 4], addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = connect_from(source, addr);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest); // EOF or reset: both are a close
    assert!(
        rest.is_empty(),
        "no bytes from a refused connection: {rest:?}"
    );
    started.elapsed()
}

/// CONFORMANCE F.36 (issue 8 defect 10): with `max_connections = 3` and
/// `max_connections_per_source = 2`, a third connection from one address and a fourth from
/// anywhere are closed at once — well before the peek deadline, so before any peek — and
/// counted by reason, while the admitted connections keep relaying.
fn connections_over_a_cap_are_closed_at_once_and_live_ones_keep_flowing(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let pem = certs::self_signed(dir.path(), "node", "gw.test");
    let node = Node::start(
        dir.path(),
        io,
        &format!(
            "peek_timeout_ms = {PEEK_MS}\nmax_connections = 3\nmax_connections_per_source = 2"
        ),
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"allow\"\n",
            backend.addr,
            pem.cert.display(),
            pem.key.display()
        ),
    );
    let addr = node.addr("inbound[0]");
    let scrape = node.scrape();
    for reason in ["global-cap", "per-source-cap"] {
        let line = format!("osgate_connections_refused_total{{reason=\"{reason}\"}} 0");
        assert!(scrape.contains(&line), "exported at 0 from start: {line}");
    }
    let refused = |reason| node.metric("osgate_connections_refused_total", &[("reason", reason)]);

    let mut live = connect_from([127, 0, 0, 1], addr);
    round_trip(&mut live, b"first");
    let mut second = connect_from([127, 0, 0, 1], addr);
    round_trip(&mut second, b"second");
    let waited = refused_after([127, 0, 0, 1], addr);
    assert!(
        waited < Duration::from_millis(PEEK_MS),
        "closed after {waited:?}"
    );
    assert_eq!(refused("per-source-cap"), 1.0);
    assert_eq!(refused("global-cap"), 0.0);
    round_trip(&mut live, b"still relayed after a per-source refusal");

    let mut third = connect_from([127, 0, 0, 2], addr);
    round_trip(&mut third, b"another source");
    let waited = refused_after([127, 0, 0, 3], addr);
    assert!(
        waited < Duration::from_millis(PEEK_MS),
        "closed after {waited:?}"
    );
    assert_eq!(refused("global-cap"), 1.0);
    assert_eq!(refused("per-source-cap"), 1.0);
    round_trip(&mut live, b"still relayed after a global refusal");
    round_trip(&mut second, b"and this one");
    round_trip(&mut third, b"and this one");
    assert_eq!(
        node.metric("osgate_connections_active", &[("direction", "inbound")]),
        3.0
    );
}
