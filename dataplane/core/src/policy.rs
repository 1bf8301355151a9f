//! Explicit policy: operator rules that preempt opportunism (RFC 7435 §3: "explicit policy
//! … always takes precedence").
//!
//! A rule applies to a peer through a [`Selector`]. When several match, the most specific
//! wins, in this order:
//!
//! 1. `host:port` — an exact host (or address) and port;
//! 2. an exact host name or address;
//! 3. a CIDR block, longer prefixes first;
//! 4. `*.suffix`, longer suffixes first (`*.a.b.example` before `*.b.example`);
//! 5. `*`, every peer (a global default);
//!
//! and among rules equally specific, the one written first. Matching is case-insensitive and
//! ignores a trailing dot.

use std::net::IpAddr;

use crate::crypto::TlsFloor;
use crate::outcome::Method;
use crate::pin::SpkiPin;

mod spec;
pub use spec::{RuleSpec, SpecError};

/// What a rule demands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Best effort (the default): authenticate where evidence says we can, encrypt where the
    /// peer can, cleartext otherwise.
    Opportunistic,
    /// TLS or nothing; an unauthenticated peer is acceptable.
    Encrypt,
    /// TLS, and the peer must prove a key by one of the rule's methods.
    Authenticate,
    /// Never TLS.
    Cleartext,
    /// Never connect.
    Deny,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opportunistic => "opportunistic",
            Self::Encrypt => "encrypt",
            Self::Authenticate => "authenticate",
            Self::Cleartext => "cleartext",
            Self::Deny => "deny",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "opportunistic" => Self::Opportunistic,
            "encrypt" => Self::Encrypt,
            "authenticate" => Self::Authenticate,
            "cleartext" => Self::Cleartext,
            "deny" => Self::Deny,
            _ => return None,
        })
    }
}

/// Which peers a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    HostPort(String, u16),
    Host(String),
    Cidr(IpAddr, u8),
    Suffix(String),
    /// `*`: every peer.
    Any,
}

/// A rule's selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a selector: {why} (expected host, *.suffix, address/prefix, host:port or *)"
)]
pub struct SelectorError {
    pub text: String,
    pub why: &'static str,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |why| SelectorError {
            text: text.to_owned(),
            why,
        };
        if text == "*" {
            return Ok(Self::Any);
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            return valid_name(suffix)
                .map(Self::Suffix)
                .ok_or_else(|| error("the suffix is not a DNS name"));
        }
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| error("not an IP address before `/`"))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| error("the prefix length is not a number"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(error("the prefix length is too long"));
            }
            return Ok(Self::Cidr(mask(addr, prefix), prefix));
        }
        if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
            return Ok(Self::HostPort(addr.ip().to_string(), addr.port()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Host(ip.to_string()));
        }
        if let Some((host, port)) = text.rsplit_once(':') {
            let port = port
                .parse()
                .map_err(|_| error("the port is not a number"))?;
            let host = valid_name(host).ok_or_else(|| error("the host is not a DNS name"))?;
            return Ok(Self::HostPort(host, port));
        }
        valid_name(text)
            .map(Self::Host)
            .ok_or_else(|| error("not a DNS name"))
    }

    /// Whether the rule applies to `peer`.
    pub fn matches(&self, peer: &Peer<'_>) -> bool {
        match self {
            Self::HostPort(host, port) => *port == peer.port && *host == peer.host,
            Self::Host(host) => *host == peer.host,
            Self::Cidr(net, prefix) => peer
                .ip
                .is_some_and(|ip| same_family(ip, *net) && mask(ip, *prefix) == *net),
            Self::Suffix(suffix) => peer
                .host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            Self::Any => true,
        }
    }

    /// Larger is more specific (see the module docs).
    fn specificity(&self) -> (u8, usize) {
        match self {
            Self::HostPort(..) => (4, 0),
            Self::Host(_) => (3, 0),
            Self::Cidr(_, prefix) => (2, usize::from(*prefix)),
            Self::Suffix(suffix) => (1, suffix.len()),
            Self::Any => (0, 0),
        }
    }
}

/// A peer, as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// Lower-case host name without trailing dot, or the address in canonical text form.
    pub host: &'a str,
    pub port: u16,
    /// The address, when the peer is one (CIDR selectors match only addresses).
    pub ip: Option<IpAddr>,
}

fn valid_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    rustls_pki_types::DnsName::try_from(name.as_str()).ok()?;
    Some(name)
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & keep).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & keep).into())
        }
    }
}

/// One `[[policy]]` rule, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where the rule came from, for outcome records (e.g. `policy[2]`).
    pub id: String,
    pub selector: Selector,
    pub level: Level,
    /// For `authenticate`: the methods that count.
    pub methods: Vec<Method>,
    /// Operator-pinned keys (method `pinned`).
    pub pins: Vec<SpkiPin>,
    pub min_tls: TlsFloor,
    pub allow_cleartext_fallback: bool,
    /// Evaluate and report, but enforce the rule that would apply without this one.
    pub report_only: bool,
}

/// Contradictions in a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    #[error("allow_cleartext_fallback is only meaningful with level = \"opportunistic\"")]
    FallbackNeedsOpportunistic,
    #[error("level = \"authenticate\" needs at least one method")]
    NoMethods,
    #[error("methods are only meaningful with level = \"authenticate\"")]
    MethodsNeedAuthenticate,
    #[error("method \"pinned\" needs at least one pin")]
    PinnedWithoutPins,
    #[error("min_tls is meaningless with level = \"{0}\"")]
    FloorWithoutTls(&'static str),
}

impl Rule {
    /// Checks the rule for contradictions.
    pub fn validate(&self, fallback_given: bool, floor_given: bool) -> Result<(), RuleError> {
        if fallback_given && self.level != Level::Opportunistic {
            return Err(RuleError::FallbackNeedsOpportunistic);
        }
        match self.level {
            Level::Authenticate if self.methods.is_empty() => return Err(RuleError::NoMethods),
            Level::Authenticate => {}
            _ if !self.methods.is_empty() => return Err(RuleError::MethodsNeedAuthenticate),
            Level::Cleartext | Level::Deny if floor_given => {
                return Err(RuleError::FloorWithoutTls(self.level.as_str()));
            }
            _ => {}
        }
        if self.methods.contains(&Method::Pinned) && self.pins.is_empty() {
            return Err(RuleError::PinnedWithoutPins);
        }
        Ok(())
    }
}

/// The first two enforced rules with the same selector and different levels, by index: which
/// one applies would depend on their order, so a rule set holding them is refused.
pub fn ambiguous<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Option<(usize, usize)> {
    let enforced: Vec<(usize, &Rule)> = rules
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.report_only)
        .collect();
    enforced.iter().enumerate().find_map(|(k, (j, later))| {
        enforced[..k]
            .iter()
            .find(|(_, r)| r.selector == later.selector && r.level != later.level)
            .map(|(i, _)| (*i, *j))
    })
}

/// The rules of a node, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    rules: Vec<Rule>,
}

/// The rules that apply to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selected<'a> {
    /// The rule that is enforced (`None`: no rule, the listener's default applies).
    pub enforced: Option<&'a Rule>,
    /// A more specific report-only rule, evaluated but not enforced.
    pub reported: Option<&'a Rule>,
}

impl PolicySet {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The most specific rule for `peer` (first written on ties), and the most specific
    /// report-only rule when it is more specific than the enforced one.
    pub fn select(&self, peer: &Peer<'_>) -> Selected<'_> {
        let best = |report_only: bool| {
            self.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.report_only == report_only && r.selector.matches(peer))
                // Highest specificity; on ties the lowest index, hence the reversed index.
                .max_by_key(|(i, r)| (r.selector.specificity(), std::cmp::Reverse(*i)))
                .map(|(_, r)| r)
        };
        let enforced = best(false);
        let reported = best(true).filter(|r| {
            enforced.is_none_or(|e| r.selector.specificity() >= e.selector.specificity())
        });
        Selected { enforced, reported }
    }
}

#[cfg(test)]
mod tests;
