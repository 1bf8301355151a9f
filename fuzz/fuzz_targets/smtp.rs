//! CONFORMANCE E.30–E.34: the SMTP dialogues never panic on any bytes from either side, and
//! nothing the client sent between STARTTLS and the handshake reaches the backend.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osgate_core::smtp::{Deferral, Dialogue, Inbound, InboundStarttls, Join, Then, scan_reply};

fuzz_target!(|data: &[u8]| {
    let _ = scan_reply(data);
    // The first byte picks the mode; then each chunk goes to the side its first byte says.
    let (mode, rest) = match data.split_first() {
        Some((m, rest)) if m % 2 == 0 => (InboundStarttls::Offer, rest),
        Some((_, rest)) => (InboundStarttls::Require, rest),
        None => return,
    };
    let (mut inbound, _) = Inbound::new(mode);
    let (mut dialogue, _) = Dialogue::new("fuzz.example", true);
    let (mut join, _) = Join::new(b"220 x\r\n".to_vec());
    let (mut deferral, _) = Deferral::new("fuzz.example", "mx", osgate_core::outcome::Reason::None);
    let mut awaiting_tls = false;
    for chunk in rest.chunks(61) {
        let (side, bytes) = chunk.split_first().unwrap_or((&0, &[]));
        let step = match side % 3 {
            0 => inbound.on_client(bytes),
            1 => inbound.on_server(bytes),
            _ if awaiting_tls => inbound.on_tls_established(),
            _ => continue,
        };
        if awaiting_tls && side % 3 != 2 {
            assert!(step.to_server.is_empty(), "bytes reached the backend before TLS was up");
        }
        awaiting_tls = match step.then {
            Then::StartTls => true,
            _ if side % 3 == 2 => false,
            _ => awaiting_tls,
        };
        let _ = dialogue.on_server(bytes);
        let _ = join.on_client(bytes);
        let _ = join.on_server(bytes);
        assert!(deferral.on_client(bytes).to_server.is_empty());
    }
});
