//! osgate in front of a TLS-less MTA: an SMTP `[[inbound]]` against the scripted client, swaks
//! and Postfix behind it.

use super::*;

per_driver!(
    e30_commands_after_starttls_in_the_same_write_are_never_acted_on,
    e30_an_injected_transaction_never_changes_what_postfix_delivers,
    e33_inbound_client_must_ehlo_again_after_tls,
    e34_an_over_long_command_line_is_refused_and_never_relayed,
    a3_the_backend_banner_goes_out_at_once_without_a_client_byte,
    require_mode_answers_530_before_starttls,
    swaks_without_tls_gets_530_in_require_mode_and_nothing_is_delivered,
    swaks_pipelines_through_the_inbound_starttls_to_postfix,
    bdat_chunks_pass_through_the_inbound_after_tls,
    inbound_offers_its_own_starttls_and_never_the_backends,
    offer_mode_carries_a_cleartext_client_and_says_cleartext,
    a_backend_greeting_split_byte_by_byte_reaches_the_client_whole,
    a_backend_refusing_service_is_relayed_and_the_session_closed,
    e34_a_client_silent_mid_session_is_closed_at_the_command_timeout,
    e34_a_silent_backend_is_closed_at_the_greeting_timeout,
);

fn e30_commands_after_starttls_in_the_same_write_are_never_acted_on(io: Io) {
    let (_dir, backend, mut node) = scripted_inbound(io, Script::NoStarttls, "");
    let mut client = greeted(node.addr("inbound[0]"));
    let ehlo = client.command("EHLO client.test");
    assert!(ehlo.has("STARTTLS"), "{}", ehlo.text());
    let injected = "MAIL FROM:<injected@evil.test>\r\n";
    client.write(format!("STARTTLS\r\n{injected}").as_bytes());
    assert_eq!(client.reply().code, 220);
    client.handshake("mx.test").unwrap();
    // Had the injected MAIL been kept, this one would get 503 (nested MAIL).
    assert_eq!(client.command("EHLO client.test").code, 250);
    mail_and_quit(client);
    let seen = backend.session();
    assert!(
        !seen.iter().any(|l| l.contains("injected@evil.test")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l == &format!("MAIL FROM:<{FROM}>")),
        "{seen:#?}"
    );
    let rec = check_encrypted(&mut node, "inbound");
    assert_eq!(rec["injected_bytes"], injected.len(), "{rec}");
}

fn e30_an_injected_transaction_never_changes_what_postfix_delivers(io: Io) {
    let (_dir, mta, mut node) = postfix_inbound(io, "");
    let mut client = after_ehlo(node.addr("inbound[0]"));
    let injected = format!(
        "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<{MAILBOX}>\r\nDATA\r\nSubject: injected\r\n\r\nevil\r\n.\r\n"
    );
    client.write(format!("STARTTLS\r\n{injected}").as_bytes());
    assert_eq!(client.reply().code, 220);
    client.handshake("mx.test").unwrap();
    assert_eq!(client.command("EHLO client.test").code, 250);
    mail_and_quit(client);
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
    let (_dir, backend, mut node) = scripted_inbound(io, Script::NoStarttls, "");
    let mut client = after_ehlo(node.addr("inbound[0]"));
    assert_eq!(client.command("STARTTLS").code, 220);
    client.handshake("mx.test").unwrap();
    // RFC 3207 §4.2: the session state is reset; a transaction before EHLO is out of order.
    let early = client.command(&format!("MAIL FROM:<{FROM}>"));
    assert_eq!(early.code, 503, "{}", early.text());
    assert!(early.text().contains("5.5.1"), "{}", early.text());
    assert_eq!(client.command("EHLO client.test").code, 250);
    mail_and_quit(client);
    let seen = backend.session();
    let mails = count(&seen, "MAIL");
    assert_eq!(
        mails, 1,
        "only the MAIL after the second EHLO reaches the MTA: {seen:#?}"
    );
    let ehlo_after_tls = seen.iter().rposition(|l| l.starts_with("EHLO")).unwrap();
    let mail = seen.iter().position(|l| l.starts_with("MAIL")).unwrap();
    assert!(ehlo_after_tls < mail, "{seen:#?}");
    check_encrypted(&mut node, "inbound");
}

fn e34_an_over_long_command_line_is_refused_and_never_relayed(io: Io) {
    let (_dir, backend, mut node) = scripted_inbound(io, Script::NoStarttls, "");
    let mut client = after_ehlo(node.addr("inbound[0]"));
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
    let (_dir, backend, mut node) =
        scripted_inbound(io, Script::NoStarttls, "starttls = \"require\"");
    let mut client = after_ehlo(node.addr("inbound[0]"));
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
    mail_and_quit(client);
    let seen = backend.session();
    assert_eq!(count(&seen, "MAIL"), 1, "{seen:#?}");
    check_encrypted(&mut node, "inbound");
}

fn swaks_without_tls_gets_530_in_require_mode_and_nothing_is_delivered(io: Io) {
    let (_dir, mta, mut node) = postfix_inbound(io, "starttls = \"require\"");
    let (ok, transcript) = swaks_cleartext(node.addr("inbound[0]"), "must not arrive");
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
    let (_dir, mta, mut node) = postfix_inbound(io, "");
    let (ok, transcript) = swaks_tls_pipelined(node.addr("inbound[0]"), "pipelined body");
    assert!(ok, "{transcript}");
    assert!(transcript.contains("TLS started"), "{transcript}");
    let message = mta.wait_messages(1);
    assert!(String::from_utf8_lossy(&message).contains("pipelined body"));
    check_encrypted(&mut node, "inbound");
}

fn bdat_chunks_pass_through_the_inbound_after_tls(io: Io) {
    let (_dir, mta, mut node) = postfix_inbound(io, "");
    let mut client = greeted(node.addr("inbound[0]"));
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
    check_encrypted(&mut node, "inbound");
}

fn inbound_offers_its_own_starttls_and_never_the_backends(io: Io) {
    // A backend that offers STARTTLS itself: osgate answers it, the backend never sees it.
    let (_dir, backend, mut node) = scripted_inbound(io, Script::Tls, "");
    let mut client = greeted(node.addr("inbound[0]"));
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
    mail_and_quit(client);
    let seen = backend.session();
    assert!(!seen.iter().any(|l| l.contains("STARTTLS")), "{seen:#?}");
    assert_eq!(count(&seen, "EHLO"), 2, "{seen:#?}");
    check_encrypted(&mut node, "inbound");
}

fn offer_mode_carries_a_cleartext_client_and_says_cleartext(io: Io) {
    let (_dir, mta, mut node) = postfix_inbound(io, "starttls = \"offer\"");
    let (ok, transcript) = swaks_cleartext(node.addr("inbound[0]"), "cleartext body");
    assert!(ok, "{transcript}");
    assert!(String::from_utf8_lossy(&mta.wait_messages(1)).contains("cleartext body"));
    check(
        &mut node,
        "inbound",
        &[("achieved", "cleartext"), ("starttls", "offered")],
    );
}

fn a_backend_greeting_split_byte_by_byte_reaches_the_client_whole(io: Io) {
    let (_dir, _backend, mut node) = scripted_inbound(io, Script::ByteByByte, "");
    let mut client = Client::connect(node.addr("inbound[0]"));
    assert_eq!(client.reply().text(), "220 scripted.test ESMTP");
    assert_eq!(client.starttls("mx.test").code, 250);
    mail_and_quit(client);
    check_encrypted(&mut node, "inbound");
}

fn a_backend_refusing_service_is_relayed_and_the_session_closed(io: Io) {
    let (_dir, backend, mut node) = scripted_inbound(io, Script::Refuses554, "");
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
    let (_dir, backend, mut node) =
        scripted_inbound(io, Script::NoStarttls, "command_timeout_ms = 500");
    let mut client = after_ehlo(node.addr("inbound[0]"));
    closed_within(&mut client, Duration::from_secs(10));
    check(&mut node, "inbound", &[("protocol", "smtp")]);
    assert!(!saw_transaction(&backend.session()));
}

fn e34_a_silent_backend_is_closed_at_the_greeting_timeout(io: Io) {
    let (_dir, backend, mut node) =
        scripted_inbound(io, Script::Silent, "greeting_timeout_ms = 500");
    let mut client = Client::connect(node.addr("inbound[0]"));
    closed_within(&mut client, Duration::from_secs(10));
    check(&mut node, "inbound", &[("protocol", "smtp")]);
    assert!(
        backend.session().is_empty(),
        "no client byte reached the backend"
    );
}
