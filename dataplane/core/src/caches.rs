//! The fleet's capability caches as a node applies them (DESIGN.md, "Capability caches";
//! CONFORMANCE J.59): the fleet ratchet ("some node did TLS with this peer") and TLSA sets
//! the control plane validated. Both only ever add to what the node's own evidence asks of a
//! peer; neither can lower it.

use std::collections::HashMap;

use crate::dane::{Lookup, NotApplicable, Tlsa, TlsaSet};

/// A TLSA RRset the control plane validated, with its DNSSEC validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetTlsa {
    /// The TLSA base domain (SNI, and the name DANE-TA checks).
    pub base: String,
    pub records: Vec<Tlsa>,
    /// Unix seconds: usable from `valid_from` until before `valid_until` (the RRSIGs' window).
    pub valid_from: u64,
    pub valid_until: u64,
}

impl FleetTlsa {
    /// Within its DNSSEC validity at `now`: a set past it proves nothing any more.
    pub fn fresh(&self, now: u64) -> bool {
        self.valid_from <= now && now < self.valid_until
    }
}

/// The caches of one fleet revision, by peer (`host:port`, lower case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caches {
    /// The fleet ratchet: TLS is mandatory for the peer until then (Unix seconds).
    pub tls_until: HashMap<String, u64>,
    pub tlsa: HashMap<String, FleetTlsa>,
}

/// Which DANE evidence a connection uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaneEvidence {
    pub lookup: Lookup,
    /// The records are the fleet's, not this node's own answer.
    pub from_fleet: bool,
}

impl Caches {
    /// Whether the fleet's ratchet commits `peer` to TLS at `now`.
    pub fn tls_seen(&self, peer: &str, now: u64) -> bool {
        self.tls_until.get(peer).is_some_and(|until| *until > now)
    }

    /// The DANE evidence for `peer`, in the order DESIGN.md gives: the node's own secure
    /// answer; a secure denial it validated itself (the peer withdrew its TLSA records); else
    /// a fresh fleet set; else the node's own result (a failed lookup still refuses).
    /// `tls_allowed`: explicit policy lets TLS happen at all (no fleet set turns a
    /// `cleartext` or `deny` rule into a DANE connection).
    pub fn dane(&self, peer: &str, local: Lookup, tls_allowed: bool, now: u64) -> DaneEvidence {
        let own = DaneEvidence {
            lookup: local,
            from_fleet: false,
        };
        let validated_by_node = matches!(
            own.lookup,
            Lookup::Records { .. } | Lookup::NotApplicable(NotApplicable::NoTlsa)
        );
        if validated_by_node || !tls_allowed {
            return own;
        }
        match self.tlsa.get(peer).filter(|set| set.fresh(now)) {
            Some(set) => DaneEvidence {
                lookup: Lookup::Records {
                    set: TlsaSet::classify(&set.records),
                    base: set.base.clone(),
                },
                from_fleet: true,
            },
            None => own,
        }
    }
}

#[cfg(test)]
mod tests;
