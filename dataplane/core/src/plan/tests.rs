//! The whole outbound decision, walked exhaustively over a small domain: every rule a node can
//! hold (levels, floors, fallback, every method set) × every DNS outcome × every store, fleet
//! and peer behaviour. Checked against the DESIGN.md fallback table, written out here on its
//! own, and for monotonicity (CONFORMANCE I.52, I.53).

use super::*;
use std::collections::HashMap;

use crate::auth::{ChainChecks, authenticate};
use crate::caches::Caches;
use crate::dane::NotApplicable;
use crate::fleet::{FleetPin, NodeKey, PinState};
use crate::ladder::Ladder;
use crate::policy::{PolicySet, Selector};

mod fleet_caches;

/// The peer's key is A or B; evidence names A (revocation names B).
fn key(n: u8) -> SpkiPin {
    SpkiPin::of_spki(&[n])
}
const A: u8 = 1;
const B: u8 = 2;
const PEER: &str = "peer.test:443";

const METHODS: [Method; 5] = [
    Method::Dane,
    Method::Pinned,
    Method::Fleet,
    Method::Tofu,
    Method::Pkix,
];

fn rule(level: Level, fallback: bool, floor: TlsFloor, methods: Vec<Method>) -> Rule {
    let pins = match methods.contains(&Method::Pinned) {
        true => vec![key(A)],
        false => Vec::new(),
    };
    Rule {
        id: "r".into(),
        selector: Selector::Any,
        level,
        methods,
        pins,
        min_tls: floor,
        allow_cleartext_fallback: fallback,
        report_only: false,
    }
}

/// Every valid rule: 4 opportunistic, 2 encrypt, 62 authenticate, cleartext, deny.
fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for floor in [TlsFloor::Tls12, TlsFloor::Tls13] {
        for fallback in [true, false] {
            rules.push(rule(Level::Opportunistic, fallback, floor, Vec::new()));
        }
        rules.push(rule(Level::Encrypt, true, floor, Vec::new()));
        for mask in 1..32u8 {
            let methods = (0..5)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| METHODS[i])
                .collect();
            rules.push(rule(Level::Authenticate, true, floor, methods));
        }
    }
    rules.push(rule(Level::Cleartext, true, TlsFloor::Tls12, Vec::new()));
    rules.push(rule(Level::Deny, true, TlsFloor::Tls12, Vec::new()));
    rules
}

fn rank(level: Level) -> u8 {
    match level {
        Level::Cleartext => 0,
        Level::Opportunistic => 1,
        Level::Encrypt => 2,
        Level::Authenticate => 3,
        Level::Deny => 4,
    }
}

/// `strict` asks at least as much as `loose`: a level at least as strict, a floor at least
/// as high, cleartext fallback off if `loose` has it off, and (both authenticating) a subset
/// of the methods.
fn stricter(strict: &Rule, loose: &Rule) -> bool {
    let methods = strict.level != Level::Authenticate
        || loose.level != Level::Authenticate
        || strict.methods.iter().all(|m| loose.methods.contains(m));
    rank(strict.level) >= rank(loose.level)
        && strict.min_tls >= loose.min_tls
        && (strict.allow_cleartext_fallback <= loose.allow_cleartext_fallback
            || loose.level != Level::Opportunistic)
        && methods
}

fn lookups() -> Vec<Lookup> {
    let tlsa = Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![A; 32],
    };
    vec![
        Lookup::NotConsulted,
        Lookup::NotValidating,
        Lookup::NotApplicable(NotApplicable::InsecureAddress),
        Lookup::NotApplicable(NotApplicable::InsecureTlsa),
        Lookup::NotApplicable(NotApplicable::NoTlsa),
        Lookup::Records {
            set: TlsaSet::Usable(vec![tlsa]),
            base: "peer.test".into(),
        },
        Lookup::Records {
            set: TlsaSet::Unusable,
            base: "peer.test".into(),
        },
        Lookup::Failed { bogus: true },
        Lookup::Failed { bogus: false },
    ]
}

/// Every TOFU state, with `Pinned(A)` and `Rotating { current: B, next: A }`.
fn tofus() -> [Tofu; 6] {
    [
        Tofu::Off,
        Tofu::Unknown,
        Tofu::Pinned(key(A)),
        Tofu::Rotating {
            current: key(B),
            next: key(A),
        },
        Tofu::Revoked,
        Tofu::StoreUnavailable,
    ]
}

/// The fleet: an approved key A, a node key A at the peer, a revoked key B (bit by bit).
fn fleet(bits: u8) -> Fleet {
    let pin = |n, state| {
        let pin = FleetPin {
            key: key(n),
            state,
            next: None,
        };
        (PEER.to_owned(), pin)
    };
    let pins = [
        (1, pin(A, PinState::Approved)),
        (4, pin(B, PinState::Revoked)),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, pin)| pin);
    let node = NodeKey {
        name: "n".into(),
        key: key(A),
        addresses: vec![PEER.into()],
    };
    let nodes = match bits & 2 != 0 {
        true => vec![node],
        false => Vec::new(),
    };
    Fleet::new(1, PolicySet::default(), pins, &nodes)
}

/// [`fleet`], and the fleet's ratchet for the peer when `ratchet`.
fn fleet_with_ratchet(bits: u8, ratchet: bool) -> Fleet {
    let tls_until = match ratchet {
        true => HashMap::from([(PEER.to_owned(), NOW + 1)]),
        false => HashMap::new(),
    };
    let caches = Caches {
        tls_until,
        ..Caches::default()
    };
    fleet(bits).with(caches, HashMap::new())
}

/// What the peer does when we connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Unreachable,
    NoTls,
    Silent,
    /// Speaks TLS but every handshake fails (no common parameters).
    Broken,
    Tls {
        max: TlsFloor,
        key: u8,
        pkix_valid: bool,
    },
}

fn behaviours() -> Vec<Behaviour> {
    let mut all = vec![
        Behaviour::Unreachable,
        Behaviour::NoTls,
        Behaviour::Silent,
        Behaviour::Broken,
    ];
    for max in [TlsFloor::Tls12, TlsFloor::Tls13] {
        for key in [A, B] {
            for pkix_valid in [true, false] {
                all.push(Behaviour::Tls {
                    max,
                    key,
                    pkix_valid,
                });
            }
        }
    }
    all
}

/// One point of the domain, less the rule.
#[derive(Clone, Debug)]
struct World {
    lookup: Lookup,
    operator: Vec<SpkiPin>,
    tofu: Tofu,
    /// This node's store commits the peer to TLS.
    ratchet: bool,
    /// Only the fleet's ratchet does (`ratchet` is false then).
    fleet_ratchet: bool,
    fleet: Fleet,
    tofu_enforce: bool,
    peer: Behaviour,
    cleartext_connects: bool,
}

fn worlds() -> Vec<World> {
    let mut all = Vec::new();
    for lookup in lookups() {
        for operator in [vec![], vec![key(A)]] {
            for tofu in tofus() {
                for (ratchet, fleet_ratchet) in [(false, false), (true, false), (false, true)] {
                    for bits in 0..8 {
                        for tofu_enforce in [true, false] {
                            for peer in behaviours() {
                                for cleartext_connects in [true, false] {
                                    if peer == Behaviour::Unreachable && cleartext_connects {
                                        continue;
                                    }
                                    all.push(World {
                                        lookup: lookup.clone(),
                                        operator: operator.clone(),
                                        tofu,
                                        ratchet,
                                        fleet_ratchet,
                                        fleet: fleet_with_ratchet(bits, fleet_ratchet),
                                        tofu_enforce,
                                        peer,
                                        cleartext_connects,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    all
}

const DEFAULTS: Defaults = Defaults {
    level: Level::Opportunistic,
    allow_cleartext_fallback: true,
    floor: TlsFloor::Tls12,
};

fn facts<'a>(rule: Option<&'a Rule>, w: &'a World) -> Facts<'a> {
    Facts {
        rule,
        defaults: DEFAULTS,
        lookup: &w.lookup,
        local: Local {
            operator: &w.operator,
            tofu: w.tofu,
            ratchet: w.ratchet,
        },
        fleet: &w.fleet,
        peer: PEER,
        tofu_enforce: w.tofu_enforce,
        now: NOW,
    }
}

/// The clock of every world: fleet facts are stated relative to it.
const NOW: u64 = 1_000;

/// The chain checks of the model: the TLSA record names key A; PKIX as the peer is.
struct Model {
    key: u8,
    pkix_valid: bool,
}

impl ChainChecks for Model {
    fn dane(&self) -> Result<(), Reason> {
        match self.key == A {
            true => Ok(()),
            false => Err(Reason::TlsaInvalid),
        }
    }
    fn pkix(&self) -> Result<(), Reason> {
        match self.pkix_valid {
            true => Ok(()),
            false => Err(Reason::CertificateNotTrusted),
        }
    }
}

/// The TLS attempt under `decision` against `peer`, as a driver would report it.
fn attempt(decision: &Decision<'_>, peer: Behaviour) -> TlsResult {
    match peer {
        Behaviour::Unreachable => TlsResult::Unreachable,
        Behaviour::NoTls => TlsResult::PeerNoTls,
        Behaviour::Silent => TlsResult::HandshakeTimeout,
        Behaviour::Broken => TlsResult::HandshakeFailed,
        Behaviour::Tls { max, .. } if max < decision.floor => TlsResult::HandshakeFailed,
        Behaviour::Tls {
            key: k, pkix_valid, ..
        } => {
            let checks = Model { key: k, pkix_valid };
            let auth = authenticate(
                decision.methods,
                &decision.evidence(),
                Some(key(k)),
                &checks,
            );
            TlsResult::Established { auth }
        }
    }
}

/// The node's path: decide, then drive the ladder with the modelled attempts.
fn run(rule: Option<&Rule>, w: &World) -> (Step, Plan) {
    drive(&decide(&facts(rule, w)), w)
}

/// The ladder under `decision`, with the attempts `w`'s peer makes.
fn drive(decision: &Decision<'_>, w: &World) -> (Step, Plan) {
    let (mut ladder, mut step) = Ladder::start(decision.plan);
    loop {
        (ladder, step) = match step {
            Step::TryTls => ladder.on_tls(attempt(decision, w.peer)),
            Step::TryCleartext => ladder.on_cleartext(w.cleartext_connects),
            done => return (done, decision.plan),
        };
    }
}

fn achieved(step: Step) -> Achieved {
    match step {
        Step::Relay { achieved, .. } => achieved,
        _ => Achieved::Refused,
    }
}

/// The DESIGN.md table, written out again from the document (not from the code).
mod table {
    use super::*;

    pub struct Known {
        pub level: Level,
        pub fallback: bool,
        pub floor: TlsFloor,
        pub methods: Option<Vec<Method>>,
        pub pins: Vec<SpkiPin>,
    }

    fn allows(k: &Known, m: Method) -> bool {
        k.methods.as_ref().is_none_or(|list| list.contains(&m))
    }

    fn tofu(w: &World) -> Tofu {
        // The fleet here holds no corroborated pins, so only the node's own TOFU state counts.
        if w.tofu_enforce { w.tofu } else { Tofu::Off }
    }

    /// "Authentication expected": the rule, or evidence naming a key the peer must prove.
    fn expects_authentication(k: &Known, w: &World) -> bool {
        let tofu_pinned = !matches!(tofu(w), Tofu::Off | Tofu::Unknown);
        k.level == Level::Authenticate
            || (allows(k, Method::Pinned) && !k.pins.is_empty())
            || (allows(k, Method::Fleet) && !w.fleet.node_keys(PEER).is_empty())
            || (allows(k, Method::Dane) && usable_tlsa(w))
            || (allows(k, Method::Tofu) && tofu_pinned)
    }

    fn usable_tlsa(w: &World) -> bool {
        matches!(
            w.lookup,
            Lookup::Records {
                set: TlsaSet::Usable(_),
                ..
            }
        )
    }

    /// "Encryption committed": `encrypt`, the ratchet, a secure but unusable TLSA set.
    fn encryption_committed(k: &Known, w: &World) -> bool {
        let unusable = matches!(
            w.lookup,
            Lookup::Records {
                set: TlsaSet::Unusable,
                ..
            }
        );
        k.level == Level::Encrypt || w.ratchet || w.fleet_ratchet || unusable
    }

    /// The key check, strongest evidence first; the first source with evidence decides.
    fn key_check(k: &Known, w: &World, presented: u8, pkix_valid: bool) -> Result<Method, Reason> {
        let presented = key(presented);
        if w.fleet.revoked(PEER).contains(&presented) {
            return Err(Reason::PinRevoked);
        }
        if allows(k, Method::Pinned) && !k.pins.is_empty() {
            return match k.pins.contains(&presented) {
                true => Ok(Method::Pinned),
                false => Err(Reason::PinMismatch),
            };
        }
        let fleet = w.fleet.node_keys(PEER);
        if allows(k, Method::Fleet) && !fleet.is_empty() {
            return match fleet.contains(&presented) {
                true => Ok(Method::Fleet),
                false => Err(Reason::FleetKeyMismatch),
            };
        }
        if allows(k, Method::Dane) && usable_tlsa(w) {
            return match presented == key(A) {
                true => Ok(Method::Dane),
                false => Err(Reason::TlsaInvalid),
            };
        }
        if allows(k, Method::Tofu) {
            match tofu(w) {
                Tofu::Pinned(p) if p == presented => return Ok(Method::Tofu),
                Tofu::Rotating { current, next } if presented == current || presented == next => {
                    return Ok(Method::Tofu);
                }
                Tofu::Pinned(_) | Tofu::Rotating { .. } => return Err(Reason::KeyChanged),
                Tofu::Revoked => return Err(Reason::PinRevoked),
                Tofu::StoreUnavailable => return Err(Reason::PinStoreUnavailable),
                Tofu::Off | Tofu::Unknown => {}
            }
        }
        match (allows(k, Method::Pkix), pkix_valid) {
            (true, true) => Ok(Method::Pkix),
            (true, false) => Err(Reason::CertificateNotTrusted),
            (false, _) => Err(Reason::CertificateNotTrusted),
        }
    }

    pub fn expected(k: &Known, w: &World) -> Step {
        let refuse = |reason, downgrade_suspected| Step::Refuse {
            reason,
            downgrade_suspected,
        };
        let cleartext = |reason| match w.cleartext_connects {
            true => Step::Relay {
                achieved: Achieved::Cleartext,
                reason,
            },
            false => refuse(Reason::Unreachable, false),
        };
        match k.level {
            Level::Deny => return refuse(Reason::PolicyDeny, false),
            Level::Cleartext => return cleartext(Reason::PolicyCleartext),
            _ => {}
        }
        // The DNS column: a failed lookup refuses; DANE alone refuses without validation.
        match w.lookup {
            Lookup::Failed { bogus: true } => return refuse(Reason::DnssecInvalid, false),
            Lookup::Failed { bogus: false } => return refuse(Reason::DnsLookupFailed, false),
            Lookup::NotValidating if k.methods.as_deref() == Some(&[Method::Dane][..]) => {
                return refuse(Reason::DaneRequired, false);
            }
            _ => {}
        }
        let authentication = expects_authentication(k, w);
        let failure = match w.peer {
            Behaviour::Unreachable => return refuse(Reason::Unreachable, false),
            Behaviour::NoTls => Reason::PeerNoTls,
            Behaviour::Silent => Reason::HandshakeTimeout,
            Behaviour::Broken => Reason::TlsHandshakeFailed,
            Behaviour::Tls { max, .. } if max < k.floor => Reason::TlsHandshakeFailed,
            Behaviour::Tls {
                key: presented,
                pkix_valid,
                ..
            } => {
                return match key_check(k, w, presented, pkix_valid) {
                    Ok(method) => Step::Relay {
                        achieved: Achieved::Authenticated(method),
                        reason: Reason::None,
                    },
                    Err(reason) if authentication || reason == Reason::PinRevoked => {
                        refuse(reason, false)
                    }
                    Err(reason) => Step::Relay {
                        achieved: Achieved::Encrypted,
                        reason,
                    },
                };
            }
        };
        // No TLS, or a failed handshake. A raised floor may be why it failed: no fallback.
        let floor_failed = k.floor > TlsFloor::Tls12 && failure == Reason::TlsHandshakeFailed;
        if authentication || encryption_committed(k, w) || floor_failed {
            refuse(failure, w.ratchet || w.fleet_ratchet)
        } else if k.fallback {
            cleartext(failure)
        } else {
            refuse(failure, false)
        }
    }
}

fn known(rule: Option<&Rule>, w: &World) -> table::Known {
    // Without pins of its own, a rule (or no rule) takes the operator's and the fleet's.
    let evidence = || -> Vec<_> {
        w.fleet
            .approved(PEER)
            .iter()
            .chain(&w.operator)
            .copied()
            .collect()
    };
    match rule {
        None => table::Known {
            level: DEFAULTS.level,
            fallback: DEFAULTS.allow_cleartext_fallback,
            floor: DEFAULTS.floor,
            methods: None,
            pins: evidence(),
        },
        Some(r) => table::Known {
            level: r.level,
            fallback: r.allow_cleartext_fallback,
            floor: r.min_tls,
            methods: (r.level == Level::Authenticate).then(|| r.methods.clone()),
            pins: match r.pins.is_empty() {
                true => evidence(),
                false => r.pins.clone(),
            },
        },
    }
}

/// Every rule (and no rule) × every world: the node's decision and ladder give the table's
/// step, and no commitment is ever betrayed (CONFORMANCE I.53).
#[test]
fn the_whole_domain_follows_the_fallback_table_and_no_commitment_is_betrayed() {
    let rules = rules();
    let worlds = worlds();
    let mut cases = 0u64;
    for rule in std::iter::once(None).chain(rules.iter().map(Some)) {
        for w in &worlds {
            let (step, plan) = run(rule, w);
            let expected = table::expected(&known(rule, w), w);
            assert_eq!(step, expected, "{rule:?}\n{w:?}");
            let betrayed = plan.commitment().betrayed_by(achieved(step));
            assert_eq!(betrayed, None, "{rule:?}\n{w:?}\n{step:?}");
            cases += 1;
        }
    }
    assert_eq!(rules.len(), 70);
    assert_eq!(cases, 71 * worlds.len() as u64);
}

/// CONFORMANCE I.52: for the same facts and peer behaviour, a stricter rule never achieves
/// a lower level; only the same, a higher one, or `refused`.
#[test]
fn a_stricter_rule_never_lowers_the_achieved_level() {
    let rules = rules();
    let worlds = worlds();
    let ends: Vec<Vec<Achieved>> = rules
        .iter()
        .map(|r| worlds.iter().map(|w| achieved(run(Some(r), w).0)).collect())
        .collect();
    let order = |a: Achieved| match a {
        Achieved::Refused => None,
        Achieved::Cleartext => Some(0),
        Achieved::Encrypted => Some(1),
        Achieved::Authenticated(_) => Some(2),
    };
    let mut pairs = 0;
    for (s, strict) in rules.iter().enumerate() {
        for (l, loose) in rules.iter().enumerate() {
            if !stricter(strict, loose) {
                continue;
            }
            pairs += 1;
            for (i, w) in worlds.iter().enumerate() {
                let (tight, lax) = (ends[s][i], ends[l][i]);
                let lowered = matches!((order(tight), order(lax)), (Some(t), Some(x)) if t < x);
                assert!(
                    !lowered,
                    "{strict:?} gave {tight} where {loose:?} gave {lax}\n{w:?}"
                );
            }
        }
    }
    // Opportunistic, encrypt and authenticate rules under each other, with every floor.
    assert!(pairs > 900, "{pairs} pairs");
}

/// A world with no evidence and no history: only `peer` and `lookup` vary.
fn plain(lookup: Lookup, peer: Behaviour) -> World {
    World {
        lookup,
        operator: Vec::new(),
        tofu: Tofu::Unknown,
        ratchet: false,
        fleet_ratchet: false,
        fleet: Fleet::default(),
        tofu_enforce: true,
        peer,
        cleartext_connects: true,
    }
}

/// A rule's floor applies to opportunistic rules too: a TLS 1.2-only peer is refused, never
/// carried in cleartext (the defect of issue 8.3, as a single example).
#[test]
fn a_floor_on_an_opportunistic_rule_refuses_a_tls12_peer() {
    let floored = rule(Level::Opportunistic, true, TlsFloor::Tls13, Vec::new());
    let tls12 = Behaviour::Tls {
        max: TlsFloor::Tls12,
        key: B,
        pkix_valid: false,
    };
    let w = plain(Lookup::NotConsulted, tls12);
    assert!(matches!(run(Some(&floored), &w).0, Step::Refuse { .. }));
}

/// A local operator pin outranks DANE (issue 8.8): the TLSA record is not consulted, and
/// DANE never becomes the pin update for the peer.
#[test]
fn a_local_operator_pin_outranks_dane() {
    let presenting_a = Behaviour::Tls {
        max: TlsFloor::Tls13,
        key: A,
        pkix_valid: true,
    };
    let w = World {
        operator: vec![key(B)],
        ..plain(lookups().swap_remove(5), presenting_a)
    };
    let step = run(None, &w).0;
    assert!(
        matches!(
            step,
            Step::Refuse {
                reason: Reason::PinMismatch,
                ..
            }
        ),
        "{step:?}"
    );
    let presenting_b = World {
        peer: Behaviour::Tls {
            max: TlsFloor::Tls13,
            key: B,
            pkix_valid: false,
        },
        ..w
    };
    let step = run(None, &presenting_b).0;
    assert_eq!(achieved(step), Achieved::Authenticated(Method::Pinned));
}

#[test]
fn pins_are_learned_only_for_unauthenticated_tls_and_dane_vouches_for_rotation() {
    let w = plain(Lookup::NotConsulted, Behaviour::NoTls);
    let decision = decide(&facts(None, &w));
    assert_eq!(
        pin_update(&decision, Achieved::Encrypted, true),
        PinUpdate::Learn
    );
    assert_eq!(
        pin_update(&decision, Achieved::Encrypted, false),
        PinUpdate::Keep
    );
    assert_eq!(
        pin_update(&decision, Achieved::Authenticated(Method::Dane), true),
        PinUpdate::VouchedByDane
    );
    let pinned = World {
        tofu: Tofu::Pinned(key(A)),
        ..w
    };
    let decision = decide(&facts(None, &pinned));
    assert_eq!(
        pin_update(&decision, Achieved::Authenticated(Method::Tofu), true),
        PinUpdate::Keep
    );
}

#[test]
fn report_only_uses_the_same_facts_and_never_the_wire() {
    let w = plain(Lookup::Failed { bogus: true }, Behaviour::NoTls);
    let strict = rule(Level::Encrypt, true, TlsFloor::Tls12, Vec::new());
    let f = facts(None, &w);
    assert_eq!(
        report_only(&f, &strict, Some(TlsResult::PeerNoTls), true),
        (Achieved::Refused, Reason::DnssecInvalid)
    );
    let clear = rule(Level::Cleartext, true, TlsFloor::Tls12, Vec::new());
    assert_eq!(
        report_only(&f, &clear, None, true),
        (Achieved::Cleartext, Reason::PolicyCleartext)
    );
}
