//! TLS record framing (RFC 8446 §5.1), to send a real ClientHello the way unusual but valid
//! clients do: fragmented across records.

/// The handshake bytes carried by the plaintext records in `flight`.
pub fn handshake_bytes(mut flight: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !flight.is_empty() {
        assert_eq!(flight[0], 0x16, "a handshake record");
        let len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
        out.extend_from_slice(&flight[5..5 + len]);
        flight = &flight[5..];
        flight = &flight[len..];
    }
    out
}

/// Re-frames a first flight into handshake records whose fragments have the given sizes; the
/// last record takes what is left (sizes past the end are ignored).
pub fn reframe(flight: &[u8], sizes: &[usize]) -> Vec<u8> {
    let handshake = handshake_bytes(flight);
    let mut rest = &handshake[..];
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
