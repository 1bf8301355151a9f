//! SMTP end to end (CONFORMANCE E.30–E.34, A.3; issue 10): real Postfix instances as sending
//! and destination MTAs, swaks and posttls-finger as clients, scripted hostile peers, and
//! osgate's SMTP listeners between them under both I/O drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use osgate_tests::certs::{self, Pem};
use osgate_tests::dns::{Testbed, Zones, spki_sha256_hex};
use osgate_tests::node::free_port;
use osgate_tests::postfix::{self, MAILBOX, Postfix, Role};
use osgate_tests::resolver::Resolver;
use osgate_tests::smtp::{self, AFTER_TLS, Client, INJECTED, Script, Scripted, saw_transaction};
use osgate_tests::{Io, Node, per_driver};

#[path = "smtp/inbound.rs"]
mod inbound;
#[path = "smtp/mta.rs"]
mod mta;
#[path = "smtp/outbound.rs"]
mod outbound;
#[path = "smtp/selftest.rs"]
mod selftest;

/// A message as a local MTA submits it: a header, and a body with a line that needs
/// dot-stuffing (RFC 5321 §4.5.2).
const BODY: &str =
    "Subject: osgate smtp test\n\nfirst line\n.a line that starts with a dot\nlast line\n";
const BODY_ONLY: &[u8] = b"first line\n.a line that starts with a dot\nlast line\n";
const FROM: &str = "alice@sender.test";

/// An osgate node with one SMTP `[[inbound]]` in front of `backend`; its key.
fn inbound(dir: &Path, io: Io, backend: SocketAddr, extra: &str) -> (Node, Pem) {
    inbound_on(dir, io, "127.0.0.1:0".parse().unwrap(), backend, "", extra)
}

/// [`inbound`] on `listen`, with `node_extra` in `[node]` and `extra` in the listener.
fn inbound_on(
    dir: &Path,
    io: Io,
    listen: SocketAddr,
    backend: SocketAddr,
    node_extra: &str,
    extra: &str,
) -> (Node, Pem) {
    let pem = certs::self_signed(dir, "node", "mx.test");
    let node = Node::start(
        dir,
        io,
        node_extra,
        &inbound_section(listen, backend, &pem, extra),
    );
    (node, pem)
}

fn inbound_section(listen: SocketAddr, backend: SocketAddr, pem: &Pem, extra: &str) -> String {
    format!(
        "[[inbound]]\nlisten = \"{listen}\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\n\
         private_key = \"{}\"\nprotocol = \"smtp\"\n{extra}\n",
        pem.cert.display(),
        pem.key.display()
    )
}

/// An `[[outbound]]` SMTP listener to `peer` under `policy`, with `extra` in it.
fn outbound_section(peer: &str, policy: &str, extra: &str) -> String {
    format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\nprotocol = \"smtp\"\n\
         policy = \"{policy}\"\n{extra}\n"
    )
}

/// `[smtp]` for every node here: a fixed EHLO name, MTA-STS off (its own suite tests it).
const SMTP: &str = "[smtp]\nhelo_name = \"osgate.test\"\nmta_sts = false\n";

fn outbound(dir: &Path, io: Io, peer: SocketAddr, policy: &str, extra: &str) -> Node {
    let body = format!(
        "{SMTP}\n{}",
        outbound_section(&peer.to_string(), policy, extra)
    );
    Node::start(dir, io, "", &body)
}

fn key(dir: &Path) -> Pem {
    certs::self_signed(dir, "peer", "scripted.test")
}

/// The next `direction` record of `node`, asserted to have these (field, value) pairs; and, as
/// for every security case (CONFORMANCE), neither despite-counter moved.
fn check(node: &mut Node, direction: &str, fields: &[(&str, &str)]) -> serde_json::Value {
    let record = node.outcome(direction);
    expect(&record, fields);
    for counter in [
        "osgate_cleartext_despite_policy_total",
        "osgate_encrypted_despite_authentication_expected_total",
    ] {
        assert_eq!(node.metric(counter, &[]), 0.0, "{counter}");
    }
    record
}

/// Asserts `record` has these (field, value) pairs.
fn expect(record: &serde_json::Value, fields: &[(&str, &str)]) {
    for (field, value) in fields {
        assert_eq!(record[*field].as_str(), Some(*value), "{field}: {record}");
    }
}

/// The local client of an outbound listener whose destination must not get mail: a local
/// greeting and EHLO reply, then 4xx to MAIL FROM, 221 to QUIT.
fn expect_local_4xx(addr: SocketAddr) {
    let mut client = Client::connect(addr);
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    let mail = client.command(&format!("MAIL FROM:<{FROM}>"));
    assert!((400..500).contains(&mail.code), "{}", mail.text());
    let rcpt = client.command(&format!("RCPT TO:<{MAILBOX}>"));
    assert!((400..500).contains(&rcpt.code), "{}", rcpt.text());
    client.quit();
}

/// The local client of an outbound listener whose destination failed in a way the interface
/// leaves open: a close (a real MTA retries) or a 4xx, but never a 250 to MAIL FROM.
fn expect_no_delivery(addr: SocketAddr) {
    let mut client = Client::connect(addr);
    let Some(greeting) = client.wire.reply() else {
        return;
    };
    if greeting.code != 220 {
        assert!((400..500).contains(&greeting.code), "{}", greeting.text());
        return;
    }
    client.send("EHLO client.test");
    let Some(_) = client.wire.reply() else { return };
    client.send(&format!("MAIL FROM:<{FROM}>"));
    if let Some(mail) = client.wire.reply() {
        assert!((400..500).contains(&mail.code), "{}", mail.text());
    }
}

/// A scripted backend playing `script` behind an SMTP inbound with `extra`.
fn scripted_inbound(io: Io, script: Script, extra: &str) -> (tempfile::TempDir, Scripted, Node) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(script, &key(dir.path()));
    let (node, _) = inbound(dir.path(), io, backend.addr, extra);
    (dir, backend, node)
}

/// A scripted destination playing `script` behind an SMTP outbound under `policy`.
fn scripted_outbound(
    io: Io,
    script: Script,
    policy: &str,
    extra: &str,
) -> (tempfile::TempDir, Scripted, Node) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(script, &key(dir.path()));
    let node = outbound(dir.path(), io, dest.addr, policy, extra);
    (dir, dest, node)
}

/// A Postfix sender relaying everything to `relayhost` without TLS.
fn postfix_sender(relayhost: SocketAddr) -> Postfix {
    Postfix::start(&Role::Sender {
        relayhost,
        tls_level: "none",
    })
}

/// A client of `addr` that got a 220 greeting.
fn greeted(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    assert_eq!(client.reply().code, 220);
    client
}

/// A [`greeted`] client whose cleartext EHLO got 250.
fn after_ehlo(addr: SocketAddr) -> Client {
    let mut client = greeted(addr);
    assert_eq!(client.command("EHLO client.test").code, 250);
    client
}

/// The test message is accepted (250), then QUIT.
fn mail_and_quit(mut client: Client) {
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
}

/// [`check`] that the SMTP session used STARTTLS and achieved `encrypted`.
fn check_encrypted(node: &mut Node, direction: &str) -> serde_json::Value {
    check(
        node,
        direction,
        &[
            ("protocol", "smtp"),
            ("starttls", "used"),
            ("achieved", "encrypted"),
        ],
    )
}

/// A TLS-less Postfix destination behind an SMTP inbound with `extra`.
fn postfix_inbound(io: Io, extra: &str) -> (tempfile::TempDir, Postfix, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (node, _) = inbound(dir.path(), io, mta.smtpd, extra);
    (dir, mta, node)
}

/// [`check`] of an outbound that went on in cleartext: the destination offered no STARTTLS.
fn check_cleartext_not_offered(node: &mut Node) {
    check(
        node,
        "outbound",
        &[
            ("achieved", "cleartext"),
            ("reason", "starttls-not-supported"),
            ("starttls", "not-offered"),
        ],
    );
}

/// swaks to `addr` over STARTTLS with PIPELINING, sending `body`: (success, transcript).
fn swaks_tls_pipelined(addr: SocketAddr, body: &str) -> (bool, String) {
    smtp::swaks(
        addr,
        &[
            "--to",
            MAILBOX,
            "--from",
            FROM,
            "--tls",
            "--pipeline",
            "--body",
            body,
        ],
    )
}

/// swaks to `addr` without TLS, sending `body`: (success, transcript).
fn swaks_cleartext(addr: SocketAddr, body: &str) -> (bool, String) {
    smtp::swaks(addr, &["--to", MAILBOX, "--from", FROM, "--body", body])
}

/// How many lines of a peer's `seen` session start with `prefix`.
fn count(seen: &[String], prefix: &str) -> usize {
    seen.iter().filter(|l| l.starts_with(prefix)).count()
}
