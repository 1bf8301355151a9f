//! Real Postfix on both ends: through osgate outbound to a smarthost, and the done-when chain
//! by MX through osgate inbound, with DANE from the signed testbed.

use super::*;

per_driver!(
    postfix_through_osgate_outbound_to_postfix_with_starttls_shows_tls_received,
    postfix_through_osgate_outbound_to_postfix_without_tls_under_encrypt_is_deferred,
    postfix_through_osgate_outbound_to_postfix_without_tls_is_cleartext_when_opportunistic,
    done_when_postfix_to_osgate_outbound_by_mx_to_osgate_inbound_to_postfix_is_dane,
    an_mx_in_an_unsigned_zone_is_not_dane,
    mx_hosts_are_tried_in_preference_order,
    a_secure_mx_whose_tlsa_does_not_match_is_deferred_never_cleartext,
);

fn postfix_through_osgate_outbound_to_postfix_with_starttls_shows_tls_received(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "dest", "dest.example.test");
    let dest = Postfix::start(&Role::Destination { tls: Some(&pem) });
    let mut node = outbound(dir.path(), io, dest.smtpd, "encrypt", "");
    let sender = postfix_sender(node.addr("outbound[0]"));
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
    check_encrypted(&mut node, "outbound");
}

fn postfix_through_osgate_outbound_to_postfix_without_tls_under_encrypt_is_deferred(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let dest = Postfix::start(&Role::Destination { tls: None });
    let mut node = outbound(dir.path(), io, dest.smtpd, "encrypt", "");
    let sender = postfix_sender(node.addr("outbound[0]"));
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
    let sender = postfix_sender(node.addr("outbound[0]"));
    assert_eq!(smtp::submit(sender.smtpd, FROM, MAILBOX, BODY).code, 250);
    let message = dest.wait_messages(1);
    let received = postfix::received(&message);
    assert!(!received[0].contains("(using TLS"), "{received:#?}");
    assert_eq!(postfix::split_message(&message).1, BODY_ONLY);
    check_cleartext_not_offered(&mut node);
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

impl Chain {
    /// The sender's Postfix accepts the test message for relaying.
    fn submit(&self) {
        assert_eq!(
            smtp::submit(self.sender.smtpd, FROM, MAILBOX, BODY).code,
            250
        );
    }

    /// [`Chain::submit`], then the destination's maildir gets the body intact.
    fn submit_and_deliver(&self) {
        self.submit();
        let message = self.dest.wait_messages(1);
        assert_eq!(
            postfix::split_message(&message).1,
            BODY_ONLY,
            "the body arrives intact"
        );
    }
}

/// A zone's records for `dst` with one MX, `mx_host` (its `mx` label at 127.0.0.1), and a
/// `3 1 1` TLSA record of `tlsa_hex` for its `port`.
fn one_mx(port: u16, mx_host: &str, tlsa_hex: &str) -> Vec<String> {
    vec![
        format!("dst IN MX 10 {mx_host}."),
        "mx IN A 127.0.0.1".into(),
        format!("_{port}._tcp.mx IN TLSA 3 1 1 {tlsa_hex}"),
    ]
}

/// The outbound record names `mx.test` as the MX host used (trailing dot or not).
fn assert_mx_test(out: &serde_json::Value) {
    assert_eq!(
        out["mx"].as_str().map(|m| m.trim_end_matches('.')),
        Some("mx.test"),
        "{out}"
    );
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
    let sender = postfix_sender(node.addr("outbound[0]"));
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
        secure: one_mx(port, "mx.test", &spki_sha256_hex(pem)),
        ..Zones::default()
    });
    chain.submit_and_deliver();
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
    assert_mx_test(&out);
    check_encrypted(&mut chain.node, "inbound");
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
        insecure: one_mx(port, "mx.ins.test", &spki_sha256_hex(pem)),
        ..Zones::default()
    });
    chain.submit_and_deliver();
    let out = check_encrypted(&mut chain.node, "outbound");
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
    chain.submit_and_deliver();
    let out = check(
        &mut chain.node,
        "outbound",
        &[("achieved", "authenticated"), ("method", "dane")],
    );
    assert_mx_test(&out);
}

fn a_secure_mx_whose_tlsa_does_not_match_is_deferred_never_cleartext(io: Io) {
    let mut chain = chain(io, "dst.test", |port, _| Zones {
        secure: one_mx(port, "mx.test", &"ab".repeat(32)),
        ..Zones::default()
    });
    chain.submit();
    let deferred = chain.sender.wait_log(&["status=deferred"]);
    assert!(deferred.contains("4.7.5"), "{deferred}");
    check(
        &mut chain.node,
        "outbound",
        &[("achieved", "refused"), ("reason", "tlsa-invalid")],
    );
    assert!(chain.dest.messages().is_empty());
}
