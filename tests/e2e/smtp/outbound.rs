//! A local client relays to an SMTP `[[outbound]]`; osgate carries the session to scripted
//! destinations that misbehave the ways E.31–E.34 describe.

use super::*;

per_driver!(
    e31_a_reply_injected_after_220_is_discarded_and_the_ehlo_reply_comes_over_tls,
    e33_outbound_ehlos_again_over_tls_before_the_client_is_joined,
    e32_encrypt_destination_without_starttls_gets_4xx_and_never_mail_from,
    e32_encrypt_destination_answering_454_gets_4xx_and_never_mail_from,
    e32_encrypt_destination_failing_the_handshake_gets_4xx_and_never_mail_from,
    e32_opportunistic_destination_without_starttls_is_cleartext_starttls_not_supported,
    e34_an_over_long_reply_line_from_the_destination_is_a_protocol_error,
    e34_a_silent_destination_times_out_at_the_greeting,
    a_greeting_split_byte_by_byte_is_read_whole,
);

fn e31_a_reply_injected_after_220_is_discarded_and_the_ehlo_reply_comes_over_tls(io: Io) {
    let (_dir, dest, mut node) = scripted_outbound(io, Script::InjectAfter220, "opportunistic", "");
    let mut client = greeted(node.addr("outbound[0]"));
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    assert!(!ehlo.text().contains("INJECTED"), "{}", ehlo.text());
    assert!(!ehlo.has("STARTTLS"), "{}", ehlo.text());
    mail_and_quit(client);
    let seen = dest.session();
    let cleartext: Vec<_> = seen.iter().filter(|l| !l.starts_with("tls: ")).collect();
    assert!(!saw_transaction(
        &cleartext.iter().map(|s| (*s).clone()).collect::<Vec<_>>()
    ));
    assert!(saw_transaction(&seen), "{seen:#?}");
    let rec = check_encrypted(&mut node, "outbound");
    assert_eq!(rec["injected_bytes"], INJECTED.len(), "{rec}");
}

fn e33_outbound_ehlos_again_over_tls_before_the_client_is_joined(io: Io) {
    let (_dir, dest, mut node) = scripted_outbound(io, Script::Tls, "encrypt", "");
    let mut client = greeted(node.addr("outbound[0]"));
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.lines[0].contains(AFTER_TLS), "{}", ehlo.text());
    mail_and_quit(client);
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
    check_encrypted(&mut node, "outbound");
}

/// E.32 under `policy = "encrypt"` against `script`: 4xx locally, no MAIL at the destination.
fn e32_must_encrypt(io: Io, script: Script, starttls: &str) {
    let (_dir, dest, mut node) = scripted_outbound(io, script, "encrypt", "");
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
    let (_dir, dest, mut node) = scripted_outbound(io, Script::NoStarttls, "opportunistic", "");
    mail_and_quit(after_ehlo(node.addr("outbound[0]")));
    assert!(saw_transaction(&dest.session()));
    check_cleartext_not_offered(&mut node);
}

fn e34_an_over_long_reply_line_from_the_destination_is_a_protocol_error(io: Io) {
    let (_dir, dest, mut node) = scripted_outbound(io, Script::LongLine, "opportunistic", "");
    expect_no_delivery(node.addr("outbound[0]"));
    assert!(!saw_transaction(&dest.session()));
    check(
        &mut node,
        "outbound",
        &[("achieved", "refused"), ("reason", "smtp-protocol-error")],
    );
}

fn e34_a_silent_destination_times_out_at_the_greeting(io: Io) {
    let extra = "greeting_timeout_ms = 500";
    let (_dir, dest, mut node) = scripted_outbound(io, Script::Silent, "opportunistic", extra);
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
    let (_dir, _dest, mut node) = scripted_outbound(io, Script::ByteByByte, "encrypt", "");
    let mut client = Client::connect(node.addr("outbound[0]"));
    let greeting = client.reply();
    assert_eq!(greeting.text(), "220 scripted.test ESMTP");
    assert_eq!(client.command("EHLO client.test").code, 250);
    mail_and_quit(client);
    check_encrypted(&mut node, "outbound");
}
