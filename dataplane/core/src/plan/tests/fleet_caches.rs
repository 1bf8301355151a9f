//! The fleet's caches (DESIGN.md, "Capability caches") over the domain of the table test:
//! every rule × every world, with the fleet's ratchet and TLSA sets added, fresh or stale.
//! The node's path applies [`Caches::dane`] before deciding, as `outbound.rs` does.

use super::*;
use crate::caches::FleetTlsa;

/// A fleet TLSA set for the peer: usable (DANE-EE naming key A, as the model's `dane()`
/// checks) or secure but unusable (PKIX-EE only, RFC 7672 §3.1).
fn fleet_set(usable: bool, valid_from: u64, valid_until: u64) -> FleetTlsa {
    let usage = if usable { 3 } else { 1 };
    FleetTlsa {
        base: "peer.test".into(),
        records: vec![Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: vec![A; 32],
        }],
        valid_from,
        valid_until,
    }
}

/// `w` with the fleet's ratchet (`tls_until`) and TLSA set for the peer added.
fn with_fleet(w: &World, tls_until: Option<u64>, tlsa: Option<FleetTlsa>) -> World {
    let mut caches = w.fleet.caches.clone();
    caches
        .tls_until
        .extend(tls_until.map(|t| (PEER.to_owned(), t)));
    caches.tlsa.extend(tlsa.map(|set| (PEER.to_owned(), set)));
    World {
        fleet: w.fleet.clone().with(caches, HashMap::new()),
        ..w.clone()
    }
}

/// Worlds that hold no fleet fact of the caches yet.
fn base_worlds() -> Vec<World> {
    worlds().into_iter().filter(|w| !w.fleet_ratchet).collect()
}

fn candidates(rules: &[Rule]) -> impl Iterator<Item = Option<&Rule>> {
    std::iter::once(None).chain(rules.iter().map(Some))
}

/// The node's path: its own lookup, completed from the fleet's cache, then the decision.
fn node_run(rule: Option<&Rule>, w: &World) -> (Step, Plan) {
    let tls_allowed = consults_dns(rule, DEFAULTS);
    let dane = w
        .fleet
        .caches
        .dane(PEER, w.lookup.clone(), tls_allowed, NOW);
    let facts = Facts {
        lookup: &dane.lookup,
        ..facts(rule, w)
    };
    drive(&decide(&facts), w)
}

/// The node validated something itself: a secure answer or a secure denial.
fn validated_by_node(lookup: &Lookup) -> bool {
    matches!(
        lookup,
        Lookup::Records { .. } | Lookup::NotApplicable(NotApplicable::NoTlsa)
    )
}

/// `method` may authenticate instead of DANE: a source above it on the ladder (operator
/// pins, fleet node keys), or a rule whose methods leave DANE out.
fn outranks_dane(method: Method, rule: Option<&Rule>) -> bool {
    let without_dane =
        rule.is_some_and(|r| r.level == Level::Authenticate && !r.methods.contains(&Method::Dane));
    matches!(method, Method::Pinned | Method::Fleet) || without_dane
}

/// RFC 7435 §3 order of what a connection got; `None`: refused (no bytes crossed).
fn order(a: Achieved) -> Option<u8> {
    match a {
        Achieved::Refused => None,
        Achieved::Cleartext => Some(0),
        Achieved::Encrypted => Some(1),
        Achieved::Authenticated(_) => Some(2),
    }
}

/// (a) A fresh fleet set for a peer the node could not validate itself (no resolver, an
/// insecure answer, SERVFAIL, bogus): whatever the peer does, the connection is authenticated
/// (by DANE, unless a stronger source or the rule's methods decide) or refused, never
/// `cleartext` or `encrypted`. A fresh unusable set still commits the peer to TLS.
#[test]
fn a_fresh_fleet_set_leaves_only_authenticated_or_refused() {
    let rules = rules();
    let (mut cases, mut rescued) = (0u64, 0u64);
    for w in base_worlds()
        .iter()
        .filter(|w| !validated_by_node(&w.lookup))
    {
        let usable = with_fleet(w, None, Some(fleet_set(true, NOW - 10, NOW + 10)));
        let unusable = with_fleet(w, None, Some(fleet_set(false, NOW - 10, NOW + 10)));
        for rule in candidates(&rules).filter(|r| consults_dns(*r, DEFAULTS)) {
            let got = achieved(node_run(rule, &usable).0);
            match got {
                Achieved::Refused | Achieved::Authenticated(Method::Dane) => {}
                Achieved::Authenticated(m) if outranks_dane(m, rule) => {}
                _ => panic!("{got} with a fresh fleet set\n{rule:?}\n{w:?}"),
            }
            let own_failed = matches!(w.lookup, Lookup::Failed { .. });
            rescued += u64::from(own_failed && got == Achieved::Authenticated(Method::Dane));
            let got = achieved(node_run(rule, &unusable).0);
            assert_ne!(
                got,
                Achieved::Cleartext,
                "unusable fleet set\n{rule:?}\n{w:?}"
            );
            cases += 1;
        }
    }
    assert!(cases > 1_000_000, "{cases} cases");
    // The point of the cache: a node whose own lookup failed still authenticates by DANE.
    assert!(
        rescued > 1_000,
        "{rescued} failed lookups authenticated from the fleet"
    );
}

/// (b) Adding a fleet fact (the ratchet, a usable or unusable TLSA set, or both) never lowers
/// the achieved level for the same peer behaviour: the same, a higher one, or `refused`.
#[test]
fn a_fleet_fact_never_lowers_the_achieved_level() {
    let rules = rules();
    let mut cases = 0u64;
    for w in base_worlds() {
        let fresh = |usable| Some(fleet_set(usable, NOW - 10, NOW + 10));
        let added = [
            with_fleet(&w, Some(NOW + 1), None),
            with_fleet(&w, None, fresh(true)),
            with_fleet(&w, None, fresh(false)),
            with_fleet(&w, Some(NOW + 1), fresh(true)),
        ];
        for rule in candidates(&rules) {
            let before = achieved(node_run(rule, &w).0);
            for v in &added {
                let after = achieved(node_run(rule, v).0);
                let lowered = matches!((order(after), order(before)), (Some(a), Some(b)) if a < b);
                assert!(!lowered, "{after} after {before}\n{rule:?}\n{v:?}");
                cases += 1;
            }
        }
    }
    assert!(cases > 10_000_000, "{cases} cases");
}

/// (c) A fleet fact past its time proves nothing: a ratchet at or past `tls_until`, a TLSA
/// set past (or not yet in) its RRSIG window change neither the plan nor the outcome.
#[test]
fn a_stale_fleet_fact_changes_nothing() {
    let rules = rules();
    let mut cases = 0u64;
    for w in base_worlds() {
        let stale = [
            with_fleet(&w, Some(NOW), Some(fleet_set(true, NOW - 100, NOW))),
            with_fleet(
                &w,
                Some(NOW - 100),
                Some(fleet_set(true, NOW + 1, NOW + 100)),
            ),
            with_fleet(&w, None, Some(fleet_set(false, NOW - 100, NOW))),
        ];
        for rule in candidates(&rules) {
            let without = node_run(rule, &w);
            for v in &stale {
                assert_eq!(node_run(rule, v), without, "{rule:?}\n{v:?}");
                cases += 1;
            }
        }
    }
    assert!(cases > 10_000_000, "{cases} cases");
}

/// DESIGN.md's order: the node's own secure answer and its own validated secure denial come
/// before a fleet set, and explicit `cleartext` / `deny` is never turned into DANE.
#[test]
fn own_answers_and_explicit_policy_stand_against_a_fresh_fleet_set() {
    let rules = rules();
    let mut cases = 0u64;
    for w in base_worlds() {
        let fresh = [
            with_fleet(&w, None, Some(fleet_set(true, NOW - 10, NOW + 10))),
            with_fleet(&w, None, Some(fleet_set(false, NOW - 10, NOW + 10))),
        ];
        let own = validated_by_node(&w.lookup);
        for rule in candidates(&rules).filter(|r| own || !consults_dns(*r, DEFAULTS)) {
            let without = node_run(rule, &w);
            for v in &fresh {
                assert_eq!(node_run(rule, v), without, "{rule:?}\n{v:?}");
                cases += 1;
            }
        }
    }
    assert!(cases > 1_000_000, "{cases} cases");
}
