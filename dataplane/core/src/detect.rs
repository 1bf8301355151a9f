//! First-byte detection.
//!
//! Inbound, a listener peeks at what the client sends first and decides whether it is a TLS
//! ClientHello (terminate TLS), something else (cleartext, if the listener allows it), or TLS-like
//! garbage (reject). Outbound, the first bytes a peer answers our ClientHello with tell a TLS
//! server from a peer that does not speak TLS at all.
//!
//! Both classifiers are pure and *monotone*: once a prefix is classified as anything other than
//! [`Detection::NeedMore`], every longer input that starts with it gets the same answer. They
//! never look at more than [`MAX_PEEK`] bytes, so the caller's buffering is bounded.

/// Handshake bytes the inbound classifier reads: `msg_type` (1), `length` (3) and the
/// ClientHello's `legacy_version` (2).
const HELLO_PREFIX: usize = 6;
/// A TLS record header: type (1), version (2), length (2).
const RECORD_HEADER: usize = 5;

/// The most bytes any classification needs: RFC 8446 §5.1 lets a ClientHello be fragmented
/// across records, so in the worst case each of the [`HELLO_PREFIX`] handshake bytes comes in
/// its own one-byte record.
pub const MAX_PEEK: usize = HELLO_PREFIX * (RECORD_HEADER + 1);

/// RFC 8446 §5.1: `ContentType handshake(22)`.
const CONTENT_HANDSHAKE: u8 = 0x16;
/// RFC 8446 §5.1: `ContentType alert(21)`.
const CONTENT_ALERT: u8 = 0x15;
/// RFC 8446 §4: `HandshakeType client_hello(1)`.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes" (plaintext records; a ClientHello
/// record is always plaintext).
const MAX_PLAINTEXT_RECORD: u16 = 1 << 14;
/// RFC 8446 §5.1: records that may carry encrypted data are bounded by 2^14 + 256.
const MAX_CIPHERTEXT_RECORD: u16 = (1 << 14) + 256;

/// What the first bytes of a stream are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// A TLS ClientHello (inbound) or a TLS server's first flight (outbound).
    Tls,
    /// Not TLS at all.
    Cleartext,
    /// Starts like TLS but is not acceptable TLS.
    Reject(Malformed),
}

/// Why bytes that look like TLS were rejected. Bounded, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Malformed {
    /// An SSL 2.0-compatible ClientHello (RFC 6176 prohibits SSL 2.0).
    Sslv2Hello,
    /// The record header's protocol version is not 3.x.
    RecordVersion,
    /// The record length is zero or above the RFC 8446 §5.1 limit.
    RecordLength,
    /// A handshake record whose first message is not a ClientHello.
    NotClientHello,
    /// The ClientHello's `legacy_version` is not TLS 1.0–1.2 (RFC 8446 §4.1.2).
    HelloVersion,
    /// A record of another type inside a fragmented ClientHello (RFC 8446 §5.1: "Handshake
    /// messages MUST NOT be interleaved with other record types").
    Interleaved,
}

impl Malformed {
    /// Every kind, for metrics exported at 0 from start.
    pub const ALL: [Self; 6] = [
        Self::Sslv2Hello,
        Self::RecordVersion,
        Self::RecordLength,
        Self::NotClientHello,
        Self::HelloVersion,
        Self::Interleaved,
    ];

    /// The bounded label used in metrics and outcome records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sslv2Hello => "sslv2-hello",
            Self::RecordVersion => "bad-record-version",
            Self::RecordLength => "bad-record-length",
            Self::NotClientHello => "not-client-hello",
            Self::HelloVersion => "bad-hello-version",
            Self::Interleaved => "interleaved-record",
        }
    }
}

/// Classifies the first bytes a client sent to an inbound listener.
///
/// ```text
///  byte 0      1..3            3..5      5          6..9        9..11
///  type=0x16   record version  length    msg=0x01   hs length   legacy_version
/// ```
/// (RFC 8446 §5.1 `TLSPlaintext`, §4 `Handshake`, §4.1.2 `ClientHello`.) That is the layout of
/// an unfragmented hello. RFC 8446 §5.1 lets a handshake message span records ("multiple
/// messages of the same ContentType MAY be coalesced into a single TLSPlaintext record, or a
/// single message MAY be fragmented across several records"), so the handshake bytes are read
/// from the record payloads in order, skipping each record's header. The handshake length is
/// not checked against the record length for the same reason.
pub fn classify_client_hello(prefix: &[u8]) -> Detection {
    let Some(&first) = prefix.first() else {
        return Detection::NeedMore;
    };
    if first != CONTENT_HANDSHAKE {
        return classify_non_handshake(first, prefix);
    }
    let mut have = 0;
    let mut record = 0;
    while have < HELLO_PREFIX {
        let rest = prefix.get(record..).unwrap_or_default();
        let len = match record_length(rest) {
            Ok(len) => len,
            Err(verdict) => return verdict,
        };
        let payload = rest.get(RECORD_HEADER..).unwrap_or_default();
        for &byte in payload.iter().take(len.min(HELLO_PREFIX - have)) {
            if let Some(verdict) = check_hello_byte(have, byte) {
                return verdict;
            }
            have += 1;
        }
        if have < HELLO_PREFIX && payload.len() < len {
            return Detection::NeedMore;
        }
        record += RECORD_HEADER + len;
    }
    Detection::Tls
}

/// The payload length of one record of the ClientHello, once its header is complete and
/// plausible.
fn record_length(header: &[u8]) -> Result<usize, Detection> {
    match header.first() {
        None => return Err(Detection::NeedMore),
        Some(&CONTENT_HANDSHAKE) => {}
        // Only a record after the first can get here: the caller checked the first byte.
        Some(_) => return Err(Detection::Reject(Malformed::Interleaved)),
    }
    if let Some(verdict) = check_record_header(header, MAX_PLAINTEXT_RECORD) {
        return Err(verdict);
    }
    match (header.get(3), header.get(4)) {
        (Some(&hi), Some(&lo)) => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
        _ => Err(Detection::NeedMore),
    }
}

/// Checks handshake byte number `index` (0-based); `None` means acceptable so far.
fn check_hello_byte(index: usize, byte: u8) -> Option<Detection> {
    let bad = match index {
        0 => byte != HANDSHAKE_CLIENT_HELLO,
        4 => byte != 3,
        5 => !(1..=3).contains(&byte),
        _ => false,
    };
    match (bad, index) {
        (false, _) => None,
        (true, 0) => Some(Detection::Reject(Malformed::NotClientHello)),
        (true, _) => Some(Detection::Reject(Malformed::HelloVersion)),
    }
}

/// Classifies the first bytes a peer answered our ClientHello with.
///
/// A TLS server answers with a handshake record (ServerHello, HelloRetryRequest) or an alert;
/// anything else — an SMTP banner, an HTTP error page — is a peer that does not speak TLS.
pub fn classify_server_flight(prefix: &[u8]) -> Detection {
    let Some(&first) = prefix.first() else {
        return Detection::NeedMore;
    };
    if first != CONTENT_HANDSHAKE && first != CONTENT_ALERT {
        return Detection::Cleartext;
    }
    check_record_header(prefix, MAX_CIPHERTEXT_RECORD).unwrap_or(Detection::Tls)
}

/// Checks bytes 1..5 of a record header; `None` means the header is complete and plausible.
fn check_record_header(prefix: &[u8], max_len: u16) -> Option<Detection> {
    match prefix.get(1) {
        None => return Some(Detection::NeedMore),
        Some(&3) => {}
        Some(_) => return Some(Detection::Reject(Malformed::RecordVersion)),
    }
    match prefix.get(2) {
        None => return Some(Detection::NeedMore),
        Some(&minor) if minor <= 4 => {}
        Some(_) => return Some(Detection::Reject(Malformed::RecordVersion)),
    }
    let (Some(&hi), Some(&lo)) = (prefix.get(3), prefix.get(4)) else {
        return Some(Detection::NeedMore);
    };
    let len = u16::from_be_bytes([hi, lo]);
    if len == 0 || len > max_len {
        return Some(Detection::Reject(Malformed::RecordLength));
    }
    None
}

/// A first byte other than 0x16: cleartext, unless it is an SSL 2.0 ClientHello.
///
/// RFC 6101 Appendix E.2: an SSL 2.0 record has the high bit of its first byte set, and byte 2
/// is the message type, 1 for CLIENT-HELLO.
fn classify_non_handshake(first: u8, prefix: &[u8]) -> Detection {
    if first & 0x80 == 0 {
        return Detection::Cleartext;
    }
    match prefix.get(2) {
        None => Detection::NeedMore,
        Some(&1) => Detection::Reject(Malformed::Sslv2Hello),
        Some(_) => Detection::Cleartext,
    }
}

#[cfg(test)]
mod tests;
