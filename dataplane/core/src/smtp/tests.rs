use proptest::prelude::*;

use super::*;
use crate::outcome::Starttls as Seen;

const EHLO_REPLY: &[u8] =
    b"250-mx.example.net\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 CHUNKING\r\n";

fn reply(text: &[u8]) -> Reply {
    match scan_reply(text) {
        ReplyScan::Complete(reply, len) if len == text.len() => reply,
        other => panic!("not one reply: {other:?}"),
    }
}

#[test]
fn a_reply_is_complete_only_at_its_last_line_wherever_it_is_split() {
    for cut in 0..EHLO_REPLY.len() {
        assert_eq!(
            scan_reply(&EHLO_REPLY[..cut]),
            ReplyScan::NeedMore,
            "cut at {cut}"
        );
    }
    let parsed = reply(EHLO_REPLY);
    assert_eq!(parsed.code, 250);
    assert_eq!(parsed.lines.len(), 4);
    assert!(parsed.lists(b"starttls") && parsed.lists(b"CHUNKING"));
    assert!(
        !parsed.lists(b"mx.example.net"),
        "the first line is the domain, not an extension"
    );
}

#[test]
fn replies_that_are_not_smtp_are_malformed() {
    for bad in [
        &b"250-a\r\n251 b\r\n"[..],
        b"25x ok\r\n",
        b"650 ok\r\n",
        b"250_ok\r\n",
        b"ok\r\n",
    ] {
        assert_eq!(scan_reply(bad), ReplyScan::Malformed, "{bad:?}");
    }
    let long = [b"250-".as_slice(), &[b'a'; MAX_LINE]].concat();
    assert_eq!(
        scan_reply(&long),
        ReplyScan::Malformed,
        "a line past the cap"
    );
    let many = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
    assert_eq!(
        scan_reply(&many),
        ReplyScan::Malformed,
        "lines past the cap"
    );
    assert!(matches!(scan_reply(b"220\r\n"), ReplyScan::Complete(_, 5)));
}

#[test]
fn starttls_is_offered_once_and_last_or_not_at_all() {
    let offered = reply(&reply(EHLO_REPLY).with_starttls(true).render());
    assert_eq!(
        offered.render(),
        b"250-mx.example.net\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
    );
    let removed = reply(EHLO_REPLY).with_starttls(false).render();
    assert_eq!(
        removed,
        b"250-mx.example.net\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    );
    let bare = reply(b"250 mx.example.net\r\n")
        .with_starttls(true)
        .render();
    assert_eq!(bare, b"250-mx.example.net\r\n250 STARTTLS\r\n");
}

#[test]
fn verbs_are_case_insensitive_first_words() {
    assert_eq!(verb(b"ehlo client.example\r\n"), Verb::Ehlo);
    assert_eq!(verb(b"StartTLS\r\n"), Verb::Starttls);
    assert_eq!(verb(b"STARTTLSX\r\n"), Verb::Other);
    assert_eq!(verb(b"MAIL FROM:<a@b>\n"), Verb::Mail);
    assert_eq!(verb(b"\r\n"), Verb::Other);
}

/// Drives an inbound session with a scripted backend: every line forwarded gets `250 ok`,
/// EHLO gets [`EHLO_REPLY`], QUIT gets 221. Returns what the backend received before TLS,
/// after TLS, what the client got, and how the session ended.
struct Run {
    before_tls: Vec<u8>,
    after_tls: Vec<u8>,
    to_client: Vec<u8>,
    end: Then,
    session: Inbound,
}

fn backend_answer(line: &[u8]) -> &'static [u8] {
    match verb(line) {
        Verb::Ehlo => EHLO_REPLY,
        Verb::Quit => b"221 bye\r\n",
        _ => b"250 ok\r\n",
    }
}

fn run_inbound(mode: InboundStarttls, reads: &[&[u8]]) -> Run {
    run_inbound_tls(mode, reads, None)
}

/// As [`run_inbound`]; with `in_tls`, the reads left when STARTTLS is answered would reach the
/// TLS stack as (bad) ciphertext, so they are dropped, and `in_tls` is read after the handshake.
fn run_inbound_tls(mode: InboundStarttls, reads: &[&[u8]], in_tls: Option<&[&[u8]]>) -> Run {
    let (mut session, mut step) = Inbound::new(mode);
    let mut run = Run {
        before_tls: Vec::new(),
        after_tls: Vec::new(),
        to_client: Vec::new(),
        end: Then::ReadServer,
        session: Inbound::new(mode).0,
    };
    let mut reads = reads.iter();
    let mut greeted = false;
    loop {
        run.to_client.extend(&step.to_client);
        let lines: Vec<Vec<u8>> = step
            .to_server
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        match session.tls() {
            false => run.before_tls.extend(&step.to_server),
            true => run.after_tls.extend(&step.to_server),
        }
        step = match step.then {
            Then::ReadServer if !greeted => {
                greeted = true;
                session.on_server(b"220 backend ESMTP\r\n")
            }
            Then::ReadServer => {
                let answers: Vec<u8> = lines
                    .iter()
                    .flat_map(|l| backend_answer(l).to_vec())
                    .collect();
                session.on_server(&answers)
            }
            Then::ReadClient => match reads.next() {
                Some(bytes) => session.on_client(bytes),
                None => break,
            },
            Then::StartTls => {
                if let Some(in_tls) = in_tls {
                    reads = in_tls.iter();
                }
                session.on_tls_established()
            }
            end => {
                run.end = end;
                break;
            }
        };
    }
    if run.end == Then::ReadServer {
        run.end = Then::ReadClient;
    }
    run.session = session;
    run
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_backend_greeting_goes_out_before_the_client_says_anything() {
    let (mut session, step) = Inbound::new(InboundStarttls::Offer);
    assert_eq!(
        step.then,
        Then::ReadServer,
        "the server speaks first (CONFORMANCE A.3)"
    );
    let step = session.on_server(b"220 backend ESMTP\r\n");
    assert_eq!(step.to_client, b"220 backend ESMTP\r\n");
    assert_eq!(step.then, Then::ReadClient);
}

#[test]
fn ehlo_before_tls_offers_osgates_starttls_and_after_tls_none() {
    let run = run_inbound(
        InboundStarttls::Offer,
        &[
            b"EHLO c\r\n",
            b"STARTTLS\r\n",
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b>\r\n",
        ],
    );
    let ehlo_offer = b"250-mx.example.net\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n";
    let ehlo_tls = b"250-mx.example.net\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
    assert!(contains(&run.to_client, ehlo_offer));
    assert!(contains(
        &run.to_client,
        b"220 2.0.0 Ready to start TLS\r\n"
    ));
    assert!(
        run.to_client.ends_with(ehlo_tls),
        "{:?}",
        String::from_utf8_lossy(&run.to_client)
    );
    assert_eq!(
        run.before_tls, b"EHLO c\r\n",
        "the backend never sees STARTTLS"
    );
    assert_eq!(run.after_tls, b"EHLO c\r\n");
    assert_eq!(run.end, Then::Relay);
}

/// CONFORMANCE E.30, every way the injected segment can be split into reads: nothing the
/// client sent after STARTTLS and before the handshake reaches the backend.
#[test]
fn nothing_sent_after_starttls_before_the_handshake_reaches_the_backend() {
    let script: &[u8] = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n";
    for cut_a in 0..=script.len() {
        for cut_b in cut_a..=script.len() {
            let reads = [&script[..cut_a], &script[cut_a..cut_b], &script[cut_b..]];
            let reads: Vec<&[u8]> = reads.into_iter().filter(|r| !r.is_empty()).collect();
            for mode in [InboundStarttls::Offer, InboundStarttls::Require] {
                let in_tls: &[&[u8]] = &[b"EHLO c\r\n", b"MAIL FROM:<good@x>\r\n"];
                let run = run_inbound_tls(mode, &reads, Some(in_tls));
                let all = [run.before_tls.as_slice(), &run.after_tls].concat();
                assert!(!contains(&all, b"evil"), "cuts {cut_a},{cut_b} {mode:?}");
                assert!(!contains(&all, b"RCPT"), "cuts {cut_a},{cut_b} {mode:?}");
                assert_eq!(run.after_tls, b"EHLO c\r\n", "cuts {cut_a},{cut_b}");
                assert_eq!(run.end, Then::Relay);
                // The read that ends the STARTTLS line: the rest of it is what was injected.
                let starttls_end = 18;
                let read_end = [cut_a, cut_b, script.len()]
                    .into_iter()
                    .find(|&end| end >= starttls_end)
                    .unwrap_or(script.len());
                assert_eq!(
                    run.session.injected_bytes() as usize,
                    read_end - starttls_end,
                    "cuts {cut_a},{cut_b}"
                );
            }
        }
    }
}

#[test]
fn require_refuses_mail_and_credentials_before_tls_with_530() {
    let run = run_inbound(
        InboundStarttls::Require,
        &[b"EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN x\r\nVRFY root\r\nNOOP\r\n"],
    );
    assert_eq!(run.before_tls, b"EHLO c\r\nNOOP\r\n");
    let refusals = run
        .to_client
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"530 5.7.0"))
        .count();
    assert_eq!(refusals, 3);
    assert_eq!(run.end, Then::ReadClient);
}

#[test]
fn offer_lets_a_client_without_tls_go_on_in_cleartext() {
    let run = run_inbound(
        InboundStarttls::Offer,
        &[b"EHLO c\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"],
    );
    assert_eq!(run.end, Then::Relay);
    assert!(run.session.cleartext_transaction());
    assert_eq!(
        run.before_tls,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
    );
}

/// CONFORMANCE E.33: after TLS the client must greet again before a transaction.
#[test]
fn after_tls_a_transaction_needs_a_new_ehlo() {
    let run = run_inbound(
        InboundStarttls::Require,
        &[
            b"EHLO c\r\n",
            b"STARTTLS\r\n",
            b"MAIL FROM:<a@b>\r\n",
            b"EHLO c\r\n",
        ],
    );
    assert!(contains(&run.to_client, b"503 5.5.1"));
    assert_eq!(run.after_tls, b"EHLO c\r\n");
    assert_eq!(run.end, Then::Relay);
}

#[test]
fn an_over_long_command_line_is_refused_and_the_session_closed() {
    let long = vec![b'A'; MAX_LINE];
    let run = run_inbound(InboundStarttls::Offer, &[&long]);
    assert!(run.to_client.ends_with(b"500 5.5.0 Line too long\r\n"));
    assert_eq!(
        run.end,
        Then::Close(crate::outcome::Reason::SmtpProtocolError)
    );
    assert!(run.before_tls.is_empty());
}

#[test]
fn a_backend_that_refuses_service_is_passed_on_and_the_session_ends() {
    let (mut session, _) = Inbound::new(InboundStarttls::Offer);
    let step = session.on_server(b"554 no service\r\n");
    assert_eq!(step.to_client, b"554 no service\r\n");
    assert!(matches!(step.then, Then::Close(_)));
}

fn dialogue_to_tls(greeting_cuts: usize) -> (Dialogue, Progress) {
    let (mut d, _) = Dialogue::new("relay.example", true);
    let greeting = b"220-mx.example.net ESMTP\r\n220 hello\r\n";
    let mut progress = Progress::Read(Vec::new());
    for chunk in greeting.chunks(greeting_cuts) {
        progress = d.on_server(chunk);
    }
    assert_eq!(progress, Progress::Read(b"EHLO relay.example\r\n".to_vec()));
    let progress = d.on_server(EHLO_REPLY);
    assert_eq!(progress, Progress::Read(b"STARTTLS\r\n".to_vec()));
    (d, progress)
}

#[test]
fn outbound_greeting_split_byte_by_byte_then_starttls() {
    for cut in 1..8 {
        let (mut d, _) = dialogue_to_tls(cut);
        assert_eq!(d.on_server(b"220 2.0.0 go ahead\r\n"), Progress::StartTls);
        assert_eq!(d.injected_bytes(), 0);
        assert_eq!(
            d.on_tls_established(),
            Progress::Read(b"EHLO relay.example\r\n".to_vec())
        );
        let Progress::Ready(ready) = d.on_server(b"250 mx.example.net\r\n") else {
            panic!("not ready")
        };
        assert!(ready.tls);
        assert_eq!(ready.starttls, Seen::Used);
        assert_eq!(ready.greeting, b"220-mx.example.net ESMTP\r\n220 hello\r\n");
    }
}

/// CONFORMANCE E.31: lines after the 220 are dropped; the post-TLS EHLO reply is read only
/// from what arrives after the handshake.
#[test]
fn outbound_response_injection_after_the_220_is_discarded() {
    let (mut d, _) = dialogue_to_tls(64);
    let injected = b"250-mx.example.net\r\n250 AUTH PLAIN\r\n";
    let with_injection = [b"220 go ahead\r\n".as_slice(), injected].concat();
    assert_eq!(d.on_server(&with_injection), Progress::StartTls);
    assert_eq!(d.injected_bytes() as usize, injected.len());
    d.on_tls_established();
    assert_eq!(
        d.on_server(b"250 mx"),
        Progress::Read(Vec::new()),
        "an incomplete reply waits"
    );
    assert!(matches!(
        d.on_server(b" ok\r\n"),
        Progress::Ready(Ready { tls: true, .. })
    ));
}

#[test]
fn outbound_without_starttls_or_with_454_is_ready_in_cleartext() {
    let (mut d, _) = Dialogue::new("r", true);
    d.on_server(b"220 mx\r\n");
    let Progress::Ready(ready) = d.on_server(b"250-mx\r\n250 PIPELINING\r\n") else {
        panic!()
    };
    assert_eq!((ready.tls, ready.starttls), (false, Seen::NotOffered));
    let (mut d, _) = dialogue_to_tls(64);
    let Progress::Ready(ready) = d.on_server(b"454 4.7.0 TLS not available\r\n") else {
        panic!()
    };
    assert_eq!((ready.tls, ready.starttls), (false, Seen::Refused));
    let (mut d, _) = Dialogue::new("r", true);
    d.on_server(b"220 mx\r\n");
    assert_eq!(
        d.on_server(b"502 what\r\n"),
        Progress::Read(b"HELO r\r\n".to_vec())
    );
    assert!(matches!(
        d.on_server(b"250 mx\r\n"),
        Progress::Ready(Ready { tls: false, .. })
    ));
}

#[test]
fn outbound_refusals_and_garbage_fail() {
    let (mut d, _) = Dialogue::new("r", true);
    assert!(matches!(
        d.on_server(b"554 go away\r\n"),
        Progress::Failed(Failure::Refused(_))
    ));
    let (mut d, _) = Dialogue::new("r", true);
    assert_eq!(
        d.on_server(b"HTTP/1.1 400\r\n"),
        Progress::Failed(Failure::Protocol)
    );
    let (mut d, _) = Dialogue::new("r", true);
    assert_eq!(
        d.on_server(&[b'2'; MAX_LINE]),
        Progress::Failed(Failure::Protocol)
    );
    let (mut d, _) = dialogue_to_tls(64);
    d.on_server(b"220 go\r\n");
    d.on_tls_established();
    assert_eq!(
        d.on_server(b"421 bye\r\n"),
        Progress::Failed(Failure::Protocol)
    );
}

#[test]
fn the_local_client_gets_the_greeting_and_an_ehlo_reply_without_starttls() {
    let (mut join, step) = Join::new(b"220 mx\r\n".to_vec());
    assert_eq!(
        (step.to_client.as_slice(), &step.then),
        (&b"220 mx\r\n"[..], &Then::ReadClient)
    );
    let step = join.on_client(b"EHLO local\r\nMAIL FROM:<a@b>\r\n");
    assert_eq!(step.to_server, b"EHLO local\r\n");
    assert_eq!(step.then, Then::ReadServer);
    let step = join.on_server(&[EHLO_REPLY, b"250 ok\r\n"].concat());
    assert_eq!(
        step.to_client,
        [
            b"250-mx.example.net\r\n250-PIPELINING\r\n250 CHUNKING\r\n".as_slice(),
            b"250 ok\r\n"
        ]
        .concat()
    );
    assert_eq!(
        step.to_server, b"MAIL FROM:<a@b>\r\n",
        "pipelined bytes follow the EHLO"
    );
    assert_eq!(step.then, Then::Relay);
}

#[test]
fn a_deferral_answers_4xx_to_mail_and_sends_nothing_on() {
    let why = crate::outcome::Reason::StarttlsNotSupported;
    let (mut d, step) = Deferral::new("gw", "mx.example.net", why);
    assert!(step.to_client.starts_with(b"220 gw"));
    let step = d.on_client(b"EHLO local\r\nMAIL FROM:<a@b>\r\n");
    assert!(
        step.to_client.starts_with(b"250 gw\r\n451 4.7.5 "),
        "{:?}",
        String::from_utf8_lossy(&step.to_client)
    );
    assert!(contains(&step.to_client, b"starttls-not-supported"));
    let step = d.on_client(b"QUIT\r\n");
    assert_eq!(step.then, Then::Close(crate::outcome::Reason::None));
    let (mut d, _) = Deferral::new("gw", "mx.example.net", crate::outcome::Reason::Unreachable);
    let step = d.on_client(b"MAIL FROM:<a@b>\r\n");
    assert!(
        step.to_client
            .starts_with(b"451 4.4.1 mx.example.net cannot be reached"),
        "not a TLS failure"
    );
}

proptest! {
    #[test]
    fn a_deferral_never_forwards_and_always_ends(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (mut d, _) = Deferral::new("gw", "mx", crate::outcome::Reason::TlsHandshakeFailed);
        for chunk in input.chunks(97) {
            let step = d.on_client(chunk);
            prop_assert!(step.to_server.is_empty());
            if matches!(step.then, Then::Close(_)) { break; }
        }
    }

    #[test]
    fn reply_scanning_never_panics_and_is_prefix_monotone(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let full = scan_reply(&input);
        for cut in 0..input.len() {
            match scan_reply(&input[..cut]) {
                ReplyScan::NeedMore => {}
                earlier => prop_assert_eq!(&earlier, &full, "cut {}", cut),
            }
        }
    }
}

proptest! {
    /// The fuzz target's property (fuzz/fuzz_targets/smtp.rs), here for every test run: any
    /// bytes from either side never panic, and between STARTTLS and the handshake nothing
    /// reaches the backend.
    #[test]
    fn nothing_reaches_the_backend_while_tls_is_pending(
        require in any::<bool>(),
        chunks in proptest::collection::vec((0u8..3, proptest::collection::vec(any::<u8>(), 0..80)), 0..40),
    ) {
        let mode = if require { InboundStarttls::Require } else { InboundStarttls::Offer };
        let (mut inbound, _) = Inbound::new(mode);
        let mut pending = false;
        for (side, bytes) in chunks {
            let step = match side {
                0 => inbound.on_client(&bytes),
                1 => inbound.on_server(&bytes),
                _ if pending => { pending = false; inbound.on_tls_established() }
                _ => continue,
            };
            if pending {
                prop_assert!(step.to_server.is_empty());
            }
            pending |= step.then == Then::StartTls;
        }
    }

    /// Scripted well-formed sessions with STARTTLS at a random point: every command the
    /// client sent before TLS that the backend received was sent before the STARTTLS line.
    #[test]
    fn commands_cross_only_on_their_side_of_the_handshake(cut in 0usize..64, split in 1usize..16) {
        let before: &[u8] = b"EHLO c\r\nNOOP\r\n";
        let injected: &[u8] = b"RSET\r\nMAIL FROM:<x@y>\r\n";
        let script = [before, b"STARTTLS\r\n", injected].concat();
        let cut = cut.min(script.len());
        let reads: Vec<&[u8]> = script[..cut].chunks(split).chain(std::iter::once(&script[cut..])).collect();
        let in_tls: &[&[u8]] = &[b"EHLO c\r\n"];
        let run = run_inbound_tls(InboundStarttls::Offer, &reads, Some(in_tls));
        prop_assert_eq!(run.before_tls.as_slice(), b"EHLO c\r\nNOOP\r\n".as_slice());
        prop_assert!(!contains(&run.after_tls, b"RSET") && !contains(&run.after_tls, b"MAIL"));
    }
}
