//! API messages into the core model. The control plane runs these before it stores a
//! resource, and nodes run them again before they apply an update: a node trusts nothing it
//! has not checked itself.
//!
//! An update applies whole or not at all: one bad resource NACKs the update, naming the
//! resource, and the node keeps its last-known-good (CONFORMANCE G.41, G.42). A bad resource
//! is never read as a deletion.

use std::collections::{BTreeMap, HashMap};

use osgate_core::caches::{Caches, FleetTlsa};
use osgate_core::clients::Clients;
use osgate_core::dane::Tlsa;
use osgate_core::fleet::{Fleet, FleetPin, NodeKey, PinState};
use osgate_core::pin::SpkiPin;
use osgate_core::policy::{PolicySet, Rule, RuleSpec};

use crate::features;
use crate::pb::{self, resource::Kind};

/// Why a message or one of its resources cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {reason}")]
pub struct Invalid {
    /// `policy/NAME`, `pin/NAME`, `node/NAME` or `update`.
    pub resource: String,
    pub reason: String,
}

fn invalid(resource: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        resource: resource.into(),
        reason: reason.into(),
    }
}

fn supported(resource: &str, requires: &[String]) -> Result<(), Invalid> {
    match features::first_unsupported(requires) {
        Some(name) => Err(invalid(
            resource,
            format!("requires feature `{name}`, which this node does not implement"),
        )),
        None => Ok(()),
    }
}

/// The resource names of the model: `kind` and `name`.
pub fn key_of(resource: &pb::Resource) -> Option<(&'static str, String)> {
    Some(match resource.kind.as_ref()? {
        Kind::Policy(p) => ("policy", p.name.clone()),
        Kind::Pin(p) => ("pin", pin_name(&p.peer, &p.spki)),
        Kind::Node(n) => ("node", n.name.clone()),
        Kind::Capability(c) => ("capability", c.peer.clone()),
        Kind::Dane(d) => ("dane", d.peer.clone()),
        Kind::Inbound(i) => ("inbound", i.name.clone()),
        Kind::Sts(s) => ("sts", s.domain.clone()),
    })
}

/// A pin's resource name: one per peer and key, so conflicting keys live side by side.
pub fn pin_name(peer: &str, spki: &str) -> String {
    format!("{peer} {spki}")
}

fn name_ok(kind: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/ ".contains(c));
    match ok {
        true => Ok(()),
        false => Err(invalid(
            format!("{kind}/{name}"),
            "a name is 1 to 253 characters of letters, digits and -_.:/",
        )),
    }
}

/// A policy resource as a rule, named `cp:NAME` in outcome records.
pub fn policy(p: &pb::Policy) -> Result<Rule, Invalid> {
    let resource = format!("policy/{}", p.name);
    supported(&resource, &p.requires)?;
    policy_fields(p)
}

/// A policy's fields, whatever features it requires: what the control plane checks before
/// storing. It stores policies that need features some nodes lack (a fleet upgrades node by
/// node); those nodes NACK them, and `osgatectl get nodes` shows it.
pub fn policy_fields(p: &pb::Policy) -> Result<Rule, Invalid> {
    name_ok("policy", &p.name)?;
    let resource = format!("policy/{}", p.name);
    feature_names(&resource, &p.requires)?;
    let spec = RuleSpec {
        selector: &p.r#match,
        level: &p.level,
        methods: &p.methods,
        pins: &p.pins,
        min_tls: Some(p.min_tls.as_str()),
        allow_cleartext_fallback: p.allow_cleartext_fallback,
        report_only: p.report_only,
    };
    spec.build(format!("cp:{}", p.name))
        .map_err(|e| invalid(resource, e.to_string()))
}

/// `requires` holds feature names (what they are is for the receiving node to judge).
fn feature_names(resource: &str, requires: &[String]) -> Result<(), Invalid> {
    for feature in requires {
        if feature.is_empty()
            || !feature
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                resource,
                format!("`{feature}` is not a feature name"),
            ));
        }
    }
    Ok(())
}

/// A fleet pin: its peer and the key's state.
pub fn pin(p: &pb::FleetPin) -> Result<(String, FleetPin), Invalid> {
    let resource = format!("pin/{}", pin_name(&p.peer, &p.spki));
    supported(&resource, &p.requires)?;
    peer_ok(&resource, &p.peer)?;
    let key = SpkiPin::parse(&p.spki).map_err(|e| invalid(&resource, e.to_string()))?;
    let state = PinState::from_name(&p.state)
        .ok_or_else(|| invalid(&resource, format!("unknown pin state `{}`", p.state)))?;
    let next = match p.next.as_str() {
        "" => None,
        text => Some(SpkiPin::parse(text).map_err(|e| invalid(&resource, format!("next: {e}")))?),
    };
    let pin = FleetPin { key, state, next };
    Ok((p.peer.to_ascii_lowercase(), pin))
}

/// A peer is `host:port`.
pub fn peer_ok(resource: &str, peer: &str) -> Result<(), Invalid> {
    let port = peer.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
    match port {
        Some(Ok(_)) => Ok(()),
        _ => Err(invalid(resource, format!("`{peer}` is not host:port"))),
    }
}

/// A registered node.
pub fn node_key(n: &pb::NodeKey) -> Result<NodeKey, Invalid> {
    name_ok("node", &n.name)?;
    let resource = format!("node/{}", n.name);
    supported(&resource, &n.requires)?;
    let key = SpkiPin::parse(&n.spki).map_err(|e| invalid(&resource, e.to_string()))?;
    for address in &n.addresses {
        peer_ok(&resource, address)?;
    }
    Ok(NodeKey {
        name: n.name.clone(),
        key,
        addresses: n.addresses.iter().map(|a| a.to_ascii_lowercase()).collect(),
    })
}

/// The fleet ratchet for one peer: `(peer, TLS mandatory until)`.
pub fn capability(c: &pb::Capability) -> Result<(String, u64), Invalid> {
    let resource = format!("capability/{}", c.peer);
    supported(&resource, &c.requires)?;
    peer_ok(&resource, &c.peer)?;
    Ok((c.peer.to_ascii_lowercase(), c.tls_until))
}

/// A fleet TLSA set; `None` for a secure denial, which a node never acts on (its own lookup
/// decides whether the peer withdrew its records).
pub fn dane(d: &pb::DaneRecord) -> Result<Option<(String, FleetTlsa)>, Invalid> {
    let resource = format!("dane/{}", d.peer);
    supported(&resource, &d.requires)?;
    peer_ok(&resource, &d.peer)?;
    let records = match d.status.as_str() {
        "secure-denial" => return Ok(None),
        "secure" => d
            .tlsa
            .iter()
            .map(|text| {
                Tlsa::from_presentation(text)
                    .ok_or_else(|| invalid(&resource, format!("`{text}` is not TLSA RDATA")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(invalid(&resource, format!("unknown DANE status `{other}`"))),
    };
    if records.is_empty() || d.base.is_empty() || d.valid_until <= d.valid_from {
        return Err(invalid(
            &resource,
            "a secure set needs records, a base name and a validity window",
        ));
    }
    let set = FleetTlsa {
        base: d.base.trim_end_matches('.').to_ascii_lowercase(),
        records,
        valid_from: d.valid_from,
        valid_until: d.valid_until,
    };
    Ok(Some((d.peer.to_ascii_lowercase(), set)))
}

/// A fleet MTA-STS policy: `(policy domain, policy)`, checked as a fetched one would be.
pub fn sts(s: &pb::StsPolicy) -> Result<(String, osgate_core::sts::Policy), Invalid> {
    let resource = format!("sts/{}", s.domain);
    supported(&resource, &s.requires)?;
    let domain = s.domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.contains(':') || domain.contains('/') {
        return Err(invalid(&resource, "not a mail domain"));
    }
    let policy =
        osgate_core::sts::Policy::from_parts(&s.id, s.fetched_at, &s.policy).ok_or_else(|| {
            invalid(
                &resource,
                "not an MTA-STS policy (RFC 8461 §3.2) with a TXT id",
            )
        })?;
    Ok((domain, policy))
}

/// A listener's client policy: `(listener, clients)`.
pub fn inbound(i: &pb::InboundPolicy) -> Result<(String, Clients), Invalid> {
    supported(&format!("inbound/{}", i.name), &i.requires)?;
    inbound_fields(i)
}

/// A listener's client policy, whatever features it requires: what the control plane and
/// `osgatectl` check before storing (as [`policy_fields`]).
pub fn inbound_fields(i: &pb::InboundPolicy) -> Result<(String, Clients), Invalid> {
    name_ok("inbound", &i.name)?;
    let resource = format!("inbound/{}", i.name);
    feature_names(&resource, &i.requires)?;
    peer_ok(&resource, &i.listener)?;
    let clients =
        Clients::parse(&i.clients).map_err(|e| invalid(&resource, format!("clients: {e}")))?;
    Ok((i.listener.to_ascii_lowercase(), clients))
}

/// Checks one resource of any kind.
pub fn resource(r: &pb::Resource) -> Result<(), Invalid> {
    match &r.kind {
        Some(Kind::Policy(p)) => policy(p).map(drop),
        Some(Kind::Pin(p)) => pin(p).map(drop),
        Some(Kind::Node(n)) => node_key(n).map(drop),
        Some(Kind::Capability(c)) => capability(c).map(drop),
        Some(Kind::Dane(d)) => dane(d).map(drop),
        Some(Kind::Inbound(i)) => inbound(i).map(drop),
        Some(Kind::Sts(s)) => sts(s).map(drop),
        None => Err(invalid(
            "update",
            "a resource of a kind this node does not know",
        )),
    }
}

/// The resources a node holds, at a revision: what it persists and applies deltas to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub revision: u64,
    pub resources: BTreeMap<(String, String), pb::Resource>,
}

impl Held {
    /// The state after `update`, checked whole; `self` is untouched on error.
    pub fn apply(&self, update: &pb::Update) -> Result<Held, Invalid> {
        supported("update", &update.requires)?;
        if !update.snapshot && update.revision <= self.revision {
            return Err(invalid(
                "update",
                format!(
                    "delta at revision {} does not follow revision {}",
                    update.revision, self.revision
                ),
            ));
        }
        let mut next = match update.snapshot {
            true => Held::default(),
            false => self.clone(),
        };
        next.revision = update.revision;
        for gone in &update.deletes {
            next.resources
                .remove(&(gone.kind.clone(), gone.name.clone()));
        }
        for r in &update.upserts {
            resource(r)?;
            let Some((kind, name)) = key_of(r) else {
                return Err(invalid("update", "a resource without a kind"));
            };
            next.resources.insert((kind.to_owned(), name), r.clone());
        }
        Ok(next)
    }

    /// The whole state as one snapshot message, for persisting.
    pub fn to_snapshot(&self) -> pb::Update {
        pb::Update {
            revision: self.revision,
            snapshot: true,
            upserts: self.resources.values().cloned().collect(),
            deletes: Vec::new(),
            requires: Vec::new(),
        }
    }

    /// The model workers use, with the control plane's rules first (they win ties with the
    /// node's own rules of equal specificity; among themselves, in name order).
    pub fn fleet(&self, local: &PolicySet) -> Result<Fleet, Invalid> {
        let mut rules = Vec::new();
        let mut pins = Vec::new();
        let mut nodes = Vec::new();
        let mut caches = Caches::default();
        let mut listeners = HashMap::new();
        for r in self.resources.values() {
            match &r.kind {
                Some(Kind::Policy(p)) => rules.push(policy(p)?),
                Some(Kind::Pin(p)) => pins.push(pin(p)?),
                Some(Kind::Node(n)) => nodes.push(node_key(n)?),
                Some(Kind::Capability(c)) => {
                    let (peer, until) = capability(c)?;
                    caches.tls_until.insert(peer, until);
                }
                Some(Kind::Dane(d)) => {
                    if let Some((peer, set)) = dane(d)? {
                        caches.tlsa.insert(peer, set);
                    }
                }
                Some(Kind::Inbound(i)) => {
                    let (listener, clients) = inbound(i)?;
                    if listeners.insert(listener.clone(), clients).is_some() {
                        return Err(invalid(
                            format!("inbound/{}", i.name),
                            format!("another inbound policy names listener {listener}"),
                        ));
                    }
                }
                Some(Kind::Sts(s)) => {
                    let (domain, policy) = sts(s)?;
                    caches.sts.insert(domain, policy);
                }
                None => return Err(invalid("update", "a resource without a kind")),
            }
        }
        rules.extend(local.rules().iter().cloned());
        let fleet = Fleet::new(self.revision, PolicySet::new(rules), pins, &nodes);
        Ok(fleet.with(caches, listeners))
    }
}

/// An update as the node received it: decoded only if every field, at every depth, is one
/// this build knows (CONFORMANCE G.43; see [`crate::wire`]). The error names the resource
/// the unknown field is in (`policy/NAME`), or `update`, and the message type; the revision
/// is the update's, when it decodes, for the NACK.
pub fn decode_update(bytes: &[u8]) -> Result<pb::Update, (u64, Invalid)> {
    use prost::Message;
    let decoded = pb::Update::decode(bytes);
    let revision = decoded.as_ref().map_or(0, |u| u.revision);
    if let Err(e) = crate::wire::check(crate::wire::UPDATE, bytes) {
        let resource = match (&e, &decoded) {
            (crate::wire::WireError::Unknown { path, .. }, Ok(update)) => path
                .first()
                .filter(|(field, _)| field == "upserts")
                .and_then(|(_, i)| update.upserts.get(*i))
                .and_then(key_of)
                .map_or_else(
                    || "update".to_owned(),
                    |(kind, name)| format!("{kind}/{name}"),
                ),
            _ => "update".to_owned(),
        };
        return Err((revision, invalid(resource, e.to_string())));
    }
    decoded.map_err(|e| (revision, invalid("update", format!("does not parse: {e}"))))
}

#[cfg(test)]
mod tests;
