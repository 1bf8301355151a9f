use proptest::prelude::*;

use super::*;

const POLICIES: [Policy; 4] = [
    Policy::Opportunistic {
        allow_cleartext_fallback: true,
    },
    Policy::Opportunistic {
        allow_cleartext_fallback: false,
    },
    Policy::Encrypt,
    Policy::Cleartext,
];

const TLS_RESULTS: [TlsResult; 8] = [
    TlsResult::Unreachable,
    TlsResult::PeerNoTls,
    TlsResult::HandshakeFailed,
    TlsResult::HandshakeTimeout,
    TlsResult::Established { chain: Ok(()) },
    TlsResult::Established {
        chain: Err(Reason::CertificateNotTrusted),
    },
    TlsResult::Established {
        chain: Err(Reason::CertificateHostMismatch),
    },
    TlsResult::Established {
        chain: Err(Reason::CertificateExpired),
    },
];

/// Runs the ladder to its end: the TLS attempt gets `tls`, a cleartext attempt `connects`.
fn run(policy: Policy, tls: TlsResult, connects: bool) -> (Vec<Step>, Step) {
    let (mut ladder, mut step) = Ladder::start(policy);
    let mut attempts = Vec::new();
    loop {
        match step {
            Step::TryTls => {
                attempts.push(step);
                (ladder, step) = ladder.on_tls(tls);
            }
            Step::TryCleartext => {
                attempts.push(step);
                (ladder, step) = ladder.on_cleartext(connects);
            }
            done => return (attempts, done),
        }
    }
}

fn relay(achieved: Level, reason: Reason) -> Step {
    Step::Relay { achieved, reason }
}

/// The whole table: every policy × TLS result × cleartext connect outcome, spelled out.
#[test]
fn every_policy_and_event_has_the_designed_outcome() {
    use Level::*;
    use Reason as R;
    let open = Policy::OPPORTUNISTIC;
    let strict_open = Policy::Opportunistic {
        allow_cleartext_fallback: false,
    };
    for connects in [true, false] {
        let fallback = |reason| {
            if connects {
                relay(Cleartext, reason)
            } else {
                Step::Refuse(R::Unreachable)
            }
        };
        for tls in TLS_RESULTS {
            let established = match tls {
                TlsResult::Established { chain: Ok(()) } => {
                    Some(relay(Authenticated(Method::Pkix), R::None))
                }
                TlsResult::Established { chain: Err(r) } => Some(relay(Encrypted, r)),
                _ => None,
            };
            let failure = match tls {
                TlsResult::PeerNoTls => Some(R::PeerNoTls),
                TlsResult::HandshakeFailed => Some(R::TlsHandshakeFailed),
                TlsResult::HandshakeTimeout => Some(R::HandshakeTimeout),
                _ => None,
            };
            let expected = |policy| match (policy, established, failure) {
                (Policy::Cleartext, _, _) => {
                    if connects {
                        relay(Cleartext, R::PolicyCleartext)
                    } else {
                        Step::Refuse(R::Unreachable)
                    }
                }
                (_, Some(step), _) => step,
                (p, None, Some(reason)) if p == open => fallback(reason),
                (_, None, Some(reason)) => Step::Refuse(reason),
                (_, None, None) => Step::Refuse(R::Unreachable),
            };
            for policy in [open, strict_open, Policy::Encrypt, Policy::Cleartext] {
                let (_, done) = run(policy, tls, connects);
                assert_eq!(
                    done,
                    expected(policy),
                    "{policy:?} {tls:?} connects={connects}"
                );
            }
        }
    }
}

#[test]
fn cleartext_policy_never_attempts_tls() {
    for tls in TLS_RESULTS {
        let (attempts, _) = run(Policy::Cleartext, tls, true);
        assert_eq!(attempts, [Step::TryCleartext]);
    }
}

fn any_policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(POLICIES.to_vec())
}

fn any_tls() -> impl Strategy<Value = TlsResult> {
    proptest::sample::select(TLS_RESULTS.to_vec())
}

proptest! {
    /// RFC 7435 §3 / DESIGN: authentication failure never produces cleartext.
    #[test]
    fn a_completed_handshake_never_ends_in_cleartext(policy in any_policy(), tls in any_tls(), connects: bool) {
        let (_, done) = run(policy, tls, connects);
        if matches!(tls, TlsResult::Established { .. }) && policy != Policy::Cleartext {
            prop_assert!(matches!(done, Step::Relay { achieved: Level::Encrypted | Level::Authenticated(_), .. }), "{:?}", done);
        }
    }

    /// Only an opportunistic policy that allows fallback ever reaches cleartext after TLS was tried.
    #[test]
    fn cleartext_only_where_policy_allows(policy in any_policy(), tls in any_tls(), connects: bool) {
        let (_, done) = run(policy, tls, connects);
        if let Step::Relay { achieved: Level::Cleartext, reason } = done {
            let allowed = policy == Policy::Cleartext || policy == Policy::OPPORTUNISTIC;
            prop_assert!(allowed, "{:?} reached cleartext ({:?})", policy, reason);
            prop_assert_ne!(reason, Reason::None, "cleartext always carries a reason");
        }
    }

    /// At most one TLS attempt and one cleartext attempt, in that order.
    #[test]
    fn attempts_are_bounded_and_ordered(policy in any_policy(), tls in any_tls(), connects: bool) {
        let (attempts, _) = run(policy, tls, connects);
        prop_assert!(attempts.len() <= 2);
        if attempts.len() == 2 {
            prop_assert_eq!(attempts, vec![Step::TryTls, Step::TryCleartext]);
        }
    }
}
