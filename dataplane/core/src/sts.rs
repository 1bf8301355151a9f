//! MTA-STS (RFC 8461), sans-IO: the `_mta-sts` TXT record, the policy file, MX pattern
//! matching and the cache rule. The node does the DNS and HTTPS; everything it decides with
//! is a function here.
//!
//! RFC 8461 §2: "senders who implement MTA-STS validation MUST NOT allow MTA-STS Policy
//! validation to override a failing DANE validation" — DANE is decided before this module is
//! consulted; a policy here only raises what a connection without a secure TLSA requires.

use crate::outcome::Reason;

pub mod http;
mod parse;

pub use parse::{PolicyError, parse_policy, parse_txt};

/// RFC 8461 §3.2: `max_age` has a "maximum value of 31557600" (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// RFC 8461 §3.3: "a suggested maximum policy size is 64 kilobytes".
pub const POLICY_SIZE_LIMIT: usize = 64 * 1024;

/// The policy's `mode` (RFC 8461 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// "Sending MTAs MUST NOT deliver the message to hosts that fail MX matching or
    /// certificate validation or that do not support STARTTLS."
    Enforce,
    /// "Sending MTAs that also implement the TLSRPT specification [RFC8460] send a report
    /// indicating policy application failures ... in any case, messages may be delivered as
    /// though there were no MTA-STS validation failure."
    Testing,
    /// "Sending MTAs should treat the Policy Domain as though it does not have any active
    /// policy."
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// A policy as fetched, with the TXT `id` it was fetched under and when (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: Mode,
    /// Patterns, lower case: `mail.example.net` or `*.example.net`.
    pub mx: Vec<String>,
    /// Seconds, at most [`MAX_AGE_LIMIT`].
    pub max_age: u64,
    pub fetched_at: u64,
}

impl Policy {
    /// RFC 8461 §4.1: "MX hosts ... MUST match any "mx" value in the policy ... a leading
    /// "*" ... matches exactly one DNS label ... "*.example.com" matches "mail.example.com" but
    /// not "example.com" nor "foo.bar.example.com"". Names compare case-insensitively.
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }

    /// Whether the policy is still in its `max_age` at `now` (RFC 8461 §3.2).
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fetched_at.saturating_add(self.max_age)
    }

    /// The cache file: two header lines, then the policy in the RFC's own format.
    pub fn to_cache(&self) -> String {
        let mut out = format!(
            "{CACHE_MAGIC}\nid={}\nfetched_at={}\nversion: STSv1\nmode: {}\nmax_age: {}\n",
            self.id,
            self.fetched_at,
            self.mode.as_str(),
            self.max_age
        );
        for mx in &self.mx {
            out.push_str("mx: ");
            out.push_str(mx);
            out.push('\n');
        }
        out
    }

    /// Reads [`Self::to_cache`]'s output; `None` for anything else.
    pub fn from_cache(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(CACHE_MAGIC)?.strip_prefix('\n')?;
        let (id, rest) = rest.strip_prefix("id=")?.split_once('\n')?;
        let (fetched_at, body) = rest.strip_prefix("fetched_at=")?.split_once('\n')?;
        Self::from_parts(id, fetched_at.parse().ok()?, body)
    }

    /// A policy from its TXT `id`, fetch time and policy text (§3.2), each checked as a fetch
    /// would check it: how the control plane's copy is read back.
    pub fn from_parts(id: &str, fetched_at: u64, text: &str) -> Option<Self> {
        let id = parse::txt_id(id)?;
        let body = parse_policy(text.as_bytes()).ok()?;
        Some(body.into_policy(id, fetched_at))
    }
}

const CACHE_MAGIC: &str = "osgate-mta-sts 1";

/// A parsed policy file, before it is tied to a TXT id and a fetch time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyBody {
    pub mode: Mode,
    pub mx: Vec<String>,
    pub max_age: u64,
}

impl PolicyBody {
    pub fn into_policy(self, id: String, fetched_at: u64) -> Policy {
        Policy {
            id,
            mode: self.mode,
            mx: self.mx,
            max_age: self.max_age,
            fetched_at,
        }
    }
}

/// What the `_mta-sts.<domain>` TXT lookup said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Txt {
    /// Exactly one valid STSv1 record, with this id.
    Id(String),
    /// No record, several, or an invalid one (RFC 8461 §3.1: "senders MUST assume the
    /// recipient domain does not have an available MTA-STS Policy").
    Absent,
    /// The lookup itself failed (SERVFAIL, timeout).
    LookupFailed,
}

/// Where an applied policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Fetched by this lookup.
    Fresh,
    /// From the cache; the TXT id matches it, or no usable TXT record was found.
    Cached,
    /// From the cache because a refetch failed for this reason (RFC 8461 §10.2).
    CachedAfterFailure(Reason),
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Cached => "cached",
            Self::CachedAfterFailure(_) => "cached-after-failure",
        }
    }
}

/// The MTA-STS verdict for a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StsLookup {
    /// The domain has no MTA-STS policy in effect.
    NoPolicy,
    /// A policy applies (its mode says how much).
    Policy(Policy, Source),
    /// The domain announces a policy, none could be fetched and none is cached: deliver as
    /// without MTA-STS, and report `reason` (RFC 8461 §3.3, RFC 8460 §4.3.2).
    Failed(Reason),
}

/// What to do after the TXT lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Done(StsLookup),
    /// Fetch the policy for TXT id `id`; on failure fall back to `fallback` (a fresh cached
    /// policy) if there is one.
    Fetch {
        id: String,
        fallback: Option<Policy>,
    },
}

/// The cache rule (RFC 8461 §5.1): `cached` is what the cache holds for the domain.
///
/// * A fresh cached policy whose id is the TXT id is used as is.
/// * "the absence of a usable TXT record is not by itself sufficient to remove a sender's
///   previously cached policy" (§3.1): no TXT record, or a failed lookup, keeps a fresh one.
/// * A new id, or an expired policy, is refetched; §3.3: "if no "live" policy can be
///   discovered via DNS or fetched via HTTPS, but a valid (non-expired) policy exists in the
///   sender's cache, the sender MUST apply that cached policy."
pub fn step(cached: Option<&Policy>, txt: &Txt, now: u64) -> Step {
    let fresh = cached.filter(|p| p.is_fresh(now));
    match (txt, fresh) {
        (Txt::Id(id), Some(p)) if *id == p.id => {
            Step::Done(StsLookup::Policy(p.clone(), Source::Cached))
        }
        (Txt::Id(id), fallback) => Step::Fetch {
            id: id.clone(),
            fallback: fallback.cloned(),
        },
        (Txt::Absent | Txt::LookupFailed, Some(p)) => {
            Step::Done(StsLookup::Policy(p.clone(), Source::Cached))
        }
        (Txt::Absent, None) => Step::Done(StsLookup::NoPolicy),
        (Txt::LookupFailed, None) => Step::Done(StsLookup::Failed(Reason::StsPolicyFetchError)),
    }
}

/// The verdict once the fetch of a [`Step::Fetch`] ended with `fetched` (`Err`: the RFC 8460
/// reason it failed).
pub fn after_fetch(
    id: String,
    fallback: Option<Policy>,
    fetched: Result<PolicyBody, Reason>,
    now: u64,
) -> StsLookup {
    match (fetched, fallback) {
        (Ok(body), _) => StsLookup::Policy(body.into_policy(id, now), Source::Fresh),
        (Err(reason), Some(cached)) => {
            StsLookup::Policy(cached, Source::CachedAfterFailure(reason))
        }
        (Err(reason), None) => StsLookup::Failed(reason),
    }
}

impl StsLookup {
    /// Why policy discovery failed, for TLS-RPT: with no policy applied, or a cached one
    /// applied after a failed refetch.
    pub fn failure(&self) -> Option<Reason> {
        match self {
            Self::Failed(reason) | Self::Policy(_, Source::CachedAfterFailure(reason)) => {
                Some(*reason)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

/// What a domain's policy asks of one MX host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing: no policy in force, `mode: none`, or DANE applies to this host.
    None,
    /// `enforce`, and the host matches no `mx` pattern: "senders MUST NOT deliver" (§4.1).
    MxMismatch,
    /// TLS with a chain PKIX-valid for the MX host name (§4.2): a rule that requires it,
    /// report-only under `testing`.
    Pkix(crate::policy::Rule),
    /// `testing`, and the host matches no pattern: report it, deliver anyway (§5).
    ReportMxMismatch(String),
}

/// The requirement `lookup` (the policy of `domain`) puts on `mx_host`. `dane` says a
/// secure, usable TLSA set was found for the host: then DANE decides alone (RFC 8461 §2).
pub fn requirement(lookup: &StsLookup, domain: &str, mx_host: &str, dane: bool) -> Requirement {
    let StsLookup::Policy(policy, _) = lookup else {
        return Requirement::None;
    };
    let report_only = match policy.mode {
        _ if dane => return Requirement::None,
        Mode::None => return Requirement::None,
        Mode::Enforce => false,
        Mode::Testing => true,
    };
    let id = format!("sts:{}", evidence(domain, policy));
    if !policy.matches_mx(mx_host) {
        return match report_only {
            false => Requirement::MxMismatch,
            true => Requirement::ReportMxMismatch(id),
        };
    }
    Requirement::Pkix(crate::policy::Rule {
        id,
        selector: crate::policy::Selector::Host(mx_host.to_owned()),
        level: crate::policy::Level::Authenticate,
        methods: vec![crate::outcome::Method::Pkix],
        pins: Vec::new(),
        min_tls: crate::crypto::TlsFloor::Tls12,
        allow_cleartext_fallback: false,
        report_only,
    })
}

impl Policy {
    /// The policy in the RFC's own lines (§3.2), for TLS-RPT's `policy-string` (RFC 8460 §4.4).
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            "version: STSv1".to_owned(),
            format!("mode: {}", self.mode.as_str()),
        ];
        lines.extend(self.mx.iter().map(|mx| format!("mx: {mx}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }
}

/// How outcome records name a policy: `<domain>:<id>:<mode>` (the rule it makes is
/// `sts:<domain>:<id>:<mode>`).
pub fn evidence(domain: &str, policy: &Policy) -> String {
    format!("{domain}:{}:{}", policy.id, policy.mode.as_str())
}
