use super::*;

fn record(byte: u8) -> Tlsa {
    Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![byte; 32],
    }
}

fn caches(valid_from: u64, valid_until: u64) -> Caches {
    let set = FleetTlsa {
        base: "p.test".into(),
        records: vec![record(1)],
        valid_from,
        valid_until,
    };
    Caches {
        tls_until: HashMap::from([("p.test:443".to_owned(), 100)]),
        tlsa: HashMap::from([("p.test:443".to_owned(), set)]),
    }
}

/// Every DNS outcome a node can have for a peer.
fn locals() -> Vec<Lookup> {
    vec![
        Lookup::NotConsulted,
        Lookup::NotValidating,
        Lookup::NotApplicable(NotApplicable::InsecureAddress),
        Lookup::NotApplicable(NotApplicable::InsecureTlsa),
        Lookup::NotApplicable(NotApplicable::NoTlsa),
        Lookup::Records {
            set: TlsaSet::Usable(vec![record(2)]),
            base: "own.test".into(),
        },
        Lookup::Records {
            set: TlsaSet::Unusable,
            base: "own.test".into(),
        },
        Lookup::Failed { bogus: false },
        Lookup::Failed { bogus: true },
    ]
}

#[test]
fn the_fleet_set_fills_in_only_where_the_node_validated_nothing_itself() {
    let c = caches(10, 20);
    for local in locals() {
        for now in [9, 10, 19, 20] {
            for tls_allowed in [false, true] {
                let got = c.dane("p.test:443", local.clone(), tls_allowed, now);
                let own_answer = matches!(
                    local,
                    Lookup::Records { .. } | Lookup::NotApplicable(NotApplicable::NoTlsa)
                );
                let fresh = (10..20).contains(&now);
                let expect_fleet = !own_answer && tls_allowed && fresh;
                assert_eq!(
                    got.from_fleet, expect_fleet,
                    "{local:?} at {now}, {tls_allowed}"
                );
                match expect_fleet {
                    true => assert_eq!(
                        got.lookup,
                        Lookup::Records {
                            set: TlsaSet::Usable(vec![record(1)]),
                            base: "p.test".into()
                        }
                    ),
                    false => assert_eq!(got.lookup, local, "the node's own result stands"),
                }
            }
        }
    }
}

#[test]
fn another_peer_gets_nothing_from_the_fleet() {
    let c = caches(0, u64::MAX);
    let got = c.dane("q.test:443", Lookup::Failed { bogus: false }, true, 5);
    assert!(!got.from_fleet);
    assert!(!c.tls_seen("q.test:443", 5));
}

#[test]
fn the_fleet_ratchet_holds_until_its_time() {
    let c = caches(0, 1);
    assert!(c.tls_seen("p.test:443", 99));
    assert!(!c.tls_seen("p.test:443", 100));
}
