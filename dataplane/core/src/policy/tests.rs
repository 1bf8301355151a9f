use super::*;

fn rule(id: &str, selector: &str, level: Level, report_only: bool) -> Rule {
    Rule {
        id: id.into(),
        selector: Selector::parse(selector).unwrap(),
        level,
        methods: Vec::new(),
        pins: Vec::new(),
        min_tls: TlsFloor::Tls12,
        allow_cleartext_fallback: true,
        report_only,
    }
}

fn peer(host: &str, port: u16) -> Peer<'_> {
    Peer {
        host,
        port,
        ip: host.parse().ok(),
    }
}

fn enforced<'a>(set: &'a PolicySet, host: &str, port: u16) -> Option<&'a str> {
    set.select(&peer(host, port))
        .enforced
        .map(|r| r.id.as_str())
}

#[test]
fn selectors_parse_and_reject_with_reasons() {
    assert_eq!(
        Selector::parse("Mail.Example.").unwrap(),
        Selector::Host("mail.example".into())
    );
    assert_eq!(
        Selector::parse("*.bank.example").unwrap(),
        Selector::Suffix("bank.example".into())
    );
    assert_eq!(
        Selector::parse("10.1.2.3/8").unwrap(),
        Selector::Cidr("10.0.0.0".parse().unwrap(), 8)
    );
    assert_eq!(
        Selector::parse("db.example:5432").unwrap(),
        Selector::HostPort("db.example".into(), 5432)
    );
    assert_eq!(
        Selector::parse("[::1]:25").unwrap(),
        Selector::HostPort("::1".into(), 25)
    );
    assert_eq!(
        Selector::parse("2001:db8::1").unwrap(),
        Selector::Host("2001:db8::1".into())
    );
    for bad in ["*.", "10.0.0.0/33", "x/8", "host:port", "bad host", ""] {
        assert!(Selector::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn most_specific_rule_wins_in_the_documented_order() {
    let set = PolicySet::new(vec![
        rule("suffix-short", "*.example", Level::Encrypt, false),
        rule("suffix-long", "*.bank.example", Level::Authenticate, false),
        rule("cidr-8", "10.0.0.0/8", Level::Encrypt, false),
        rule("cidr-24", "10.1.2.0/24", Level::Cleartext, false),
        rule("host", "mx.bank.example", Level::Deny, false),
        rule(
            "hostport",
            "mx.bank.example:25",
            Level::Opportunistic,
            false,
        ),
    ]);
    assert_eq!(enforced(&set, "mx.bank.example", 25), Some("hostport"));
    assert_eq!(enforced(&set, "mx.bank.example", 587), Some("host"));
    assert_eq!(enforced(&set, "www.bank.example", 443), Some("suffix-long"));
    assert_eq!(
        enforced(&set, "www.other.example", 443),
        Some("suffix-short")
    );
    assert_eq!(enforced(&set, "10.1.2.3", 1), Some("cidr-24"));
    assert_eq!(enforced(&set, "10.9.9.9", 1), Some("cidr-8"));
    assert_eq!(
        enforced(&set, "example", 1),
        None,
        "*.example does not match the apex"
    );
    assert_eq!(enforced(&set, "notexample", 1), None);
    assert_eq!(enforced(&set, "192.0.2.1", 1), None);
}

#[test]
fn ties_go_to_the_rule_written_first() {
    let set = PolicySet::new(vec![
        rule("first", "a.example", Level::Encrypt, false),
        rule("second", "a.example", Level::Deny, false),
    ]);
    assert_eq!(enforced(&set, "a.example", 1), Some("first"));
}

#[test]
fn report_only_rules_are_reported_but_not_enforced() {
    let set = PolicySet::new(vec![
        rule("enforced", "*.example", Level::Opportunistic, false),
        rule("trial", "a.example", Level::Authenticate, true),
        rule("weaker-trial", "*.example", Level::Deny, true),
    ]);
    let selected = set.select(&peer("a.example", 1));
    assert_eq!(selected.enforced.map(|r| r.id.as_str()), Some("enforced"));
    assert_eq!(selected.reported.map(|r| r.id.as_str()), Some("trial"));
    let other = set.select(&peer("b.example", 1));
    assert_eq!(
        other.reported.map(|r| r.id.as_str()),
        Some("weaker-trial"),
        "equal specificity is reported"
    );
}

#[test]
fn contradictions_are_rejected() {
    let mut r = rule("r", "a.example", Level::Authenticate, false);
    assert_eq!(r.validate(false, false), Err(RuleError::NoMethods));
    r.methods = vec![Method::Pinned];
    assert_eq!(r.validate(false, false), Err(RuleError::PinnedWithoutPins));
    r.methods = vec![Method::Pkix];
    assert_eq!(
        r.validate(true, false),
        Err(RuleError::FallbackNeedsOpportunistic)
    );
    assert_eq!(r.validate(false, true), Ok(()));
    let mut c = rule("c", "a.example", Level::Cleartext, false);
    assert_eq!(
        c.validate(false, true),
        Err(RuleError::FloorWithoutTls("cleartext"))
    );
    c.methods = vec![Method::Pkix];
    assert_eq!(
        c.validate(false, false),
        Err(RuleError::MethodsNeedAuthenticate)
    );
}

mod report_only_invariant {
    use proptest::prelude::*;

    use super::*;

    fn selector() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            "[ab]\\.example".prop_map(|s| s),
            "\\*\\.(example|a\\.example)".prop_map(|s| s),
            "10\\.0\\.[0-1]\\.[0-9]".prop_map(|s| s),
            "10\\.0\\.0\\.0/(8|16|24)".prop_map(|s| s),
            "(a\\.example|10\\.0\\.0\\.1):(443|25)".prop_map(|s| s),
        ]
    }

    fn level() -> impl Strategy<Value = Level> {
        prop_oneof![
            Just(Level::Opportunistic),
            Just(Level::Encrypt),
            Just(Level::Cleartext),
            Just(Level::Deny),
        ]
    }

    proptest! {
        /// Adding report-only rules, anywhere in the list, never changes which rule is
        /// enforced for any peer: report-only never changes the wire.
        #[test]
        fn report_only_rules_never_change_the_enforced_rule(
            enforced in proptest::collection::vec((selector(), level()), 0..6),
            trial in proptest::collection::vec((selector(), level()), 1..6),
            positions in proptest::collection::vec(0usize..12, 1..6),
            host in prop_oneof![Just("a.example"), Just("b.example"), Just("x.a.example"), Just("10.0.0.1"), Just("10.0.1.7")],
            port in prop_oneof![Just(443u16), Just(25u16)],
        ) {
            let base: Vec<Rule> = enforced
                .iter()
                .enumerate()
                .map(|(i, (s, l))| rule(&format!("e{i}"), s, *l, false))
                .collect();
            let mut mixed = base.clone();
            for (i, ((s, l), at)) in trial.iter().zip(positions.iter().cycle()).enumerate() {
                let at = (*at).min(mixed.len());
                mixed.insert(at, rule(&format!("r{i}"), s, *l, true));
            }
            let (plain, with_trials) = (PolicySet::new(base), PolicySet::new(mixed));
            let p = peer(host, port);
            prop_assert_eq!(
                plain.select(&p).enforced.map(|r| r.id.clone()),
                with_trials.select(&p).enforced.map(|r| r.id.clone())
            );
        }
    }
}

#[test]
fn rules_with_one_selector_and_two_levels_are_ambiguous() {
    let rules = [
        rule("a", "*.b.test", Level::Encrypt, false),
        rule("b", "x.test", Level::Deny, false),
        rule("c", "*.B.test.", Level::Encrypt, false),
        rule("d", "*.b.test", Level::Cleartext, true),
    ];
    assert_eq!(ambiguous(&rules), None, "same level, or only reported");
    let clash = [
        rules[0].clone(),
        rules[1].clone(),
        rule("e", "*.b.test", Level::Cleartext, false),
    ];
    assert_eq!(ambiguous(&clash), Some((0, 2)));
}
