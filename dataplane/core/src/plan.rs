//! The whole outbound decision before connecting: which rule applies, which evidence counts,
//! what the DNS phase means, and what a finished connection teaches the pin store. Plain
//! functions over values (DESIGN.md, "Code shape"): the node looks things up, connects and
//! shakes hands; everything it decides comes from here and [`crate::ladder`].
//!
//! RFC 7435 §3: "explicit policy … always takes precedence", so the rule picks the level; the
//! evidence can only raise what is required of the peer (DESIGN.md, "Downgrade-resistant
//! capability evidence"), never lower it.

use crate::auth::{Evidence, Methods, Tofu};
use crate::crypto::TlsFloor;
use crate::dane::{Lookup, Tlsa, TlsaSet};
use crate::fleet::Fleet;
use crate::ladder::{Plan, Step, TlsResult, simulate};
use crate::outcome::{Level as Achieved, Method, Reason};
use crate::pin::SpkiPin;
use crate::policy::{Level, Rule};

#[cfg(test)]
mod tests;

/// The listener's defaults, for a peer no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub level: Level,
    pub allow_cleartext_fallback: bool,
    /// The node's TLS floor: a rule can raise it, never lower it.
    pub floor: TlsFloor,
}

/// What this node's own capability store says of the peer.
#[derive(Clone, Copy, Debug)]
pub struct Local<'a> {
    /// Keys an operator pinned on this node (`osgate pins add`): operator pins, above DANE.
    pub operator: &'a [SpkiPin],
    /// The learned pin, as the store holds it.
    pub tofu: Tofu,
    /// The peer completed TLS before, recently enough: TLS is mandatory.
    pub ratchet: bool,
}

/// Everything known about one peer before connecting.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The enforced rule (`None`: the listener's defaults).
    pub rule: Option<&'a Rule>,
    pub defaults: Defaults,
    pub lookup: &'a Lookup,
    pub local: Local<'a>,
    pub fleet: &'a Fleet,
    /// `host:port`, lower case: the key of pins and node keys.
    pub peer: &'a str,
    /// `[tofu] mode = "enforce"`: learned pins are checked (else only the ratchet counts).
    pub tofu_enforce: bool,
    /// Unix seconds, for the fleet's caches.
    pub now: u64,
}

impl Facts<'_> {
    /// Who commits the peer to TLS by having done it before: `Some(false)` this node's store,
    /// `Some(true)` only the fleet's ratchet (one node's experience protects the fleet).
    pub fn ratchet(&self) -> Option<bool> {
        match self.local.ratchet {
            true => Some(false),
            false => self
                .fleet
                .caches
                .tls_seen(self.peer, self.now)
                .then_some(true),
        }
    }
}

/// Whether DNS is worth asking for DANE under `rule`: not when policy rules TLS out.
pub fn consults_dns(rule: Option<&Rule>, defaults: Defaults) -> bool {
    let level = rule.map_or(defaults.level, |r| r.level);
    !matches!(level, Level::Cleartext | Level::Deny)
}

/// The decision for one connection: the plan the ladder walks and what authentication checks.
#[derive(Clone, Debug)]
pub struct Decision<'a> {
    pub rule: Option<&'a Rule>,
    pub plan: Plan,
    pub methods: Methods<'a>,
    pub floor: TlsFloor,
    /// The usable TLSA records, when DANE applies.
    pub tlsa: &'a [Tlsa],
    /// The TLSA base domain: SNI and the name DANE-TA checks (RFC 7672 §3.2.2).
    pub tlsa_base: Option<&'a str>,
    pins: Vec<SpkiPin>,
    fleet_keys: &'a [SpkiPin],
    revoked: &'a [SpkiPin],
    tofu: Tofu,
}

impl Decision<'_> {
    /// The evidence the peer's key is checked against ([`crate::auth::authenticate`]).
    pub fn evidence(&self) -> Evidence<'_> {
        Evidence {
            pins: &self.pins,
            fleet: self.fleet_keys,
            revoked: self.revoked,
            dane: !self.tlsa.is_empty(),
            tofu: self.tofu,
        }
    }
}

/// Decides before connecting.
pub fn decide<'a>(facts: &Facts<'a>) -> Decision<'a> {
    let rule = facts.rule;
    let (level, fallback) = rule.map_or(
        (
            facts.defaults.level,
            facts.defaults.allow_cleartext_fallback,
        ),
        |r| (r.level, r.allow_cleartext_fallback),
    );
    let methods = match rule {
        Some(r) if r.level == Level::Authenticate => Methods::Only(&r.methods),
        _ => Methods::All,
    };
    let tofu = match facts.tofu_enforce {
        true => facts.fleet.tofu(facts.peer, facts.local.tofu),
        false => Tofu::Off,
    };
    let (tlsa, tlsa_base, tls_committed) = match facts.lookup {
        Lookup::Records {
            set: TlsaSet::Usable(records),
            base,
        } => (records.as_slice(), Some(base.as_str()), false),
        Lookup::Records {
            set: TlsaSet::Unusable,
            ..
        } => (&[][..], None, true),
        _ => (&[][..], None, false),
    };
    let floor = rule.map_or(facts.defaults.floor, |r| {
        r.min_tls.max(facts.defaults.floor)
    });
    let mut decision = Decision {
        rule,
        plan: Plan::policy(level, fallback),
        methods,
        floor,
        tlsa,
        tlsa_base,
        pins: operator_pins(rule, facts),
        fleet_keys: facts.fleet.node_keys(facts.peer),
        revoked: facts.fleet.revoked(facts.peer),
        tofu,
    };
    decision.plan = Plan {
        ratchet: facts.ratchet().is_some(),
        tls_committed,
        auth_expected: decision.evidence().expects_authentication(methods),
        floor_raised: floor > TlsFloor::Tls12,
        refused: dns_refusal(facts.lookup, rule),
        ..decision.plan
    };
    decision
}

/// A rule's own pins replace the others; else the fleet's approved keys and this node's.
fn operator_pins(rule: Option<&Rule>, facts: &Facts<'_>) -> Vec<SpkiPin> {
    match rule.map(|r| r.pins.as_slice()) {
        Some(pins) if !pins.is_empty() => pins.to_vec(),
        _ => {
            let fleet = facts.fleet.approved(facts.peer);
            fleet.iter().chain(facts.local.operator).copied().collect()
        }
    }
}

/// RFC 7672 §2.1: a failed lookup refuses (it is not "no TLSA"); a rule that accepts DANE
/// alone refuses when nothing validates (RFC 8460 `dane-required`).
fn dns_refusal(lookup: &Lookup, rule: Option<&Rule>) -> Option<Reason> {
    match lookup {
        Lookup::Failed { bogus: true } => Some(Reason::DnssecInvalid),
        Lookup::Failed { bogus: false } => Some(Reason::DnsLookupFailed),
        Lookup::NotValidating if requires_dane(rule) => Some(Reason::DaneRequired),
        _ => None,
    }
}

fn requires_dane(rule: Option<&Rule>) -> bool {
    rule.is_some_and(|r| {
        r.level == Level::Authenticate && r.methods.iter().all(|m| *m == Method::Dane)
    })
}

/// What a connection that completed TLS teaches the pin store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinUpdate {
    /// Nothing about the key (the ratchet is still extended).
    Keep,
    /// Pin the key: TOFU had nothing for the peer, and nothing stronger authenticated it.
    Learn,
    /// DANE authenticated the key: it replaces a different learned pin (rotation). Never an
    /// operator's pin (CONFORMANCE I.55).
    VouchedByDane,
}

/// The pin-store update after a connection reached `achieved`.
pub fn pin_update(decision: &Decision<'_>, achieved: Achieved, tofu_enforce: bool) -> PinUpdate {
    match achieved {
        _ if !tofu_enforce => PinUpdate::Keep,
        Achieved::Encrypted if decision.tofu == Tofu::Unknown => PinUpdate::Learn,
        Achieved::Authenticated(Method::Dane) => PinUpdate::VouchedByDane,
        _ => PinUpdate::Keep,
    }
}

/// What a report-only `rule` would have done with the same facts and peer behaviour; never
/// changes the wire. Without an observed TLS attempt, the peer is taken to refuse TLS.
pub fn report_only(
    facts: &Facts<'_>,
    rule: &Rule,
    tls: Option<TlsResult>,
    cleartext_connects: bool,
) -> (Achieved, Reason) {
    let facts = Facts {
        rule: Some(rule),
        ..*facts
    };
    let plan = decide(&facts).plan;
    match simulate(
        plan,
        tls.unwrap_or(TlsResult::PeerNoTls),
        cleartext_connects,
    ) {
        Step::Relay { achieved, reason } => (achieved, reason),
        Step::Refuse { reason, .. } => (Achieved::Refused, reason),
        Step::TryTls | Step::TryCleartext => (Achieved::Refused, Reason::ValidationFailure),
    }
}
