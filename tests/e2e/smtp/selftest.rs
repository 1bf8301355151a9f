//! The harness itself, no osgate: Postfix to Postfix, the scripted peers, swaks, posttls-finger's
//! DANE through the testbed.

use super::*;

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
    let mut client = greeted(server.addr);
    let ehlo = client.starttls("scripted.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    mail_and_quit(client);
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
    let mut client = after_ehlo(server.addr);
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
    let (ok, transcript) = swaks_tls_pipelined(dest.smtpd, "swaks body");
    assert!(ok, "{transcript}");
    let message = dest.wait_messages(1);
    assert!(postfix::received(&message)[0].contains("(using TLS"));
    assert!(String::from_utf8_lossy(&message).contains("swaks body"));
}
