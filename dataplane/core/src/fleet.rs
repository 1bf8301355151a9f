//! What the control plane distributes to a node, validated: explicit policy, the keys the
//! fleet pinned for peers, and the keys of the fleet's own nodes, at one revision.
//!
//! A node swaps a whole [`Fleet`] at a time, so every connection sees one revision.

use std::collections::HashMap;

use crate::auth::Tofu;
use crate::caches::Caches;
use crate::clients::Clients;
use crate::pin::SpkiPin;
use crate::policy::PolicySet;

/// How much the fleet trusts a key for a peer (CONFORMANCE D.29).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinState {
    /// Reported by one node: never spread.
    Learned,
    /// Reported by enough distinct nodes, and no other key is known for the peer.
    Corroborated,
    /// An operator approved it: an operator pin for every node.
    Approved,
    /// An operator revoked it: nodes refuse it, whatever they pinned.
    Revoked,
}

impl PinState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Learned => "learned",
            Self::Corroborated => "corroborated",
            Self::Approved => "approved",
            Self::Revoked => "revoked",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "learned" => Self::Learned,
            "corroborated" => Self::Corroborated,
            "approved" => Self::Approved,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// One key the fleet holds for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetPin {
    pub key: SpkiPin,
    pub state: PinState,
    /// A vouched next key: accepted alongside `key` (planned rotation, CONFORMANCE D.27).
    pub next: Option<SpkiPin>,
}

/// The fleet's keys for one peer, by what they mean to the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PeerPins {
    /// Approved keys and their vouched successors: operator pins.
    approved: Vec<SpkiPin>,
    /// The corroborated key, when exactly one is.
    corroborated: Option<(SpkiPin, Option<SpkiPin>)>,
    revoked: Vec<SpkiPin>,
}

/// A registered fleet node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    pub name: String,
    pub key: SpkiPin,
    /// `host:port`, lower case, of its inbound listeners.
    pub addresses: Vec<String>,
}

/// The control plane's state as one node applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// 0: nothing from a control plane ("no overrides").
    pub revision: u64,
    pub policy: PolicySet,
    pins: HashMap<String, PeerPins>,
    /// Node keys by the addresses they serve.
    nodes: HashMap<String, Vec<SpkiPin>>,
    /// Node names by key: who an inbound client presenting the key is.
    names: HashMap<SpkiPin, String>,
    /// The fleet ratchet and TLSA sets.
    pub caches: Caches,
    /// Client policies by listener address (`host:port`, lower case).
    inbound: HashMap<String, Clients>,
}

impl Fleet {
    /// Builds the state; `pins` are keyed by peer (`host:port`, lower case).
    pub fn new(
        revision: u64,
        policy: PolicySet,
        pins: impl IntoIterator<Item = (String, FleetPin)>,
        nodes: &[NodeKey],
    ) -> Self {
        let mut by_peer: HashMap<String, PeerPins> = HashMap::new();
        let mut corroborated: HashMap<String, Vec<(SpkiPin, Option<SpkiPin>)>> = HashMap::new();
        for (peer, pin) in pins {
            let entry = by_peer.entry(peer.clone()).or_default();
            match pin.state {
                PinState::Approved => entry
                    .approved
                    .extend([Some(pin.key), pin.next].into_iter().flatten()),
                PinState::Revoked => entry.revoked.push(pin.key),
                PinState::Corroborated => corroborated
                    .entry(peer)
                    .or_default()
                    .push((pin.key, pin.next)),
                PinState::Learned => {}
            }
        }
        for (peer, keys) in corroborated {
            // Two corroborated keys for one peer are a conflict: neither is trusted.
            if let [only] = keys.as_slice() {
                by_peer.entry(peer).or_default().corroborated = Some(*only);
            }
        }
        let mut by_address: HashMap<String, Vec<SpkiPin>> = HashMap::new();
        let names = nodes.iter().map(|n| (n.key, n.name.clone())).collect();
        for node in nodes {
            for address in &node.addresses {
                by_address
                    .entry(address.to_ascii_lowercase())
                    .or_default()
                    .push(node.key);
            }
        }
        Self {
            revision,
            policy,
            pins: by_peer,
            nodes: by_address,
            names,
            caches: Caches::default(),
            inbound: HashMap::new(),
        }
    }

    /// The same state with the fleet's caches and listener client policies.
    pub fn with(mut self, caches: Caches, inbound: HashMap<String, Clients>) -> Self {
        self.caches = caches;
        self.inbound = inbound;
        self
    }

    /// The registered node whose key is `key`.
    pub fn node_named(&self, key: &SpkiPin) -> Option<&str> {
        self.names.get(key).map(String::as_str)
    }

    /// The control plane's client policy for the listener at `listen`, if it set one.
    pub fn inbound_clients(&self, listen: &str) -> Option<&Clients> {
        self.inbound.get(&listen.to_ascii_lowercase())
    }

    /// Keys an operator approved for `peer`: they count as operator pins.
    pub fn approved(&self, peer: &str) -> &[SpkiPin] {
        self.pins.get(peer).map_or(&[], |p| p.approved.as_slice())
    }

    /// Keys an operator revoked for `peer`: refused on first contact too (CONFORMANCE D.29).
    pub fn revoked(&self, peer: &str) -> &[SpkiPin] {
        self.pins.get(peer).map_or(&[], |p| p.revoked.as_slice())
    }

    /// The registered keys of the fleet node serving `peer`.
    pub fn node_keys(&self, peer: &str) -> &[SpkiPin] {
        self.nodes.get(peer).map_or(&[], Vec::as_slice)
    }

    /// The TOFU state of `peer`, from the node's own store (`local`) and the fleet's pins: a
    /// revoked key is refused whatever the node pinned, and a corroborated key stands in for
    /// a pin the node has not learned yet. It never replaces a key the node pinned itself.
    pub fn tofu(&self, peer: &str, local: Tofu) -> Tofu {
        let Some(pins) = self.pins.get(peer) else {
            return local;
        };
        match local {
            Tofu::Pinned(key) if pins.revoked.contains(&key) => Tofu::Revoked,
            Tofu::Unknown => match pins.corroborated {
                Some((key, _)) if pins.revoked.contains(&key) => Tofu::Revoked,
                Some((key, None)) => Tofu::Pinned(key),
                Some((current, Some(next))) => Tofu::Rotating { current, next },
                None => Tofu::Unknown,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> SpkiPin {
        SpkiPin::of_spki(&[n])
    }

    fn fleet(pins: &[(&str, FleetPin)]) -> Fleet {
        let pins = pins.iter().map(|(p, f)| ((*p).to_owned(), *f));
        Fleet::new(1, PolicySet::default(), pins, &[])
    }

    fn state(key: SpkiPin, state: PinState) -> FleetPin {
        FleetPin {
            key,
            state,
            next: None,
        }
    }

    #[test]
    fn learned_pins_never_count() {
        let f = fleet(&[("a:443", state(pin(1), PinState::Learned))]);
        assert_eq!(f.tofu("a:443", Tofu::Unknown), Tofu::Unknown);
        assert!(f.approved("a:443").is_empty());
    }

    #[test]
    fn corroborated_fills_only_an_unknown_peer() {
        let f = fleet(&[("a:443", state(pin(1), PinState::Corroborated))]);
        assert_eq!(f.tofu("a:443", Tofu::Unknown), Tofu::Pinned(pin(1)));
        assert_eq!(f.tofu("a:443", Tofu::Pinned(pin(2))), Tofu::Pinned(pin(2)));
        assert_eq!(
            f.tofu("a:443", Tofu::StoreUnavailable),
            Tofu::StoreUnavailable
        );
        assert_eq!(f.tofu("b:443", Tofu::Unknown), Tofu::Unknown);
    }

    #[test]
    fn two_corroborated_keys_are_a_conflict_and_count_for_nothing() {
        let f = fleet(&[
            ("a:443", state(pin(1), PinState::Corroborated)),
            ("a:443", state(pin(2), PinState::Corroborated)),
        ]);
        assert_eq!(f.tofu("a:443", Tofu::Unknown), Tofu::Unknown);
    }

    #[test]
    fn revoked_overrides_a_local_pin() {
        let f = fleet(&[("a:443", state(pin(1), PinState::Revoked))]);
        assert_eq!(f.tofu("a:443", Tofu::Pinned(pin(1))), Tofu::Revoked);
        assert_eq!(f.tofu("a:443", Tofu::Pinned(pin(2))), Tofu::Pinned(pin(2)));
    }

    #[test]
    fn approved_keys_and_their_vouched_successor_are_operator_pins() {
        let approved = FleetPin {
            key: pin(1),
            state: PinState::Approved,
            next: Some(pin(2)),
        };
        let f = fleet(&[("a:443", approved)]);
        assert_eq!(f.approved("a:443"), &[pin(1), pin(2)]);
    }

    #[test]
    fn node_keys_are_found_by_address() {
        let node = NodeKey {
            name: "n1".into(),
            key: pin(9),
            addresses: vec!["10.0.0.1:8443".into()],
        };
        let f = Fleet::new(1, PolicySet::default(), [], &[node]);
        assert_eq!(f.node_keys("10.0.0.1:8443"), &[pin(9)]);
        assert!(f.node_keys("10.0.0.1:443").is_empty());
    }
}
