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
        let expected = if cut < MAX_PEEK {
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

    /// A 0x16-led prefix of a real hello with random tails after byte 11 stays TLS.
    #[test]
    fn bytes_after_the_header_do_not_matter(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut hello = client_hello()[..MAX_PEEK].to_vec();
        hello.extend_from_slice(&tail);
        prop_assert_eq!(classify_client_hello(&hello), Detection::Tls);
    }
}
