//! DANE TLSA matching (RFC 6698, RFC 7671, RFC 7672), sans-IO: records in, verdict out.
//!
//! RFC 7672 §3.1: "SMTP clients MUST NOT use TLSA records with certificate usages PKIX-TA(0)
//! and PKIX-EE(1)" — the same holds here: only DANE-TA(2) and DANE-EE(3) are usable.
//! RFC 7671 §5.1: with DANE-EE "the validity period of the server certificate … and the
//! server name … MUST be ignored". RFC 7671 §9 (digest algorithm agility): for each usage and
//! selector, only the strongest digest algorithm present is used.

use rustls_pki_types::CertificateDer;

use crate::crypto::sha;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// DANE-TA(2): the record names a trust anchor in the chain.
const DANE_TA: u8 = 2;
/// DANE-EE(3): the record names the server's own certificate or key.
const DANE_EE: u8 = 3;

/// The TLSA record a DANE-EE key is published with, as a zone-file line:
/// `_port._tcp.name. IN TLSA 3 1 1 <hex>` — DANE-EE(3), SPKI(1), SHA2-256(1), which survives
/// a certificate renewal with the same key (RFC 7671 §5.1).
pub fn ee_record(port: u16, name: &str, key: &crate::pin::SpkiPin) -> String {
    format!(
        "_{port}._tcp.{}. IN TLSA {DANE_EE} 1 1 {}",
        name.trim_end_matches('.'),
        hex(key.digest())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Tlsa {
    /// The record's RDATA in presentation format (RFC 6698 §2.2): `3 1 1 <hex>`, whole.
    pub fn presentation(&self) -> String {
        let data = hex(&self.data);
        format!("{} {} {} {data}", self.usage, self.selector, self.matching)
    }

    /// The record from [`Self::presentation`]'s form (the hex may be split by blanks, as
    /// zone files split it); `None` for anything else.
    pub fn from_presentation(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace();
        let mut number = || fields.next()?.parse::<u8>().ok();
        let (usage, selector, matching) = (number()?, number()?, number()?);
        let hex: String = fields.collect();
        if hex.is_empty() || hex.len() % 2 != 0 {
            return None;
        }
        let data = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Self {
            usage,
            selector,
            matching,
            data,
        })
    }
}

/// `usage selector matching` and the first bytes of the data, for outcome records.
impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for byte in self.data.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        if self.data.len() > 8 {
            write!(f, "…")?;
        }
        Ok(())
    }
}

impl Tlsa {
    /// Usable per RFC 7672 §3.1 and RFC 6698 §2.1: usage 2 or 3, selector 0 (full
    /// certificate) or 1 (SPKI), matching 0 (full), 1 (SHA-256, 32 bytes) or 2 (SHA-512,
    /// 64 bytes) with a digest of the right length.
    pub fn is_usable(&self) -> bool {
        let usage = matches!(self.usage, DANE_TA | DANE_EE);
        let selector = matches!(self.selector, 0 | 1);
        let data = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }

    /// Whether this record matches `cert` (selector and matching type applied).
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            _ => match rustls::server::ParsedCertificate::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => selected == self.data,
            1 => sha::sha256(&selected).as_slice() == self.data.as_slice(),
            2 => sha::sha512(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// A secure TLSA RRset, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsaSet {
    /// At least one usable record: authentication is expected (usable after digest agility).
    Usable(Vec<Tlsa>),
    /// Records exist but none is usable: TLS is mandatory, authentication is not possible
    /// (RFC 7672 §2.2: "MUST NOT fall back to cleartext").
    Unusable,
}

impl TlsaSet {
    /// Classifies a secure RRset, applying digest agility (RFC 7671 §9): per usage and
    /// selector, records whose matching type is weaker than the strongest present are
    /// dropped; full-value (matching 0) records are always kept.
    pub fn classify(records: &[Tlsa]) -> Self {
        let usable: Vec<&Tlsa> = records.iter().filter(|r| r.is_usable()).collect();
        let strongest = |usage, selector| {
            usable
                .iter()
                .filter(|r| r.usage == usage && r.selector == selector && r.matching != 0)
                .map(|r| r.matching)
                .max()
        };
        let kept: Vec<Tlsa> = usable
            .iter()
            .filter(|r| r.matching == 0 || Some(r.matching) == strongest(r.usage, r.selector))
            .map(|r| (*r).clone())
            .collect();
        if kept.is_empty() {
            Self::Unusable
        } else {
            Self::Usable(kept)
        }
    }
}

/// Why DANE does not apply to a peer (RFC 7672 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotApplicable {
    /// The address records are not DNSSEC-secure: no TLSA lookup (RFC 7672 §2.2.2).
    InsecureAddress,
    /// The TLSA answer is insecure (an unsigned zone): its records are ignored.
    InsecureTlsa,
    /// A validated denial: the peer publishes no TLSA records.
    NoTlsa,
}

/// What the DNS phase said about a peer before connecting, as the decision reads it.
///
/// RFC 7672 §2.1: a lookup that fails "MUST NOT" be read as "no TLSA records"; so a failure is
/// its own variant, and only a validated denial or an insecure answer is [`Self::NotApplicable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// DANE was not consulted: no `[dns]`, the peer is an address, or policy rules TLS out.
    NotConsulted,
    /// The resolver does not validate (no working trust anchor): DANE cannot be used.
    NotValidating,
    NotApplicable(NotApplicable),
    /// A secure TLSA RRset at `_port._tcp.<base>`.
    Records {
        set: TlsaSet,
        base: String,
    },
    /// A DANE-relevant lookup failed; `bogus` when DNSSEC validation failed.
    Failed {
        bogus: bool,
    },
}

impl Lookup {
    /// The label of `osgate_dane_lookups_total{result}` and of outcome records; `None` when
    /// no lookup was made.
    pub fn label(&self) -> Option<&'static str> {
        Some(match self {
            Self::NotConsulted | Self::NotValidating => return None,
            Self::NotApplicable(NotApplicable::InsecureAddress) => "insecure-address",
            Self::NotApplicable(NotApplicable::InsecureTlsa) => "insecure-tlsa",
            Self::NotApplicable(NotApplicable::NoTlsa) => "no-tlsa",
            Self::Records {
                set: TlsaSet::Usable(_),
                ..
            } => "secure-usable",
            Self::Records {
                set: TlsaSet::Unusable,
                ..
            } => "secure-unusable",
            Self::Failed { bogus: true } => "bogus",
            Self::Failed { bogus: false } => "failed",
        })
    }
}

/// How a presented chain fared against a usable TLSA set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match<'a> {
    /// A DANE-EE record matches the end-entity certificate: authenticated, no further checks.
    EndEntity(&'a Tlsa),
    /// A DANE-TA record matches chain certificate `index` (1 = first intermediate): the
    /// caller must still validate the chain to that certificate, with the name.
    TrustAnchor(&'a Tlsa, usize),
    NoMatch,
}

/// Matches `chain` (end entity first) against `records` (from [`TlsaSet::Usable`]).
/// DANE-EE is tried first: it needs no path validation.
pub fn match_chain<'a>(records: &'a [Tlsa], chain: &[CertificateDer<'_>]) -> Match<'a> {
    let Some(end_entity) = chain.first() else {
        return Match::NoMatch;
    };
    if let Some(r) = records
        .iter()
        .find(|r| r.usage == DANE_EE && r.matches(end_entity))
    {
        return Match::EndEntity(r);
    }
    for (index, cert) in chain.iter().enumerate().skip(1) {
        if let Some(r) = records
            .iter()
            .find(|r| r.usage == DANE_TA && r.matches(cert))
        {
            return Match::TrustAnchor(r, index);
        }
    }
    Match::NoMatch
}

#[cfg(test)]
mod tests;
