//! Outcome records: what every connection got, in words that never overstate it.
//!
//! Every connection ends with exactly one [`Outcome`]. The achieved [`Level`] is one of
//! `cleartext`, `encrypted`, `authenticated` (with a [`Method`]) or `refused`; anything less than
//! the policy asked for carries a [`Reason`]. All labels are bounded sets, so they can be metric
//! labels.

use std::fmt;
use std::time::Duration;

/// Which way a connection goes through this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A plain client of this node, carried to a remote peer.
    Outbound,
    /// A remote client (TLS or cleartext), carried to a local backend.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// How a peer was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// DANE TLSA records, DNSSEC-validated (RFC 7672).
    Dane,
    /// An operator-configured SPKI pin.
    Pinned,
    /// A fleet node key distributed by the control plane.
    Fleet,
    /// A key pinned on first use.
    Tofu,
    /// A certificate chain to a trusted root, for the peer's name (RFC 5280, RFC 6125).
    Pkix,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dane => "dane",
            Self::Pinned => "pinned",
            Self::Fleet => "fleet",
            Self::Tofu => "tofu",
            Self::Pkix => "pkix",
        }
    }
}

/// The protection a connection achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// No application byte crossed: the connection was closed. SMTP: no mail transaction
    /// crossed; a listener that requires STARTTLS still speaks the dialogue before it
    /// (greeting, EHLO, QUIT), which the byte counts include.
    Refused,
    /// No encryption.
    Cleartext,
    /// TLS, peer not authenticated: protects against passive attackers only.
    Encrypted,
    /// TLS, and the peer proved a key we had reason to expect.
    Authenticated(Method),
}

impl Level {
    /// `refused` | `cleartext` | `encrypted` | `authenticated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Cleartext => "cleartext",
            Self::Encrypted => "encrypted",
            Self::Authenticated(_) => "authenticated",
        }
    }

    /// The authentication method, `none` unless authenticated.
    pub fn method_str(self) -> &'static str {
        match self {
            Self::Authenticated(method) => method.as_str(),
            _ => "none",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authenticated(method) => write!(f, "authenticated/{}", method.as_str()),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Why a connection got less than the best level, or was refused.
///
/// Labels reuse the TLS-RPT result types (RFC 8460 §4.3) where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Nothing less than the policy asked for.
    None,
    /// Policy says cleartext.
    PolicyCleartext,
    /// The peer answered our ClientHello with something that is not TLS, or closed.
    PeerNoTls,
    /// The peer speaks TLS but the handshake failed.
    TlsHandshakeFailed,
    /// The handshake did not finish before its deadline.
    HandshakeTimeout,
    /// The chain does not lead to a trusted root (RFC 8460 `certificate-not-trusted`).
    CertificateNotTrusted,
    /// The certificate does not name the peer (RFC 8460 `certificate-host-mismatch`).
    CertificateHostMismatch,
    /// The certificate is expired or not yet valid (RFC 8460 `certificate-expired`).
    CertificateExpired,
    /// The certificate could not be checked at all (RFC 8460 `validation-failure`).
    ValidationFailure,
    /// The peer (outbound) or backend (inbound) could not be reached.
    Unreachable,
    /// The inbound client sent no TLS; the listener allows cleartext.
    ClientNoTls,
    /// The inbound client sent nothing (or only part of a TLS header) before the deadline.
    ClientSilent,
    /// The inbound client closed before sending anything classifiable.
    ClientClosed,
    /// The inbound client sent bytes that look like TLS but are not.
    MalformedClientHello,
    /// The listener requires TLS and the client offered none.
    CleartextDenied,
    /// Explicit policy says `deny`.
    PolicyDeny,
    /// The peer's key is none of the operator's pins.
    PinMismatch,
    /// The peer is a fleet node's address, and its key is not that node's registered key.
    FleetKeyMismatch,
    /// The peer's key differs from the key pinned on first use (TOFU).
    KeyChanged,
    /// The pin store cannot be read, so pinned peers cannot be checked.
    PinStoreUnavailable,
    /// An operator revoked the peer's pin.
    PinRevoked,
    /// No usable TLSA record matches the peer's chain (RFC 8460 `tlsa-invalid`).
    TlsaInvalid,
    /// A DANE-relevant lookup did not validate (RFC 8460 `dnssec-invalid`).
    DnssecInvalid,
    /// A DANE-relevant lookup failed (SERVFAIL, timeout): never read as "no TLSA".
    DnsLookupFailed,
    /// Policy requires DANE, but DNSSEC validation is unavailable (RFC 8460 `dane-required`).
    DaneRequired,
    /// SMTP: the server's EHLO reply lists no STARTTLS, or it refused the command (RFC 8460
    /// `starttls-not-supported`).
    StarttlsNotSupported,
    /// SMTP: a reply or command that breaks RFC 5321 (bad syntax, an over-long line, a greeting
    /// that is not 220), or a peer silent past its SMTP timeout.
    SmtpProtocolError,
    /// MTA-STS: the domain publishes a policy, and none could be fetched or was cached (RFC 8460
    /// `sts-policy-fetch-error`).
    StsPolicyFetchError,
    /// MTA-STS: the policy fetched does not parse (RFC 8460 `sts-policy-invalid`).
    StsPolicyInvalid,
    /// MTA-STS: the policy host's certificate did not pass PKIX (RFC 8460 `sts-webpki-invalid`).
    StsWebpkiInvalid,
    /// MTA-STS `enforce`: the MX host matches none of the policy's `mx` patterns (RFC 8461
    /// §4.1: "senders MUST NOT deliver").
    StsMxMismatch,
    /// Inbound: the listener serves only fleet nodes or pinned clients, and the client proved
    /// neither (no certificate, another key, or no TLS at all).
    ClientNotAuthorized,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PolicyCleartext => "policy-cleartext",
            Self::PeerNoTls => "peer-no-tls",
            Self::TlsHandshakeFailed => "tls-handshake-failed",
            Self::HandshakeTimeout => "handshake-timeout",
            Self::CertificateNotTrusted => "certificate-not-trusted",
            Self::CertificateHostMismatch => "certificate-host-mismatch",
            Self::CertificateExpired => "certificate-expired",
            Self::ValidationFailure => "validation-failure",
            Self::Unreachable => "unreachable",
            Self::ClientNoTls => "client-no-tls",
            Self::ClientSilent => "client-silent",
            Self::ClientClosed => "client-closed",
            Self::MalformedClientHello => "malformed-client-hello",
            Self::CleartextDenied => "cleartext-denied",
            Self::PolicyDeny => "policy-deny",
            Self::PinMismatch => "pin-mismatch",
            Self::FleetKeyMismatch => "fleet-key-mismatch",
            Self::KeyChanged => "key-changed",
            Self::PinStoreUnavailable => "pin-store-unavailable",
            Self::PinRevoked => "pin-revoked",
            Self::TlsaInvalid => "tlsa-invalid",
            Self::DnssecInvalid => "dnssec-invalid",
            Self::DnsLookupFailed => "dns-lookup-failed",
            Self::DaneRequired => "dane-required",
            Self::StarttlsNotSupported => "starttls-not-supported",
            Self::SmtpProtocolError => "smtp-protocol-error",
            Self::StsPolicyFetchError => "sts-policy-fetch-error",
            Self::StsPolicyInvalid => "sts-policy-invalid",
            Self::StsWebpkiInvalid => "sts-webpki-invalid",
            Self::StsMxMismatch => "sts-mx-mismatch",
            Self::ClientNotAuthorized => "client-not-authorized",
        }
    }
}

/// What a connection's plan committed it to, for the alarm counters (CONFORMANCE I.53).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Commitment {
    /// Nothing: cleartext is an acceptable end (or policy says cleartext or deny).
    None,
    /// TLS is mandatory (`encrypt`, the ratchet, an unusable secure TLSA set).
    Tls,
    /// Authentication is expected (`authenticate`, pins, fleet keys, usable TLSA, TOFU).
    Authentication,
}

/// An end that betrays its commitment: each must stay at 0, and has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Betrayal {
    /// `cleartext` although TLS or authentication was committed to.
    CleartextDespitePolicy,
    /// `encrypted` although authentication was expected.
    EncryptedDespiteAuthentication,
}

impl Commitment {
    /// Whether ending at `achieved` betrays this commitment.
    pub fn betrayed_by(self, achieved: Level) -> Option<Betrayal> {
        match (self, achieved) {
            (Self::Tls | Self::Authentication, Level::Cleartext) => {
                Some(Betrayal::CleartextDespitePolicy)
            }
            (Self::Authentication, Level::Encrypted) => {
                Some(Betrayal::EncryptedDespiteAuthentication)
            }
            _ => None,
        }
    }
}

/// How the relay phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Close {
    /// Never reached the relay phase.
    NotRelayed,
    /// Both sides finished; TLS sides sent close_notify.
    Clean,
    /// A TLS side closed its TCP stream without close_notify (RFC 8446 §6.1): the other side
    /// saw an abort, not a clean end.
    Truncated,
    /// A socket error or reset.
    Reset,
    /// No bytes moved for the idle timeout.
    IdleTimeout,
    /// Still open when a stopping node's drain deadline passed: the node cut it.
    Drained,
}

impl Close {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRelayed => "not-relayed",
            Self::Clean => "clean",
            Self::Truncated => "truncated",
            Self::Reset => "reset",
            Self::IdleTimeout => "idle-timeout",
            Self::Drained => "drained",
        }
    }
}

/// What a connection carried, as far as osgate reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Any TCP stream: osgate only classifies the first bytes.
    #[default]
    Tcp,
    /// SMTP with STARTTLS (RFC 3207): osgate speaks the dialogue up to TLS.
    Smtp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Smtp => "smtp",
        }
    }
}

/// What the peer said about STARTTLS (SMTP sessions only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Starttls {
    /// The dialogue never got as far as EHLO.
    #[default]
    Unknown,
    /// Outbound: the server's EHLO reply listed STARTTLS. Inbound: osgate offered it.
    Offered,
    /// Outbound: the server's EHLO reply did not list STARTTLS.
    NotOffered,
    /// Outbound: the server listed STARTTLS and answered it with an error (e.g. 454).
    Refused,
    /// STARTTLS was done: inbound, the client issued it; outbound, the server answered 220
    /// and the handshake completed.
    Used,
}

impl Starttls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Offered => "offered",
            Self::NotOffered => "not-offered",
            Self::Refused => "refused",
            Self::Used => "used",
        }
    }
}

/// What an SMTP session's record adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpFacts {
    pub starttls: Starttls,
    /// Outbound by MX: the MX host this record is about.
    pub mx: Option<String>,
    /// The MTA-STS policy applied or reported on: `<domain>:<id>:<mode>`.
    pub sts: Option<String>,
    /// Bytes a peer sent across the TLS boundary (after STARTTLS or its 220, before the
    /// handshake) that osgate discarded (CONFORMANCE E.30, E.31).
    pub injected_bytes: u64,
}

/// The TLS parameters a connection negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub version: &'static str,
    pub suite: &'static str,
    pub group: &'static str,
    pub resumed: bool,
}

/// The record each connection ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub direction: Direction,
    /// The listener address, as configured.
    pub listener: String,
    /// The peer (outbound) or client address (inbound).
    pub peer: String,
    /// What policy asked for.
    pub desired: &'static str,
    /// What policy and evidence committed the connection to.
    pub commitment: Commitment,
    pub achieved: Level,
    pub reason: Reason,
    pub tls: Option<TlsParams>,
    pub close: Close,
    /// Application bytes client → server and server → client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub handshake: Option<Duration>,
    pub duration: Duration,
    /// The explicit policy rule enforced (`policy[N]`), or `listener` for its default.
    pub policy: String,
    /// The SPKI pin of the key the peer presented, when TLS completed.
    pub peer_key: Option<String>,
    /// A peer remembered as TLS-capable failed to do TLS (the ratchet refused it).
    pub downgrade_suspected: bool,
    /// The DANE lookup's result label, when one was made (`secure-usable`, `no-tlsa`, …).
    pub dane: Option<&'static str>,
    /// The TLSA record that authenticated the peer (`usage selector matching data…`).
    pub tlsa: Option<String>,
    /// What a more specific report-only rule would have done: (rule, achieved, reason).
    pub report_only: Option<(String, Level, Reason)>,
    pub protocol: Protocol,
    /// SMTP sessions only.
    pub smtp: Option<Box<SmtpFacts>>,
    /// Where fleet-wide evidence decided: the TLSA set (`source = "fleet"`) and the ratchet.
    pub fleet: FleetEvidence,
    /// Inbound: the authenticated client, as `fleet` names it (the node's name) or its pin.
    pub client: Option<String>,
}

/// What the control plane's caches contributed to one connection's decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetEvidence {
    /// The TLSA set came from the fleet's cache, not from this node's own lookup.
    pub dane: bool,
    /// Who committed the peer to TLS: `Some(false)` this node's store, `Some(true)` only the
    /// fleet's ratchet.
    pub ratchet: Option<bool>,
}

impl FleetEvidence {
    /// The `source` field of outcome records.
    pub fn dane_source(self) -> Option<&'static str> {
        self.dane.then_some("fleet")
    }

    /// The `ratchet` field of outcome records.
    pub fn ratchet_source(self) -> Option<&'static str> {
        self.ratchet
            .map(|fleet| if fleet { "fleet" } else { "local" })
    }
}

impl Outcome {
    /// Application bytes were carried over TLS (`encrypted` or `authenticated`).
    pub fn carried_tls(&self) -> bool {
        self.tls.is_some() && matches!(self.achieved, Level::Encrypted | Level::Authenticated(_))
    }

    /// The record of a connection that has not got anywhere yet: refused, nothing moved.
    pub fn begin(direction: Direction, listener: String, peer: String) -> Self {
        Self {
            direction,
            listener,
            peer,
            desired: "opportunistic",
            commitment: Commitment::None,
            achieved: Level::Refused,
            reason: Reason::None,
            tls: None,
            close: Close::NotRelayed,
            bytes_up: 0,
            bytes_down: 0,
            handshake: None,
            duration: Duration::ZERO,
            policy: "listener".into(),
            peer_key: None,
            downgrade_suspected: false,
            dane: None,
            tlsa: None,
            report_only: None,
            protocol: Protocol::Tcp,
            smtp: None,
            fleet: FleetEvidence::default(),
            client: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_label_calls_anything_secure_or_verified() {
        let levels = [
            Level::Refused,
            Level::Cleartext,
            Level::Encrypted,
            Level::Authenticated(Method::Pkix),
        ];
        for level in levels {
            let text = level.to_string();
            assert!(
                !text.contains("secure") && !text.contains("verified"),
                "{text}"
            );
        }
        assert_eq!(Level::Encrypted.method_str(), "none");
        assert_eq!(
            Level::Authenticated(Method::Dane).to_string(),
            "authenticated/dane"
        );
    }
}
