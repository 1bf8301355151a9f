use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

/// Every reason; `exhaustive` stops compiling when one is added and not listed here.
const REASONS: [Reason; 32] = [
    Reason::None,
    Reason::PolicyCleartext,
    Reason::PeerNoTls,
    Reason::TlsHandshakeFailed,
    Reason::HandshakeTimeout,
    Reason::CertificateNotTrusted,
    Reason::CertificateHostMismatch,
    Reason::CertificateExpired,
    Reason::ValidationFailure,
    Reason::Unreachable,
    Reason::ClientNoTls,
    Reason::ClientSilent,
    Reason::ClientClosed,
    Reason::MalformedClientHello,
    Reason::CleartextDenied,
    Reason::PolicyDeny,
    Reason::PinMismatch,
    Reason::FleetKeyMismatch,
    Reason::KeyChanged,
    Reason::PinStoreUnavailable,
    Reason::PinRevoked,
    Reason::TlsaInvalid,
    Reason::DnssecInvalid,
    Reason::DnsLookupFailed,
    Reason::DaneRequired,
    Reason::StarttlsNotSupported,
    Reason::SmtpProtocolError,
    Reason::StsPolicyFetchError,
    Reason::StsPolicyInvalid,
    Reason::StsWebpkiInvalid,
    Reason::StsMxMismatch,
    Reason::ClientNotAuthorized,
];

#[allow(dead_code)]
fn exhaustive(r: Reason) -> usize {
    // The index in REASONS: a new variant must be added here and there.
    match r {
        Reason::None => 0,
        Reason::PolicyCleartext => 1,
        Reason::PeerNoTls => 2,
        Reason::TlsHandshakeFailed => 3,
        Reason::HandshakeTimeout => 4,
        Reason::CertificateNotTrusted => 5,
        Reason::CertificateHostMismatch => 6,
        Reason::CertificateExpired => 7,
        Reason::ValidationFailure => 8,
        Reason::Unreachable => 9,
        Reason::ClientNoTls => 10,
        Reason::ClientSilent => 11,
        Reason::ClientClosed => 12,
        Reason::MalformedClientHello => 13,
        Reason::CleartextDenied => 14,
        Reason::PolicyDeny => 15,
        Reason::PinMismatch => 16,
        Reason::FleetKeyMismatch => 17,
        Reason::KeyChanged => 18,
        Reason::PinStoreUnavailable => 19,
        Reason::PinRevoked => 20,
        Reason::TlsaInvalid => 21,
        Reason::DnssecInvalid => 22,
        Reason::DnsLookupFailed => 23,
        Reason::DaneRequired => 24,
        Reason::StarttlsNotSupported => 25,
        Reason::SmtpProtocolError => 26,
        Reason::StsPolicyFetchError => 27,
        Reason::StsPolicyInvalid => 28,
        Reason::StsWebpkiInvalid => 29,
        Reason::StsMxMismatch => 30,
        Reason::ClientNotAuthorized => 31,
    }
}

#[test]
fn every_reason_maps_and_every_result_type_is_reached() {
    let mut reached = std::collections::BTreeSet::new();
    for (i, reason) in REASONS.into_iter().enumerate() {
        assert_eq!(exhaustive(reason), i, "{}", reason.as_str());
        let mapped = result_type(reason);
        // A reason named after an RFC 8460 type maps to exactly that type.
        if let Some(same) = ResultType::parse(reason.as_str()) {
            assert_eq!(mapped, Some(same), "{}", reason.as_str());
        }
        reached.extend(mapped);
    }
    assert_eq!(reached.len(), ResultType::ALL.len());
    assert_eq!(result_type(Reason::None), None);
    assert_eq!(result_type(Reason::Unreachable), None, "transient: §4.3.4");
    assert_eq!(
        result_type(Reason::KeyChanged),
        Some(ResultType::CertificateNotTrusted)
    );
}

#[test]
fn only_tls_without_a_shortfall_is_a_success_and_transient_ends_are_not_counted() {
    assert_eq!(verdict(Reason::None, true), Verdict::Success);
    // Opportunistic TLS with a chain no policy asked to check: compliant.
    assert_eq!(
        verdict(Reason::CertificateNotTrusted, true),
        Verdict::Success
    );
    assert_eq!(verdict(Reason::None, false), Verdict::NotCounted);
    assert_eq!(verdict(Reason::Unreachable, false), Verdict::NotCounted);
    assert_eq!(verdict(Reason::PolicyCleartext, false), Verdict::NotCounted);
    assert_eq!(
        verdict(Reason::StarttlsNotSupported, false),
        Verdict::Failure(ResultType::StarttlsNotSupported)
    );
    for reason in REASONS {
        for tls in [false, true] {
            match verdict(reason, tls) {
                Verdict::Failure(t) => assert!(!tls && result_type(reason) == Some(t)),
                Verdict::Success => assert!(tls),
                Verdict::NotCounted => assert!(!tls && result_type(reason).is_none()),
            }
        }
    }
}

#[test]
fn result_types_round_trip_their_iana_names() {
    let names: Vec<&str> = ResultType::ALL.iter().map(|t| t.as_str()).collect();
    for t in ResultType::ALL {
        assert_eq!(ResultType::parse(t.as_str()), Some(t));
    }
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    assert_eq!(ResultType::parse("certificate-revoked"), None);
}

#[test]
fn days_are_utc_calendar_days() {
    let cases = [
        ("1970-01-01", 0u64),
        ("2000-02-29", 951_782_400),
        ("2026-12-01", 1_796_083_200),
        ("2024-12-31", 1_735_603_200),
    ];
    for (text, start) in cases {
        let day = Day::parse(text).unwrap();
        assert_eq!(day.start_unix(), start, "{text}");
        assert_eq!(day.to_string(), text);
        assert_eq!(Day::of_unix(start + 86_399), day);
        assert_ne!(Day::of_unix(start + 86_400), day);
    }
    for bad in [
        "2026-02-29",
        "2026-13-01",
        "1969-12-31",
        "2026-1-01",
        "+026-01-01",
        "",
    ] {
        assert_eq!(Day::parse(bad), None, "{bad}");
    }
}

fn session(failure: Option<ResultType>, mx: &str, at: u64) -> SessionResult {
    SessionResult {
        policy_domain: "Example.NET".into(),
        policy: PolicyRef {
            policy_type: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_hosts: vec!["*.example.net".into()],
        },
        mx_host: Some(mx.into()),
        receiving_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        sending_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
        failure,
        at,
    }
}

#[test]
fn sessions_count_per_domain_day_and_policy() {
    let day = Day::parse("2026-12-01").unwrap().start_unix();
    let mut all = Aggregates::default();
    all.record(&session(None, "mx1.example.net", day));
    all.record(&session(None, "mx1.example.net", day + 10));
    let fail = Some(ResultType::CertificateExpired);
    all.record(&session(fail, "mx2.example.net", day + 20));
    all.record(&session(fail, "mx2.example.net", day + 86_400));
    assert_eq!(all.days.len(), 2, "two UTC days");
    let first = &all.days[&("example.net".to_owned(), Day::of_unix(day))];
    let tally = first.policies.values().next().unwrap();
    assert_eq!((tally.successes, tally.failures), (2, 1));
    assert_eq!(tally.details.values().sum::<u64>(), 1);
    assert_eq!(DayAggregate::from_stored(&first.to_stored()), *first);
}

#[test]
fn a_report_has_the_rfc_members() {
    let day = Day::parse("2026-12-01").unwrap();
    let mut agg = DayAggregate::default();
    agg.add(&session(None, "mx1.example.net", day.start_unix()));
    agg.add(&session(
        Some(ResultType::StarttlsNotSupported),
        "mx2.example.net",
        day.start_unix(),
    ));
    let meta = ReportMeta {
        organization: "osgate.example".into(),
        contact: "postmaster@osgate.example".into(),
    };
    let text = render("example.net", day, &agg, &meta);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["date-range"]["start-datetime"], "2026-12-01T00:00:00Z");
    assert_eq!(v["date-range"]["end-datetime"], "2026-12-01T23:59:59Z");
    let p = &v["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "example.net");
    assert_eq!(p["policy"]["mx-host"][0], "*.example.net");
    assert_eq!(p["summary"]["total-successful-session-count"], 1);
    assert_eq!(p["summary"]["total-failure-session-count"], 1);
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "starttls-not-supported");
    assert_eq!(f["receiving-mx-hostname"], "mx2.example.net");
    assert_eq!(f["receiving-ip"], "192.0.2.1");
    assert_eq!(f["sending-mta-ip"], "198.51.100.7");
    assert_eq!(f["failed-session-count"], 1);
}

fn arb_day() -> impl Strategy<Value = DayAggregate> {
    let session = (0usize..3, proptest::option::of(0usize..11), 0u8..3, 0u64..3).prop_map(
        |(policy, failure, mx, day)| {
            let mut s = session(
                failure.map(|i| ResultType::ALL[i]),
                &format!("mx{mx}.example.net"),
                day * 86_400,
            );
            s.policy.policy_type =
                [PolicyType::Tlsa, PolicyType::Sts, PolicyType::NoPolicyFound][policy];
            s
        },
    );
    proptest::collection::vec(session, 0..12).prop_map(|sessions| {
        let mut day = DayAggregate::default();
        for s in &sessions {
            day.add(s);
        }
        day
    })
}

fn merged(a: &DayAggregate, b: &DayAggregate) -> DayAggregate {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn merge_is_commutative_and_associative(a in arb_day(), b in arb_day(), c in arb_day()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &DayAggregate::default()), a.clone());
        for tally in merged(&a, &b).policies.values() {
            prop_assert_eq!(tally.details.values().sum::<u64>(), tally.failures);
        }
    }

    #[test]
    fn the_stored_form_round_trips(a in arb_day()) {
        let json = serde_json::to_string(&a.to_stored()).unwrap();
        let back: StoredDay = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(DayAggregate::from_stored(&back), a);
    }

    #[test]
    fn every_day_prints_and_parses_back(n in 0u32..2_932_896) {
        let day = Day(n);
        prop_assert_eq!(Day::parse(&day.to_string()), Some(day));
    }
}

#[test]
fn policies_are_built_from_sts_and_tlsa() {
    let sts = crate::sts::Policy {
        id: "20261201".into(),
        mode: crate::sts::Mode::Enforce,
        mx: vec!["*.example.net".into()],
        max_age: 86_400,
        fetched_at: 0,
    };
    let p = PolicyRef::sts(&sts);
    assert_eq!(p.policy_type, PolicyType::Sts);
    assert_eq!(p.strings[0], "version: STSv1");
    assert!(p.strings.contains(&"mx: *.example.net".to_owned()));
    assert_eq!(p.mx_hosts, ["*.example.net"]);
    let a = PolicyRef::tlsa(["3 1 1 BB".to_owned(), "3 1 1 AA".to_owned()]);
    let b = PolicyRef::tlsa(["3 1 1 AA".to_owned(), "3 1 1 BB".to_owned()]);
    assert_eq!(a, b, "one RRset, one policy");
    assert_eq!(a.policy_type.as_str(), "tlsa");
}
