//! SMTP end to end (CONFORMANCE E.30–E.34, A.3; issue 10): real Postfix instances as sending
//! and destination MTAs, swaks and posttls-finger as clients, scripted hostile peers, and
//! osgate's SMTP listeners between them under both I/O drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use osgate_tests::certs;
use osgate_tests::dns::{Testbed, Zones, spki_sha256_hex};
use osgate_tests::postfix::{self, MAILBOX, Postfix, Role};
use osgate_tests::resolver::Resolver;
use osgate_tests::smtp::{self, Client, Script, Scripted};

const BODY: &str =
    "Subject: osgate smtp test\n\nfirst line\n.a line that starts with a dot\nlast line\n";

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
