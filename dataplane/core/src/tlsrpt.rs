//! SMTP TLS Reporting (RFC 8460): result types, the per-domain-and-day aggregate a node keeps
//! of its SMTP sessions, and the JSON report rendered from it.
//!
//! RFC 8460 §4.1: "The report SHOULD cover a full day, from 00:00-24:00 UTC." So an
//! aggregate is keyed by policy domain and UTC [`Day`]; inside it, by the policy applied
//! (§4.4 `policy`), with a success count, a failure count and the failure details.
//! Aggregates merge by adding counts, so a node's days and a fleet's nodes combine in any
//! order (the merge is commutative and associative).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::outcome::Reason;

mod day;
mod report;
#[cfg(test)]
mod tests;

pub use day::Day;
pub use report::{ReportMeta, render};

/// The result types of RFC 8460 §4.3 (the IANA "STARTTLS Validation Result Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResultType {
    /// §4.3.1: "the recipient MX did not support STARTTLS".
    StarttlsNotSupported,
    /// §4.3.1: "the certificate presented did not adhere to the constraints specified in the
    /// MTA-STS or DANE policy, e.g., if the MX hostname does not match any identities listed
    /// in the subject alternative name (SAN)".
    CertificateHostMismatch,
    /// §4.3.1: "the certificate has expired".
    CertificateExpired,
    /// §4.3.1: "untrusted/unknown certification authorities (CAs), certificate name
    /// constraints, certificate chain errors, etc."
    CertificateNotTrusted,
    /// §4.3.1/§4.3.3: "a general failure for a reason not matching a category above".
    ValidationFailure,
    /// §4.3.2.1: "None of the records in the RRset were found to be valid."
    TlsaInvalid,
    /// §4.3.2.1: "no valid records were returned from the recursive resolver".
    DnssecInvalid,
    /// §4.3.2.1: DANE required, "but no DNSSEC-validated TLSA records were present".
    DaneRequired,
    /// §4.3.2.2: "a failure to retrieve an MTA-STS policy".
    StsPolicyFetchError,
    /// §4.3.2.2: "a validation error for the overall MTA-STS Policy".
    StsPolicyInvalid,
    /// §4.3.2.2: "the MTA-STS Policy could not be authenticated using PKIX validation".
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [Self; 11] = [
        Self::StarttlsNotSupported,
        Self::CertificateHostMismatch,
        Self::CertificateExpired,
        Self::CertificateNotTrusted,
        Self::ValidationFailure,
        Self::TlsaInvalid,
        Self::DnssecInvalid,
        Self::DaneRequired,
        Self::StsPolicyFetchError,
        Self::StsPolicyInvalid,
        Self::StsWebpkiInvalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StarttlsNotSupported => "starttls-not-supported",
            Self::CertificateHostMismatch => "certificate-host-mismatch",
            Self::CertificateExpired => "certificate-expired",
            Self::CertificateNotTrusted => "certificate-not-trusted",
            Self::ValidationFailure => "validation-failure",
            Self::TlsaInvalid => "tlsa-invalid",
            Self::DnssecInvalid => "dnssec-invalid",
            Self::DaneRequired => "dane-required",
            Self::StsPolicyFetchError => "sts-policy-fetch-error",
            Self::StsPolicyInvalid => "sts-policy-invalid",
            Self::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl Serialize for ResultType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResultType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("result type {text}")))
    }
}

/// The RFC 8460 result type a session that ended with `reason` is reported with; `None` when
/// the reason is not a TLS negotiation or policy failure a report names.
///
/// `None` covers success (`none`), reasons of the inbound side (TLS-RPT reports what a
/// *sending* MTA saw), policy choices (`policy-cleartext`, `policy-deny`), and transient
/// failures: §4.3.4 "Transient errors due to too-busy network, TCP timeouts, etc., are not
/// required to be reported" (`unreachable`, `handshake-timeout`, `smtp-protocol-error`).
/// Pins, fleet keys and TOFU are certificate checks: a key they refuse is
/// `certificate-not-trusted`. A failed DNS lookup is `dnssec-invalid` ("no valid records were
/// returned"). `sts-mx-mismatch` has no type of its own: `validation-failure`.
pub fn result_type(reason: Reason) -> Option<ResultType> {
    use ResultType as T;
    match reason {
        Reason::None
        | Reason::PolicyCleartext
        | Reason::PolicyDeny
        | Reason::HandshakeTimeout
        | Reason::Unreachable
        | Reason::SmtpProtocolError
        | Reason::ClientNoTls
        | Reason::ClientSilent
        | Reason::ClientClosed
        | Reason::MalformedClientHello
        | Reason::CleartextDenied
        | Reason::ClientNotAuthorized => None,
        Reason::StarttlsNotSupported => Some(T::StarttlsNotSupported),
        Reason::CertificateHostMismatch => Some(T::CertificateHostMismatch),
        Reason::CertificateExpired => Some(T::CertificateExpired),
        Reason::CertificateNotTrusted
        | Reason::PinMismatch
        | Reason::FleetKeyMismatch
        | Reason::KeyChanged
        | Reason::PinRevoked => Some(T::CertificateNotTrusted),
        Reason::PeerNoTls
        | Reason::TlsHandshakeFailed
        | Reason::ValidationFailure
        | Reason::PinStoreUnavailable
        | Reason::StsMxMismatch => Some(T::ValidationFailure),
        Reason::TlsaInvalid => Some(T::TlsaInvalid),
        Reason::DnssecInvalid | Reason::DnsLookupFailed => Some(T::DnssecInvalid),
        Reason::DaneRequired => Some(T::DaneRequired),
        Reason::StsPolicyFetchError => Some(T::StsPolicyFetchError),
        Reason::StsPolicyInvalid => Some(T::StsPolicyInvalid),
        Reason::StsWebpkiInvalid => Some(T::StsWebpkiInvalid),
    }
}

/// What a session counts as in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// §4.2.1: "successfully negotiate a policy-compliant TLS connection".
    Success,
    /// §4.2.2, with its §4.3 result type.
    Failure(ResultType),
    /// Not in a report: no TLS decision was made (transient, policy, inbound).
    NotCounted,
}

/// How a session that ended with `reason` is counted; `tls` says whether mail was carried
/// over TLS (`encrypted` or `authenticated`). The ladder carries TLS only as the applied policy
/// allows, so such a session is policy-compliant even where its reason names a check nothing
/// asked for (an untrusted chain with no policy). A session that did not get TLS is a failure
/// when its reason is a TLS failure, even when it went on (an opportunistic session carried in
/// cleartext without STARTTLS is a `starttls-not-supported` failure).
pub fn verdict(reason: Reason, tls: bool) -> Verdict {
    match (tls, result_type(reason)) {
        (true, _) => Verdict::Success,
        (false, Some(t)) => Verdict::Failure(t),
        (false, None) => Verdict::NotCounted,
    }
}

/// §4.4 `policy-type`: "Presently, the only three valid choices are "tlsa", "sts", and the
/// literal string "no-policy-found"."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tlsa => "tlsa",
            Self::Sts => "sts",
            Self::NoPolicyFound => "no-policy-found",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Tlsa, Self::Sts, Self::NoPolicyFound]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// The policy a session was held to (§4.4 `policy`, without the domain, which keys the
/// aggregate).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRef {
    pub policy_type: PolicyType,
    /// §4.4 `policy-string`: "An encoding of the applied policy as a JSON array of strings,
    /// whether it's a TLSA record ... or an MTA-STS Policy." Empty for `no-policy-found`.
    pub strings: Vec<String>,
    /// §4.4 `mx-host`: "The pattern of MX hostnames from the applied policy" (MTA-STS `mx`
    /// lines). Empty when the policy has none.
    pub mx_hosts: Vec<String>,
}

impl PolicyRef {
    pub fn none_found() -> Self {
        Self {
            policy_type: PolicyType::NoPolicyFound,
            strings: Vec::new(),
            mx_hosts: Vec::new(),
        }
    }

    /// An MTA-STS policy: its lines (RFC 8461 §3.2) and its `mx` patterns.
    pub fn sts(policy: &crate::sts::Policy) -> Self {
        Self {
            policy_type: PolicyType::Sts,
            strings: policy.lines(),
            mx_hosts: policy.mx.clone(),
        }
    }

    /// A DANE TLSA RRset, each record in presentation form (`3 1 1 <hex>`): sorted, so the
    /// same RRset is the same policy whatever order DNS gave it in.
    pub fn tlsa(records: impl IntoIterator<Item = String>) -> Self {
        let mut strings: Vec<String> = records.into_iter().collect();
        strings.sort_unstable();
        strings.dedup();
        Self {
            policy_type: PolicyType::Tlsa,
            strings,
            mx_hosts: Vec::new(),
        }
    }
}

/// One SMTP session to report, filled by the outbound SMTP code when the session ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionResult {
    /// The recipient domain the policy is for (A-labels, lower case).
    pub policy_domain: String,
    pub policy: PolicyRef,
    /// The MX host the session was with (`receiving-mx-hostname`).
    pub mx_host: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub sending_ip: Option<IpAddr>,
    /// `None`: a policy-compliant TLS session (§4.2.1 success).
    pub failure: Option<ResultType>,
    /// When the session ended, Unix seconds: picks the UTC day.
    pub at: u64,
}

/// What a failure detail is grouped by (§4.4 `failure-details`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailureKey {
    pub result_type: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub mx_host: Option<String>,
    pub receiving_ip: Option<IpAddr>,
}

/// The counts of one policy in one day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTally {
    pub successes: u64,
    pub failures: u64,
    /// Failed sessions by detail; they sum to `failures`.
    pub details: BTreeMap<FailureKey, u64>,
}

impl PolicyTally {
    fn merge(&mut self, other: &Self) {
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        for (key, count) in &other.details {
            let mine = self.details.entry(key.clone()).or_default();
            *mine = mine.saturating_add(*count);
        }
    }
}

/// One policy domain's sessions in one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayAggregate {
    pub policies: BTreeMap<PolicyRef, PolicyTally>,
}

impl DayAggregate {
    /// Counts one session (its domain and day are the caller's key).
    pub fn add(&mut self, s: &SessionResult) {
        let tally = self.policies.entry(s.policy.clone()).or_default();
        let Some(result_type) = s.failure else {
            tally.successes = tally.successes.saturating_add(1);
            return;
        };
        tally.failures = tally.failures.saturating_add(1);
        let key = FailureKey {
            result_type,
            sending_ip: s.sending_ip,
            mx_host: s.mx_host.clone(),
            receiving_ip: s.receiving_ip,
        };
        let count = tally.details.entry(key).or_default();
        *count = count.saturating_add(1);
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Self) {
        for (policy, tally) in &other.policies {
            self.policies
                .entry(policy.clone())
                .or_default()
                .merge(tally);
        }
    }

    /// The form stored on disk, in the control plane and sent on the wire.
    pub fn to_stored(&self) -> StoredDay {
        StoredDay {
            policies: self
                .policies
                .iter()
                .map(|(policy, t)| StoredPolicy {
                    policy: policy.clone(),
                    successes: t.successes,
                    failures: t.failures,
                    details: t
                        .details
                        .iter()
                        .map(|(key, count)| StoredFailure {
                            key: key.clone(),
                            count: *count,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds from the stored form (repeated entries add up).
    pub fn from_stored(stored: &StoredDay) -> Self {
        let mut day = Self::default();
        for p in &stored.policies {
            let mut tally = PolicyTally {
                successes: p.successes,
                failures: p.failures,
                details: BTreeMap::new(),
            };
            for f in &p.details {
                let count = tally.details.entry(f.key.clone()).or_default();
                *count = count.saturating_add(f.count);
            }
            day.policies
                .entry(p.policy.clone())
                .or_default()
                .merge(&tally);
        }
        day
    }
}

/// [`DayAggregate`] as a list, which JSON can hold (its map keys are structs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDay {
    pub policies: Vec<StoredPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub policy: PolicyRef,
    pub successes: u64,
    pub failures: u64,
    pub details: Vec<StoredFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFailure {
    #[serde(flatten)]
    pub key: FailureKey,
    pub count: u64,
}

/// A policy domain as aggregates are keyed: lower case, no final dot.
pub fn domain_key(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Every domain's days.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregates {
    pub days: BTreeMap<(String, Day), DayAggregate>,
}

impl Aggregates {
    pub fn record(&mut self, s: &SessionResult) {
        let key = (domain_key(&s.policy_domain), Day::of_unix(s.at));
        self.days.entry(key).or_default().add(s);
    }

    pub fn merge(&mut self, other: &Self) {
        for (key, day) in &other.days {
            self.days.entry(key.clone()).or_default().merge(day);
        }
    }
}
