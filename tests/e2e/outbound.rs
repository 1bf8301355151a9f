//! osgate outbound against foreign peers: OpenSSL servers and plain TCP servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;

use osgate_tests::certs::{self, Ca};
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::{Io, Node, WAIT, per_driver};

per_driver!(
    self_signed_openssl_peer_is_encrypted_not_authenticated,
    chain_to_configured_ca_is_authenticated_pkix,
    wrong_name_or_expired_chain_stays_encrypted,
    tls12_peer_negotiates_ecdhe,
    handshake_failure_falls_back_to_cleartext_when_opportunistic,
    handshake_failure_is_refused_under_encrypt,
    server_first_plain_peer_gets_cleartext_with_reason,
    plain_peer_is_refused_under_encrypt_and_sees_no_payload,
    peer_closing_on_client_hello_gets_cleartext,
    cleartext_policy_never_tries_tls,
    unreachable_peer_is_refused,
    silent_peer_times_out_then_falls_back,
    truncation_by_the_peer_reaches_the_client_as_an_abort,
    idle_connections_are_closed_at_the_idle_timeout,
);

fn outbound(dir: &Path, io: Io, node_extra: &str, peer: SocketAddr, policy: &str) -> Node {
    Node::start(
        dir,
        io,
        node_extra,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"{policy}\"\n"
        ),
    )
}

fn assert_no_policy_violation(node: &Node) {
    assert_eq!(
        node.metric("osgate_cleartext_despite_policy_total", &[]),
        0.0
    );
}

fn self_signed_openssl_peer_is_encrypted_not_authenticated(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(&certs::self_signed(dir.path(), "peer", "127.0.0.1"), &[]);
    let mut node = outbound(dir.path(), io, "", server.addr, "opportunistic");
    server.send_line(node.addr("outbound[0]"), "hello openssl");
    let out = node.outcome("outbound");
    assert_eq!(out["achieved"], "encrypted");
    assert_eq!(out["reason"], "certificate-not-trusted");
    assert_eq!(out["tls_version"], "TLSv1_3");
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[
                ("achieved", "encrypted"),
                ("reason", "certificate-not-trusted")
            ]
        ),
        1.0
    );
    assert_no_policy_violation(&node);
}

fn chain_to_configured_ca_is_authenticated_pkix(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let server = SServer::start(&ca.leaf(dir.path(), "peer", "127.0.0.1", false), &[]);
    let extra = format!("ca_bundle = \"{}\"", ca.cert.display());
    let mut node = outbound(dir.path(), io, &extra, server.addr, "opportunistic");
    server.send_line(node.addr("outbound[0]"), "hello openssl");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["method"].as_str()),
        (Some("authenticated"), Some("pkix"))
    );
    assert_eq!(out["reason"], "none");
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[("achieved", "authenticated"), ("method", "pkix")]
        ),
        1.0
    );
}

fn wrong_name_or_expired_chain_stays_encrypted(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let extra = format!("ca_bundle = \"{}\"", ca.cert.display());
    for (stem, name, expired, reason) in [
        ("other", "other.test", false, "certificate-host-mismatch"),
        ("old", "127.0.0.1", true, "certificate-expired"),
    ] {
        let server = SServer::start(&ca.leaf(dir.path(), stem, name, expired), &[]);
        let mut node = outbound(dir.path(), io, &extra, server.addr, "opportunistic");
        server.send_line(node.addr("outbound[0]"), "hello openssl");
        let out = node.outcome("outbound");
        assert_eq!(out["achieved"], "encrypted", "{stem}");
        assert_eq!(out["reason"], reason, "{stem}");
    }
}

fn tls12_peer_negotiates_ecdhe(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(
        &certs::self_signed(dir.path(), "peer", "127.0.0.1"),
        &["-tls1_2"],
    );
    let mut node = outbound(dir.path(), io, "", server.addr, "encrypt");
    server.send_line(node.addr("outbound[0]"), "hello openssl");
    let out = node.outcome("outbound");
    assert_eq!(out["achieved"], "encrypted");
    assert_eq!(out["tls_version"], "TLSv1_2");
    assert!(
        out["tls_suite"].as_str().unwrap().starts_with("TLS_ECDHE_"),
        "{out}"
    );
    assert_eq!(out["tls_group"], "X25519");
}

/// A TLS 1.2 peer that only offers static-RSA suites (no forward secrecy): osgate refuses to
/// negotiate them, so the handshake fails.
fn non_pfs_server(dir: &Path) -> SServer {
    SServer::start(
        &certs::self_signed(dir, "peer", "127.0.0.1"),
        &["-tls1_2", "-cipher", "AES128-SHA256:AES256-SHA256"],
    )
}

fn handshake_failure_falls_back_to_cleartext_when_opportunistic(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = non_pfs_server(dir.path());
    let mut node = outbound(dir.path(), io, "", server.addr, "opportunistic");
    let _ = peers::call(node.addr("outbound[0]"), b"hi");
    let out = node.outcome("outbound");
    assert_eq!(out["achieved"], "cleartext");
    assert_eq!(out["reason"], "tls-handshake-failed");
    assert_no_policy_violation(&node);
}

fn handshake_failure_is_refused_under_encrypt(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = non_pfs_server(dir.path());
    let mut node = outbound(dir.path(), io, "", server.addr, "encrypt");
    assert_eq!(peers::call(node.addr("outbound[0]"), b"hi"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("tls-handshake-failed"))
    );
    assert_no_policy_violation(&node);
}

/// An SMTP-like server: speaks first, then records what it is sent.
fn banner_server() -> Server<Vec<u8>> {
    Server::start(|mut stream| {
        let _ = stream.write_all(b"220 plain.test ESMTP\r\n");
        peers::record(stream)
    })
}

fn server_first_plain_peer_gets_cleartext_with_reason(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = banner_server();
    let mut node = outbound(dir.path(), io, "", server.addr, "opportunistic");
    let got = peers::call(node.addr("outbound[0]"), b"QUIT\r\n");
    assert_eq!(got, b"220 plain.test ESMTP\r\n");
    let mut seen = [server.result(), server.result()];
    seen.sort_by_key(|bytes| bytes.first() != Some(&0x16));
    assert_eq!(
        seen[0].first(),
        Some(&0x16),
        "the first connection carried our ClientHello"
    );
    assert_eq!(
        seen[1], b"QUIT\r\n",
        "the cleartext retry carried the payload"
    );
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("cleartext"), Some("peer-no-tls"))
    );
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[("achieved", "cleartext"), ("reason", "peer-no-tls")]
        ),
        1.0
    );
}

fn plain_peer_is_refused_under_encrypt_and_sees_no_payload(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = banner_server();
    let mut node = outbound(dir.path(), io, "", server.addr, "encrypt");
    let got = peers::call(node.addr("outbound[0]"), b"SECRET PAYLOAD");
    assert_eq!(got, b"", "the client gets nothing from a refused peer");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("peer-no-tls"))
    );
    let seen = server.result();
    assert_eq!(seen.first(), Some(&0x16));
    assert!(
        !seen.windows(6).any(|w| w == b"SECRET"),
        "no payload byte reached the peer"
    );
    assert!(
        server.try_result().is_none(),
        "no second (cleartext) connection"
    );
    assert_eq!(
        node.metric(
            "osgate_connections_total",
            &[("achieved", "refused"), ("reason", "peer-no-tls")]
        ),
        1.0
    );
    assert_no_policy_violation(&node);
}

fn peer_closing_on_client_hello_gets_cleartext(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    // Client-first and strict: reads one chunk; garbage (our ClientHello) makes it hang up,
    // anything else is echoed back.
    let server = Server::start(|mut stream| {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap_or(0);
        if buf[..n].first() != Some(&0x16) {
            let _ = stream.write_all(&buf[..n]);
        }
        buf[..n].to_vec()
    });
    let mut node = outbound(dir.path(), io, "", server.addr, "opportunistic");
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"GET /\r\n"),
        b"GET /\r\n"
    );
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("cleartext"), Some("peer-no-tls"))
    );
}

fn cleartext_policy_never_tries_tls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(peers::record);
    let mut node = outbound(dir.path(), io, "", server.addr, "cleartext");
    peers::call(node.addr("outbound[0]"), b"plain words");
    assert_eq!(server.result(), b"plain words");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("cleartext"), Some("policy-cleartext"))
    );
    assert!(
        out["tls_version"].is_null() || out["tls_version"] == "",
        "{out}"
    );
}

fn unreachable_peer_is_refused(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let closed = osgate_tests::node::free_port();
    let mut node = outbound(dir.path(), io, "", closed, "opportunistic");
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("unreachable"))
    );
}

fn silent_peer_times_out_then_falls_back(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    // Never answers a ClientHello; records what arrives on each connection.
    let server = Server::start(|stream| {
        let _ = stream.set_read_timeout(Some(WAIT));
        peers::record(stream)
    });
    let mut node = outbound(
        dir.path(),
        io,
        "handshake_timeout_ms = 300",
        server.addr,
        "opportunistic",
    );
    let started = std::time::Instant::now();
    let mut client = TcpStream::connect(node.addr("outbound[0]")).unwrap();
    client.write_all(b"late hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The two connections end close together: take both, in either order.
    let mut seen = [server.result(), server.result()];
    seen.sort_by_key(|bytes| bytes.first() != Some(&0x16));
    assert_eq!(
        seen[0].first(),
        Some(&0x16),
        "the first attempt carried our ClientHello"
    );
    assert_eq!(
        seen[1], b"late hello",
        "the cleartext retry carried the payload"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("cleartext"), Some("handshake-timeout"))
    );
}

/// A TLS server (rustls) that sends `message` and then closes TCP *without* close_notify.
fn truncating_server(dir: &Path) -> Server<()> {
    let pem = certs::self_signed(dir, "peer", "127.0.0.1");
    let config = osgate_tests::certs::server_config(&pem);
    Server::start(move |tcp| {
        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut first = [0u8; 5];
        if tls.read_exact(&mut first).is_ok() {
            let _ = tls.write_all(b"partial answer");
            let _ = tls.flush();
        }
        let _ = tls.sock.shutdown(Shutdown::Both);
    })
}

fn truncation_by_the_peer_reaches_the_client_as_an_abort(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = truncating_server(dir.path());
    let mut node = outbound(dir.path(), io, "", server.addr, "encrypt");
    let mut client = TcpStream::connect(node.addr("outbound[0]")).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let end = client.read_to_end(&mut got);
    assert_eq!(got, b"partial answer");
    let err = end.expect_err("a truncated stream must not end cleanly");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    server.result();
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["close"].as_str()),
        (Some("encrypted"), Some("truncated"))
    );
    assert_eq!(
        node.metric("osgate_relay_closes_total", &[("close", "truncated")]),
        1.0
    );
}

fn idle_connections_are_closed_at_the_idle_timeout(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(peers::record);
    let mut node = outbound(
        dir.path(),
        io,
        "idle_timeout_ms = 300",
        server.addr,
        "cleartext",
    );
    let started = std::time::Instant::now();
    let mut client = TcpStream::connect(node.addr("outbound[0]")).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"then nothing").unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(server.result(), b"then nothing");
    let out = node.outcome("outbound");
    assert_eq!(out["close"], "idle-timeout");
}
