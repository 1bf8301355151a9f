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

per_driver!(
    e30_commands_after_starttls_in_the_same_write_are_never_acted_on,
    e30_an_injected_transaction_never_changes_what_postfix_delivers,
    e31_a_reply_injected_after_220_is_discarded_and_the_ehlo_reply_comes_over_tls,
    e32_encrypt_destination_without_starttls_gets_4xx_and_never_mail_from,
    e32_encrypt_destination_answering_454_gets_4xx_and_never_mail_from,
    e32_encrypt_destination_failing_the_handshake_gets_4xx_and_never_mail_from,
    e32_opportunistic_destination_without_starttls_is_cleartext_starttls_not_supported,
    e33_inbound_client_must_ehlo_again_after_tls,
    e33_outbound_ehlos_again_over_tls_before_the_client_is_joined,
    e34_an_over_long_command_line_is_refused_and_never_relayed,
    e34_an_over_long_reply_line_from_the_destination_is_a_protocol_error,
    e34_a_silent_destination_times_out_at_the_greeting,
    a_greeting_split_byte_by_byte_is_read_whole,
    a3_the_backend_banner_goes_out_at_once_without_a_client_byte,
    require_mode_answers_530_before_starttls,
    swaks_without_tls_gets_530_in_require_mode_and_nothing_is_delivered,
    swaks_pipelines_through_the_inbound_starttls_to_postfix,
    bdat_chunks_pass_through_the_inbound_after_tls,
    postfix_through_osgate_outbound_to_postfix_with_starttls_shows_tls_received,
    postfix_through_osgate_outbound_to_postfix_without_tls_under_encrypt_is_deferred,
    postfix_through_osgate_outbound_to_postfix_without_tls_is_cleartext_when_opportunistic,
    done_when_postfix_to_osgate_outbound_by_mx_to_osgate_inbound_to_postfix_is_dane,
    an_mx_in_an_unsigned_zone_is_not_dane,
    mx_hosts_are_tried_in_preference_order,
    a_secure_mx_whose_tlsa_does_not_match_is_deferred_never_cleartext,
    inbound_offers_its_own_starttls_and_never_the_backends,
    offer_mode_carries_a_cleartext_client_and_says_cleartext,
    a_backend_greeting_split_byte_by_byte_reaches_the_client_whole,
    a_backend_refusing_service_is_relayed_and_the_session_closed,
    e34_a_client_silent_mid_session_is_closed_at_the_command_timeout,
    e34_a_silent_backend_is_closed_at_the_greeting_timeout,
);

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

// ---- inbound: osgate in front of a TLS-less MTA ----

fn e30_commands_after_starttls_in_the_same_write_are_never_acted_on(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.has("STARTTLS"), "{}", ehlo.text());
    let injected = "MAIL FROM:<injected@evil.test>\r\n";
    client.write(format!("STARTTLS\r\n{injected}").as_bytes());
    assert_eq!(client.reply().code, 220);
    client.handshake("mx.test").unwrap();
    // Had the injected MAIL been kept, this one would get 503 (nested MAIL).
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = backend.session();
    assert!(
        !seen.iter().any(|l| l.contains("injected@evil.test")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l == &format!("MAIL FROM:<{FROM}>")),
        "{seen:#?}"
    );
    let rec = check(
        &mut node,
        "inbound",
        &[
            ("protocol", "smtp"),
            ("starttls", "used"),
            ("achieved", "encrypted"),
        ],
    );
    assert_eq!(rec["injected_bytes"], injected.len(), "{rec}");
}

fn e30_an_injected_transaction_never_changes_what_postfix_delivers(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (mut node, _) = inbound(dir.path(), io, mta.smtpd, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    let injected = format!(
        "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<{MAILBOX}>\r\nDATA\r\nSubject: injected\r\n\r\nevil\r\n.\r\n"
    );
    client.write(format!("STARTTLS\r\n{injected}").as_bytes());
    assert_eq!(client.reply().code, 220);
    client.handshake("mx.test").unwrap();
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let disconnect = mta.wait_log(&["disconnect from", "quit=1"]);
    assert!(
        disconnect.contains(" mail=1 "),
        "one transaction reached Postfix: {disconnect}"
    );
    let message = mta.wait_messages(1);
    assert_eq!(mta.messages().len(), 1);
    assert!(String::from_utf8_lossy(&message).contains(&format!("Return-Path: <{FROM}>")));
    assert_eq!(postfix::split_message(&message).1, BODY_ONLY);
    let rec = check(&mut node, "inbound", &[("starttls", "used")]);
    assert_eq!(rec["injected_bytes"], injected.len(), "{rec}");
}

fn e33_inbound_client_must_ehlo_again_after_tls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.command("STARTTLS").code, 220);
    client.handshake("mx.test").unwrap();
    // RFC 3207 §4.2: the session state is reset; a transaction before EHLO is out of order.
    let early = client.command(&format!("MAIL FROM:<{FROM}>"));
    assert_eq!(early.code, 503, "{}", early.text());
    assert!(early.text().contains("5.5.1"), "{}", early.text());
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = backend.session();
    let mails = seen.iter().filter(|l| l.starts_with("MAIL")).count();
    assert_eq!(
        mails, 1,
        "only the MAIL after the second EHLO reaches the MTA: {seen:#?}"
    );
    let ehlo_after_tls = seen.iter().rposition(|l| l.starts_with("EHLO")).unwrap();
    let mail = seen.iter().position(|l| l.starts_with("MAIL")).unwrap();
    assert!(ehlo_after_tls < mail, "{seen:#?}");
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn e34_an_over_long_command_line_is_refused_and_never_relayed(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    // RFC 5321 §4.5.3.1.4: a command line is at most 512 octets; osgate's cap is 2048.
    let long = format!("MAIL FROM:<{}@sender.test>", "a".repeat(4000));
    let reply = client.command(&long);
    assert_eq!(reply.code, 500, "{}", reply.text());
    assert!(reply.text().contains("5.5.0"), "{}", reply.text());
    assert!(
        client.closed(),
        "the session is closed after an over-long line"
    );
    let seen = backend.session();
    assert!(!saw_transaction(&seen), "{seen:#?}");
    check(&mut node, "inbound", &[("protocol", "smtp")]);
}

fn a3_the_backend_banner_goes_out_at_once_without_a_client_byte(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    // A peek deadline far above what the banner may take: a stall would show.
    let (mut node, _) = inbound_on(
        dir.path(),
        io,
        "127.0.0.1:0".parse().unwrap(),
        mta.smtpd,
        "peek_timeout_ms = 10000",
        "",
    );
    let started = Instant::now();
    let mut client = Client::connect(node.addr("inbound[0]"));
    let banner = client.reply();
    let took = started.elapsed();
    assert_eq!(banner.code, 220, "{}", banner.text());
    assert!(
        banner.text().contains("dest.example.test"),
        "{}",
        banner.text()
    );
    assert!(took < Duration::from_secs(3), "banner after {took:?}");
    client.quit();
    // The banner and QUIT crossed in cleartext: a cleartext session, not a refused one.
    check(
        &mut node,
        "inbound",
        &[("protocol", "smtp"), ("achieved", "cleartext")],
    );
}

fn require_mode_answers_530_before_starttls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "starttls = \"require\"");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    for command in [
        format!("MAIL FROM:<{FROM}>"),
        format!("RCPT TO:<{MAILBOX}>"),
        "DATA".into(),
    ] {
        let reply = client.command(&command);
        assert_eq!(reply.code, 530, "{command}: {}", reply.text());
        assert!(reply.text().contains("5.7.0"), "{}", reply.text());
    }
    let ehlo = client.starttls("mx.test");
    assert_eq!(ehlo.code, 250);
    assert!(
        !ehlo.has("STARTTLS"),
        "no STARTTLS over TLS: {}",
        ehlo.text()
    );
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = backend.session();
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("MAIL")).count(),
        1,
        "{seen:#?}"
    );
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn swaks_without_tls_gets_530_in_require_mode_and_nothing_is_delivered(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (mut node, _) = inbound(dir.path(), io, mta.smtpd, "starttls = \"require\"");
    let (ok, transcript) = smtp::swaks(
        node.addr("inbound[0]"),
        &["--to", MAILBOX, "--from", FROM, "--body", "must not arrive"],
    );
    assert!(!ok, "{transcript}");
    assert!(transcript.contains("530 5.7.0"), "{transcript}");
    let disconnect = mta.wait_log(&["disconnect from"]);
    assert!(!disconnect.contains("mail="), "{disconnect}");
    assert!(mta.messages().is_empty());
    check(
        &mut node,
        "inbound",
        &[("protocol", "smtp"), ("achieved", "refused")],
    );
}

fn swaks_pipelines_through_the_inbound_starttls_to_postfix(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (mut node, _) = inbound(dir.path(), io, mta.smtpd, "");
    let (ok, transcript) = smtp::swaks(
        node.addr("inbound[0]"),
        &[
            "--to",
            MAILBOX,
            "--from",
            FROM,
            "--tls",
            "--pipeline",
            "--body",
            "pipelined body",
        ],
    );
    assert!(ok, "{transcript}");
    assert!(transcript.contains("TLS started"), "{transcript}");
    let message = mta.wait_messages(1);
    assert!(String::from_utf8_lossy(&message).contains("pipelined body"));
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn bdat_chunks_pass_through_the_inbound_after_tls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (mut node, _) = inbound(dir.path(), io, mta.smtpd, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    let ehlo = client.starttls("mx.test");
    assert!(ehlo.has("CHUNKING"), "{}", ehlo.text());
    assert_eq!(client.command(&format!("MAIL FROM:<{FROM}>")).code, 250);
    assert_eq!(client.command(&format!("RCPT TO:<{MAILBOX}>")).code, 250);
    // RFC 3030: chunks are raw octets, no dot-stuffing; CRLF line ends on the wire.
    let message = BODY.replace('\n', "\r\n");
    let (first, second) = message.split_at(message.len() / 2);
    client.write(format!("BDAT {}\r\n{first}", first.len()).as_bytes());
    assert_eq!(client.reply().code, 250);
    client.write(format!("BDAT {} LAST\r\n{second}", second.len()).as_bytes());
    let done = client.reply();
    assert_eq!(done.code, 250, "{}", done.text());
    client.quit();
    let (_, body) = postfix::split_message(&mta.wait_messages(1));
    assert_eq!(body, BODY_ONLY);
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn inbound_offers_its_own_starttls_and_never_the_backends(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    // A backend that offers STARTTLS itself: osgate answers it, the backend never sees it.
    let backend = Scripted::start(Script::Tls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    let ehlo = client.command("EHLO client.test");
    let offers = ehlo
        .lines
        .iter()
        .filter(|l| l.ends_with("STARTTLS"))
        .count();
    assert_eq!(offers, 1, "{}", ehlo.text());
    let ready = client.command("STARTTLS");
    assert_eq!(ready.text(), "220 2.0.0 Ready to start TLS");
    client.handshake("mx.test").unwrap();
    let ehlo = client.command("EHLO client.test");
    assert!(
        !ehlo.has("STARTTLS"),
        "the backend's STARTTLS is removed: {}",
        ehlo.text()
    );
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = backend.session();
    assert!(!seen.iter().any(|l| l.contains("STARTTLS")), "{seen:#?}");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("EHLO")).count(),
        2,
        "{seen:#?}"
    );
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn offer_mode_carries_a_cleartext_client_and_says_cleartext(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let mta = Postfix::start(&Role::Destination { tls: None });
    let (mut node, _) = inbound(dir.path(), io, mta.smtpd, "starttls = \"offer\"");
    let (ok, transcript) = smtp::swaks(
        node.addr("inbound[0]"),
        &["--to", MAILBOX, "--from", FROM, "--body", "cleartext body"],
    );
    assert!(ok, "{transcript}");
    assert!(String::from_utf8_lossy(&mta.wait_messages(1)).contains("cleartext body"));
    check(
        &mut node,
        "inbound",
        &[("achieved", "cleartext"), ("starttls", "offered")],
    );
}

fn a_backend_greeting_split_byte_by_byte_reaches_the_client_whole(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::ByteByByte, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().text(), "220 scripted.test ESMTP");
    assert_eq!(client.starttls("mx.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    check(
        &mut node,
        "inbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn a_backend_refusing_service_is_relayed_and_the_session_closed(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::Refuses554, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    let greeting = client.reply();
    assert_eq!(greeting.text(), "554 5.3.2 scripted.test no service");
    assert!(
        client.closed(),
        "the session is closed after a refusing greeting"
    );
    check(&mut node, "inbound", &[("protocol", "smtp")]);
    assert!(!saw_transaction(&backend.session()));
}

/// Reads until the server closes: not before the 500 ms timeout (a close for another reason),
/// and well before `within` (a timeout that does not fire).
fn closed_within(client: &mut Client, within: Duration) {
    let started = Instant::now();
    assert!(client.closed(), "closed by the server");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "closed after only {took:?}"
    );
    assert!(took < within, "closed only after {took:?}");
}

fn e34_a_client_silent_mid_session_is_closed_at_the_command_timeout(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "command_timeout_ms = 500");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    closed_within(&mut client, Duration::from_secs(10));
    check(&mut node, "inbound", &[("protocol", "smtp")]);
    assert!(!saw_transaction(&backend.session()));
}

fn e34_a_silent_backend_is_closed_at_the_greeting_timeout(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::start(Script::Silent, &key(dir.path()));
    let (mut node, _) = inbound(dir.path(), io, backend.addr, "greeting_timeout_ms = 500");
    let mut client = Client::connect(node.addr("inbound[0]"));
    closed_within(&mut client, Duration::from_secs(10));
    check(&mut node, "inbound", &[("protocol", "smtp")]);
    assert!(
        backend.session().is_empty(),
        "no client byte reached the backend"
    );
}

// ---- outbound: a local MTA relays to osgate, osgate carries it to the destination ----

fn e31_a_reply_injected_after_220_is_discarded_and_the_ehlo_reply_comes_over_tls(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::InjectAfter220, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "opportunistic", "");
    let mut client = Client::connect(node.addr("outbound[0]"));
    assert_eq!(client.reply().code, 220);
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    assert!(!ehlo.text().contains("INJECTED"), "{}", ehlo.text());
    assert!(!ehlo.has("STARTTLS"), "{}", ehlo.text());
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = dest.session();
    let cleartext: Vec<_> = seen.iter().filter(|l| !l.starts_with("tls: ")).collect();
    assert!(!saw_transaction(
        &cleartext.iter().map(|s| (*s).clone()).collect::<Vec<_>>()
    ));
    assert!(saw_transaction(&seen), "{seen:#?}");
    let rec = check(
        &mut node,
        "outbound",
        &[
            ("protocol", "smtp"),
            ("starttls", "used"),
            ("achieved", "encrypted"),
        ],
    );
    assert_eq!(rec["injected_bytes"], INJECTED.len(), "{rec}");
}

fn e33_outbound_ehlos_again_over_tls_before_the_client_is_joined(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::Tls, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "encrypt", "");
    let mut client = Client::connect(node.addr("outbound[0]"));
    assert_eq!(client.reply().code, 220);
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = dest.session();
    let starttls = seen
        .iter()
        .position(|l| l == "STARTTLS")
        .expect("STARTTLS sent");
    assert!(
        seen[..starttls]
            .iter()
            .any(|l| l.starts_with("EHLO osgate.test")),
        "{seen:#?}"
    );
    assert!(
        seen[starttls + 1].starts_with("tls: EHLO osgate.test"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l == "tls: EHLO client.test"),
        "{seen:#?}"
    );
    check(
        &mut node,
        "outbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

/// E.32 under `policy = "encrypt"` against `script`: 4xx locally, no MAIL at the destination.
fn e32_must_encrypt(io: Io, script: Script, starttls: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(script, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "encrypt", "");
    expect_local_4xx(node.addr("outbound[0]"));
    let seen = dest.session();
    assert!(
        !saw_transaction(&seen),
        "no MAIL FROM in cleartext: {seen:#?}"
    );
    check(
        &mut node,
        "outbound",
        &[
            ("protocol", "smtp"),
            ("achieved", "refused"),
            ("starttls", starttls),
        ],
    );
}

fn e32_encrypt_destination_without_starttls_gets_4xx_and_never_mail_from(io: Io) {
    e32_must_encrypt(io, Script::NoStarttls, "not-offered");
}

fn e32_encrypt_destination_answering_454_gets_4xx_and_never_mail_from(io: Io) {
    e32_must_encrypt(io, Script::Refuse454, "refused");
}

fn e32_encrypt_destination_failing_the_handshake_gets_4xx_and_never_mail_from(io: Io) {
    e32_must_encrypt(io, Script::BrokenHandshake, "offered");
}

fn e32_opportunistic_destination_without_starttls_is_cleartext_starttls_not_supported(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::NoStarttls, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "opportunistic", "");
    let mut client = Client::connect(node.addr("outbound[0]"));
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    assert!(saw_transaction(&dest.session()));
    check(
        &mut node,
        "outbound",
        &[
            ("achieved", "cleartext"),
            ("reason", "starttls-not-supported"),
            ("starttls", "not-offered"),
        ],
    );
}

fn e34_an_over_long_reply_line_from_the_destination_is_a_protocol_error(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::LongLine, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "opportunistic", "");
    expect_no_delivery(node.addr("outbound[0]"));
    assert!(!saw_transaction(&dest.session()));
    check(
        &mut node,
        "outbound",
        &[("achieved", "refused"), ("reason", "smtp-protocol-error")],
    );
}

fn e34_a_silent_destination_times_out_at_the_greeting(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::Silent, &key(dir.path()));
    let extra = "greeting_timeout_ms = 500";
    let mut node = outbound(dir.path(), io, dest.addr, "opportunistic", extra);
    let started = Instant::now();
    expect_no_delivery(node.addr("outbound[0]"));
    check(
        &mut node,
        "outbound",
        &[("protocol", "smtp"), ("achieved", "refused")],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The destination got no byte of the client's.
    assert!(dest.session().is_empty());
}

fn a_greeting_split_byte_by_byte_is_read_whole(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Scripted::start(Script::ByteByByte, &key(dir.path()));
    let mut node = outbound(dir.path(), io, dest.addr, "encrypt", "");
    let mut client = Client::connect(node.addr("outbound[0]"));
    let greeting = client.reply();
    assert_eq!(greeting.text(), "220 scripted.test ESMTP");
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    check(
        &mut node,
        "outbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

// ---- real Postfix on both ends ----

fn postfix_through_osgate_outbound_to_postfix_with_starttls_shows_tls_received(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "dest", "dest.example.test");
    let dest = Postfix::start(&Role::Destination { tls: Some(&pem) });
    let mut node = outbound(dir.path(), io, dest.smtpd, "encrypt", "");
    let sender = Postfix::start(&Role::Sender {
        relayhost: node.addr("outbound[0]"),
        tls_level: "none",
    });
    assert_eq!(smtp::submit(sender.smtpd, FROM, MAILBOX, BODY).code, 250);
    let message = dest.wait_messages(1);
    let received = postfix::received(&message);
    assert!(
        received[0].contains("(using TLS"),
        "osgate → Postfix is TLS: {received:#?}"
    );
    // The local client's EHLO went on over TLS (RFC 3207 §4.2: the one that counts).
    assert!(received[0].contains("from sender.test"), "{received:#?}");
    assert_eq!(postfix::split_message(&message).1, BODY_ONLY);
    sender.wait_log(&["status=sent"]);
    check(
        &mut node,
        "outbound",
        &[("starttls", "used"), ("achieved", "encrypted")],
    );
}

fn postfix_through_osgate_outbound_to_postfix_without_tls_under_encrypt_is_deferred(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Postfix::start(&Role::Destination { tls: None });
    let mut node = outbound(dir.path(), io, dest.smtpd, "encrypt", "");
    let sender = Postfix::start(&Role::Sender {
        relayhost: node.addr("outbound[0]"),
        tls_level: "none",
    });
    assert_eq!(smtp::submit(sender.smtpd, FROM, MAILBOX, BODY).code, 250);
    let deferred = sender.wait_log(&["status=deferred"]);
    assert!(
        deferred.contains("4.7.5") || deferred.contains(" 45"),
        "{deferred}"
    );
    check(
        &mut node,
        "outbound",
        &[("achieved", "refused"), ("starttls", "not-offered")],
    );
    assert!(dest.messages().is_empty());
    assert!(
        !dest.log().contains("mail=1"),
        "no MAIL FROM reached Postfix:\n{}",
        dest.log()
    );
}

fn postfix_through_osgate_outbound_to_postfix_without_tls_is_cleartext_when_opportunistic(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Postfix::start(&Role::Destination { tls: None });
    let mut node = outbound(dir.path(), io, dest.smtpd, "opportunistic", "");
    let sender = Postfix::start(&Role::Sender {
        relayhost: node.addr("outbound[0]"),
        tls_level: "none",
    });
    assert_eq!(smtp::submit(sender.smtpd, FROM, MAILBOX, BODY).code, 250);
    let message = dest.wait_messages(1);
    let received = postfix::received(&message);
    assert!(!received[0].contains("(using TLS"), "{received:#?}");
    assert_eq!(postfix::split_message(&message).1, BODY_ONLY);
    check(
        &mut node,
        "outbound",
        &[
            ("achieved", "cleartext"),
            ("reason", "starttls-not-supported"),
            ("starttls", "not-offered"),
        ],
    );
}

/// Postfix sender → osgate outbound (`mx:<domain>:<port>`) → osgate inbound on `port` with
/// its node key → TLS-less Postfix → maildir; `zones` are built from the port and the key.
struct Chain {
    _dir: tempfile::TempDir,
    node: Node,
    dest: Postfix,
    sender: Postfix,
    testbed: Testbed,
    port: u16,
}

fn chain(io: Io, domain: &str, zones: impl FnOnce(u16, &Pem) -> Zones) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let dest = Postfix::start(&Role::Destination { tls: None });
    let listen = free_port();
    let pem = certs::self_signed(dir.path(), "node", "mx.test");
    let testbed = Testbed::start(dir.path(), &zones(listen.port(), &pem));
    let body = format!(
        "{SMTP}\n{}\n{}\n{}",
        testbed.config(),
        outbound_section(
            &format!("mx:{domain}:{}", listen.port()),
            "opportunistic",
            ""
        ),
        inbound_section(listen, dest.smtpd, &pem, "")
    );
    let node = Node::start(dir.path(), io, "", &body);
    let sender = Postfix::start(&Role::Sender {
        relayhost: node.addr("outbound[0]"),
        tls_level: "none",
    });
    Chain {
        _dir: dir,
        node,
        dest,
        sender,
        testbed,
        port: listen.port(),
    }
}

fn done_when_postfix_to_osgate_outbound_by_mx_to_osgate_inbound_to_postfix_is_dane(io: Io) {
    let mut chain = chain(io, "dst.test", |port, pem| Zones {
        secure: vec![
            "dst IN MX 10 mx.test.".into(),
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    });
    assert_eq!(
        smtp::submit(chain.sender.smtpd, FROM, MAILBOX, BODY).code,
        250
    );
    let message = chain.dest.wait_messages(1);
    assert_eq!(
        postfix::split_message(&message).1,
        BODY_ONLY,
        "the body arrives intact"
    );
    chain.sender.wait_log(&["status=sent"]);
    let out = check(
        &mut chain.node,
        "outbound",
        &[
            ("protocol", "smtp"),
            ("achieved", "authenticated"),
            ("method", "dane"),
            ("dane", "secure-usable"),
            ("starttls", "used"),
        ],
    );
    assert_eq!(
        out["mx"].as_str().map(|m| m.trim_end_matches('.')),
        Some("mx.test"),
        "{out}"
    );
    check(
        &mut chain.node,
        "inbound",
        &[
            ("protocol", "smtp"),
            ("achieved", "encrypted"),
            ("starttls", "used"),
        ],
    );
    // posttls-finger's own DANE check (RFC 7672: MX, then TLSA per MX host) of the listener.
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::start(dir.path(), &chain.testbed);
    let (_, out) = smtp::posttls_finger_via(
        &resolver,
        &format!("dst.test:{}", chain.port),
        &["-l", "dane"],
    );
    assert!(out.contains("Verified TLS connection established"), "{out}");
}

fn an_mx_in_an_unsigned_zone_is_not_dane(io: Io) {
    let mut chain = chain(io, "dst.ins.test", |port, pem| Zones {
        insecure: vec![
            "dst IN MX 10 mx.ins.test.".into(),
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    });
    assert_eq!(
        smtp::submit(chain.sender.smtpd, FROM, MAILBOX, BODY).code,
        250
    );
    let message = chain.dest.wait_messages(1);
    assert_eq!(postfix::split_message(&message).1, BODY_ONLY);
    let out = check(
        &mut chain.node,
        "outbound",
        &[
            ("protocol", "smtp"),
            ("achieved", "encrypted"),
            ("starttls", "used"),
        ],
    );
    assert_ne!(out["method"], "dane", "{out}");
    assert!(
        !out["dane"].as_str().unwrap_or("").starts_with("secure"),
        "{out}"
    );
}

fn mx_hosts_are_tried_in_preference_order(io: Io) {
    // The most preferred MX has no listener (127.0.0.2): the next one is tried.
    let mut chain = chain(io, "dst.test", |port, pem| Zones {
        secure: vec![
            "dst IN MX 10 dead.test.".into(),
            "dst IN MX 20 mx.test.".into(),
            "dst IN MX 30 dead.test.".into(),
            "dead IN A 127.0.0.2".into(),
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.dead IN TLSA 3 1 1 {}", spki_sha256_hex(pem)),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    });
    assert_eq!(
        smtp::submit(chain.sender.smtpd, FROM, MAILBOX, BODY).code,
        250
    );
    assert_eq!(
        postfix::split_message(&chain.dest.wait_messages(1)).1,
        BODY_ONLY
    );
    let out = check(
        &mut chain.node,
        "outbound",
        &[("achieved", "authenticated"), ("method", "dane")],
    );
    assert_eq!(
        out["mx"].as_str().map(|m| m.trim_end_matches('.')),
        Some("mx.test"),
        "{out}"
    );
}

fn a_secure_mx_whose_tlsa_does_not_match_is_deferred_never_cleartext(io: Io) {
    let mut chain = chain(io, "dst.test", |port, _| Zones {
        secure: vec![
            "dst IN MX 10 mx.test.".into(),
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", "ab".repeat(32)),
        ],
        ..Zones::default()
    });
    assert_eq!(
        smtp::submit(chain.sender.smtpd, FROM, MAILBOX, BODY).code,
        250
    );
    let deferred = chain.sender.wait_log(&["status=deferred"]);
    assert!(deferred.contains("4.7.5"), "{deferred}");
    check(
        &mut chain.node,
        "outbound",
        &[("achieved", "refused"), ("reason", "tlsa-invalid")],
    );
    assert!(chain.dest.messages().is_empty());
}

// ---- the harness itself (no osgate) ----

/// The harness itself: Postfix sender → Postfix destination with TLS, no osgate between.
#[test]
fn harness_postfix_sender_delivers_to_postfix_destination_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "dest", "dest.example.test");
    let dest = Postfix::start(&Role::Destination { tls: Some(&pem) });
    let sender = Postfix::start(&Role::Sender {
        relayhost: dest.smtpd,
        tls_level: "encrypt",
    });
    let done = smtp::submit(sender.smtpd, "alice@sender.test", MAILBOX, BODY);
    assert_eq!(done.code, 250, "{}", done.text());
    let message = dest.wait_messages(1);
    let received = postfix::received(&message);
    assert!(
        received[0].contains("(using TLS"),
        "the sender → destination hop is TLS: {received:#?}"
    );
    let (_, body) = postfix::split_message(&message);
    assert!(String::from_utf8_lossy(&body).contains(".a line that starts with a dot"));
}

/// The harness's DANE path for posttls-finger: a TLSA record for Postfix's key in the signed
/// testbed, read through the validating resolver, verifies; a wrong one does not.
#[test]
fn harness_posttls_finger_verifies_dane_through_the_testbed() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "dest", "mx.test");
    let dest = Postfix::start(&Role::Destination { tls: Some(&pem) });
    let port = dest.smtpd.port();
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(&pem)),
            format!("_{port}._tcp.wrong IN TLSA 3 1 1 {}", "ab".repeat(32)),
            "wrong IN A 127.0.0.1".into(),
        ],
        ..Zones::default()
    };
    let testbed = Testbed::start(dir.path(), &zones);
    let resolver = Resolver::start(dir.path(), &testbed);
    let (_, out) =
        smtp::posttls_finger_via(&resolver, &format!("[mx.test]:{port}"), &["-l", "dane"]);
    let dig = resolver
        .run("drill", &["-D".into(), "mx.test".into(), "A".into()])
        .1;
    assert!(
        out.contains("Verified TLS connection established"),
        "{out}\n{dig}\n{}",
        resolver.log()
    );
    let (_, out) =
        smtp::posttls_finger_via(&resolver, &format!("[wrong.test]:{port}"), &["-l", "dane"]);
    assert!(
        !out.contains("Verified TLS connection established"),
        "{out}"
    );
    assert!(out.contains("certificate verification failed"), "{out}");
}

/// The scripted server upgrades and labels what it received after the handshake.
#[test]
fn harness_scripted_server_speaks_starttls_and_records_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(Script::Tls, &key(dir.path()));
    let mut client = Client::connect(server.addr);
    assert_eq!(client.reply().code, 220);
    let ehlo = client.starttls("scripted.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    assert_eq!(client.mail(FROM, MAILBOX, BODY).code, 250);
    client.quit();
    let seen = server.session();
    assert!(
        seen.iter().any(|l| l == "tls: EHLO client.test"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("tls: MAIL FROM")),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|l| l.starts_with("MAIL")), "{seen:#?}");
}

/// The injecting server's forged reply is on the wire right after its `220`, in cleartext.
#[test]
fn harness_injected_reply_follows_the_220_in_cleartext() {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(Script::InjectAfter220, &key(dir.path()));
    let mut client = Client::connect(server.addr);
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    assert_eq!(client.command("STARTTLS").code, 220);
    assert_eq!(
        client.reply().text(),
        INJECTED.trim_end().replace("\r\n", "\n")
    );
}

/// swaks speaks STARTTLS and PIPELINING to a Postfix destination with TLS.
#[test]
fn harness_swaks_pipelines_to_postfix_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "dest", "dest.example.test");
    let dest = Postfix::start(&Role::Destination { tls: Some(&pem) });
    let (ok, transcript) = smtp::swaks(
        dest.smtpd,
        &[
            "--to",
            MAILBOX,
            "--from",
            FROM,
            "--tls",
            "--pipeline",
            "--body",
            "swaks body",
        ],
    );
    assert!(ok, "{transcript}");
    let message = dest.wait_messages(1);
    assert!(postfix::received(&message)[0].contains("(using TLS"));
    assert!(String::from_utf8_lossy(&message).contains("swaks body"));
}
