use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// A real ClientHello from rustls with the default (post-quantum first) groups.
fn client_hello() -> Vec<u8> {
    let policy = crate::crypto::CryptoPolicy::new(
        crate::crypto::KxGroup::DEFAULT,
        crate::crypto::TlsFloor::Tls12,
    )
    .unwrap();
    let config = policy.unauthenticated_client().unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(&config), "gw.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_real_post_quantum_client_hello_is_tls_at_every_split() {
    let hello = client_hello();
    assert!(hello.len() > 1024, "{} bytes", hello.len());
    for cut in 0..=hello.len() {
        // Unfragmented: the record header and the hello's first 6 bytes decide.
        let expected = if cut < 11 {
            Detection::NeedMore
        } else {
            Detection::Tls
        };
        assert_eq!(
            classify_client_hello(&hello[..cut]),
            expected,
            "prefix of {cut} bytes"
        );
    }
}

/// The handshake bytes of the records in `hello` (RFC 8446 §5.1: a 5-byte header, then the
/// fragment).
fn handshake_bytes(mut hello: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !hello.is_empty() {
        assert_eq!(hello[0], 0x16, "a handshake record");
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        out.extend_from_slice(&hello[5..5 + len]);
        hello = &hello[5 + len..];
    }
    out
}

/// Re-frames a ClientHello into handshake records whose payloads have the given sizes (the
/// last record takes the rest).
fn reframe(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut rest = &handshake_bytes(hello)[..];
    let mut out = Vec::new();
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let size = sizes.next().map_or(rest.len(), |&n| n.min(rest.len()));
        let (fragment, tail) = rest.split_at(size);
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(size).unwrap().to_be_bytes());
        out.extend_from_slice(fragment);
        rest = tail;
    }
    out
}

/// Every prefix of `framed` is `NeedMore` until the classifier says `Tls`, then `Tls`; it
/// decides within `MAX_PEEK` bytes. Returns the length at which it decided.
fn tls_from_some_prefix(framed: &[u8]) -> usize {
    let decided = (0..=framed.len())
        .find(|&cut| classify_client_hello(&framed[..cut]) != Detection::NeedMore)
        .expect("decided");
    assert!(decided <= MAX_PEEK, "decided after {decided} bytes");
    for cut in decided..=framed.len() {
        assert_eq!(
            classify_client_hello(&framed[..cut]),
            Detection::Tls,
            "prefix of {cut} bytes"
        );
    }
    decided
}

/// CONFORMANCE A.1, RFC 8446 §5.1: "a single message MAY be fragmented across several
/// records". One handshake byte per record is the worst case, and it fits `MAX_PEEK`.
#[test]
fn a_client_hello_in_one_byte_records_is_tls() {
    let hello = client_hello();
    let framed = reframe(&hello, &vec![1; hello.len()]);
    assert_eq!(handshake_bytes(&framed), handshake_bytes(&hello));
    assert_eq!(tls_from_some_prefix(&framed), MAX_PEEK);
}

/// Issue 8 defect 4: a first record holding 1..=5 handshake bytes was read as if the
/// ClientHello's header were all in it, and refused.
#[test]
fn every_split_of_the_first_record_is_tls() {
    let hello = client_hello();
    for first in 1..=16 {
        let framed = reframe(&hello, &[first]);
        let decided = tls_from_some_prefix(&framed);
        // Short first record: both headers and the hello's first 6 bytes decide.
        let expected = if first < 6 { 16 } else { 11 };
        assert_eq!(decided, expected, "first record of {first} bytes");
    }
}

/// Every two-record split of the first handshake bytes, both records short.
#[test]
fn every_split_across_three_records_is_tls() {
    let hello = client_hello();
    for first in 1..=6 {
        for second in 1..=6 {
            tls_from_some_prefix(&reframe(&hello, &[first, second]));
        }
    }
}

#[test]
fn a_fragmented_hello_is_checked_across_records() {
    let hello = client_hello();
    // A ChangeCipherSpec record between the fragments (RFC 8446 §5.1: no interleaving).
    let mut interleaved = reframe(&hello, &[2])[..7].to_vec();
    interleaved.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    assert_eq!(
        classify_client_hello(&interleaved),
        Detection::Reject(Malformed::Interleaved)
    );
    // A zero-length second record (RFC 8446 §5.1: "MUST NOT send zero-length fragments").
    let mut empty = reframe(&hello, &[2])[..7].to_vec();
    empty.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x00]);
    assert_eq!(
        classify_client_hello(&empty),
        Detection::Reject(Malformed::RecordLength)
    );
    // An SSL 3.0 legacy_version split across records is still refused.
    let mut old = reframe(&hello, &[5]);
    old[5 + 5 + 5] = 0;
    assert_eq!(
        classify_client_hello(&old),
        Detection::Reject(Malformed::HelloVersion)
    );
}

#[test]
fn cleartext_protocols_are_cleartext_from_the_first_byte() {
    for text in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"EHLO x\r\n",
        b"\x00\x00",
        b"SSH-2.0-",
    ] {
        assert_eq!(
            classify_client_hello(&text[..1]),
            Detection::Cleartext,
            "{text:?}"
        );
        assert_eq!(
            classify_client_hello(text),
            Detection::Cleartext,
            "{text:?}"
        );
    }
}

#[test]
fn tls_lookalikes_are_rejected_with_a_kind() {
    let cases: [(&[u8], Malformed); 6] = [
        (&[0x80, 0x2e, 0x01, 0x00, 0x02], Malformed::Sslv2Hello),
        (&[0x16, 0x02, 0x00], Malformed::RecordVersion),
        (&[0x16, 0x03, 0x09], Malformed::RecordVersion),
        (&[0x16, 0x03, 0x01, 0x00, 0x00], Malformed::RecordLength),
        (&[0x16, 0x03, 0x01, 0x40, 0x01], Malformed::RecordLength),
        (
            &[0x16, 0x03, 0x01, 0x00, 0x30, 0x02],
            Malformed::NotClientHello,
        ),
    ];
    for (bytes, kind) in cases {
        assert_eq!(
            classify_client_hello(bytes),
            Detection::Reject(kind),
            "{bytes:02x?}"
        );
    }
    let old_hello = [0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0, 0, 0x2c, 0x02, 0x00];
    assert_eq!(
        classify_client_hello(&old_hello),
        Detection::Reject(Malformed::HelloVersion)
    );
    // A binary protocol with the high bit set but no SSLv2 message type is cleartext.
    assert_eq!(
        classify_client_hello(&[0x80, 0x00, 0x05]),
        Detection::Cleartext
    );
}

#[test]
fn server_flights_tell_tls_from_banners() {
    assert_eq!(
        classify_server_flight(b"220 mx.example ESMTP\r\n"),
        Detection::Cleartext
    );
    assert_eq!(
        classify_server_flight(b"HTTP/1.1 400 Bad Request"),
        Detection::Cleartext
    );
    assert_eq!(
        classify_server_flight(&[0x16, 0x03, 0x03, 0x00, 0x7a]),
        Detection::Tls
    );
    assert_eq!(
        classify_server_flight(&[0x15, 0x03, 0x03, 0x00, 0x02]),
        Detection::Tls
    );
    assert_eq!(classify_server_flight(&[0x16, 0x03]), Detection::NeedMore);
    assert_eq!(
        classify_server_flight(&[0x16, 0x03, 0x03, 0xff, 0xff]),
        Detection::Reject(Malformed::RecordLength)
    );
}

proptest! {
    /// CONFORMANCE A.6: no panic, and once decided, longer inputs keep the answer.
    #[test]
    fn classification_is_monotone(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        for classify in [classify_client_hello, classify_server_flight] {
            let mut decided = None;
            for cut in 0..=bytes.len() {
                let verdict = classify(&bytes[..cut]);
                if let Some(first) = decided {
                    prop_assert_eq!(verdict, first, "prefix {} of {:02x?}", cut, bytes);
                } else if verdict != Detection::NeedMore {
                    decided = Some(verdict);
                }
            }
            if bytes.len() >= MAX_PEEK {
                prop_assert_ne!(classify(&bytes), Detection::NeedMore, "bounded: {:02x?}", bytes);
            }
        }
    }

    /// Any framing of a real hello into records is TLS, and never anything else on the way.
    #[test]
    fn any_framing_is_tls(sizes in proptest::collection::vec(1usize..40, 0..12)) {
        let framed = reframe(&client_hello(), &sizes);
        let decided = tls_from_some_prefix(&framed);
        prop_assert!(decided <= MAX_PEEK);
    }

    /// Monotone and bounded over inputs made of short handshake records (random bytes rarely
    /// reach the multi-record path).
    #[test]
    fn fragmented_classification_is_monotone(
        records in proptest::collection::vec(
            (prop_oneof![Just(0x16u8), any::<u8>()], 0u8..6, 0u16..8,
             proptest::collection::vec(any::<u8>(), 0..8)),
            0..8,
        ),
    ) {
        let mut bytes = Vec::new();
        for (kind, minor, len, payload) in records {
            bytes.extend_from_slice(&[kind, 3, minor]);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&payload);
        }
        let mut decided = None;
        for cut in 0..=bytes.len() {
            let verdict = classify_client_hello(&bytes[..cut]);
            if let Some(first) = decided {
                prop_assert_eq!(verdict, first, "prefix {} of {:02x?}", cut, bytes);
            } else if verdict != Detection::NeedMore {
                decided = Some(verdict);
            }
        }
        if bytes.len() >= MAX_PEEK {
            prop_assert_ne!(classify_client_hello(&bytes), Detection::NeedMore);
        }
    }

    /// A 0x16-led prefix of a real hello with random tails after byte 11 stays TLS.
    #[test]
    fn bytes_after_the_header_do_not_matter(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut hello = client_hello()[..MAX_PEEK].to_vec();
        hello.extend_from_slice(&tail);
        prop_assert_eq!(classify_client_hello(&hello), Detection::Tls);
    }
}

/// `Malformed::ALL` lists every kind once: a new kind fails to compile here until it is added.
#[test]
fn every_malformed_kind_is_listed_once() {
    let index = |kind: Malformed| match kind {
        Malformed::Sslv2Hello => 0,
        Malformed::RecordVersion => 1,
        Malformed::RecordLength => 2,
        Malformed::NotClientHello => 3,
        Malformed::HelloVersion => 4,
        Malformed::Interleaved => 5,
    };
    for (i, kind) in Malformed::ALL.into_iter().enumerate() {
        assert_eq!(index(kind), i, "{kind:?}");
    }
}
