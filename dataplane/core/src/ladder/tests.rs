use proptest::prelude::*;

use super::*;

const LEVELS: [Level; 5] = [
    Level::Opportunistic,
    Level::Encrypt,
    Level::Authenticate,
    Level::Cleartext,
    Level::Deny,
];

const TLS_RESULTS: [TlsResult; 11] = [
    TlsResult::Unreachable,
    TlsResult::PeerNoTls,
    TlsResult::NoStarttls,
    TlsResult::HandshakeFailed,
    TlsResult::HandshakeTimeout,
    TlsResult::Established {
        auth: Ok(Method::Pkix),
    },
    TlsResult::Established {
        auth: Ok(Method::Pinned),
    },
    TlsResult::Established {
        auth: Ok(Method::Tofu),
    },
    TlsResult::Established {
        auth: Err(Reason::CertificateNotTrusted),
    },
    TlsResult::Established {
        auth: Err(Reason::KeyChanged),
    },
    TlsResult::Established {
        auth: Err(Reason::PinRevoked),
    },
];

const DNS_REFUSALS: [Option<Reason>; 4] = [
    None,
    Some(Reason::DnssecInvalid),
    Some(Reason::DnsLookupFailed),
    Some(Reason::DaneRequired),
];

fn plans() -> Vec<Plan> {
    let mut plans = Vec::new();
    for level in LEVELS {
        for allow_cleartext_fallback in [true, false] {
            for ratchet in [true, false] {
                for tls_committed in [true, false] {
                    for auth_expected in [true, false] {
                        for floor_raised in [true, false] {
                            for refused in DNS_REFUSALS {
                                plans.push(Plan {
                                    level,
                                    allow_cleartext_fallback,
                                    ratchet,
                                    tls_committed,
                                    auth_expected,
                                    floor_raised,
                                    refused,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    plans
}

/// The DESIGN.md fallback table, row by row, as the expected step.
fn expected(plan: Plan, tls: TlsResult, connects: bool) -> Step {
    let refuse = |reason, downgrade_suspected| Step::Refuse {
        reason,
        downgrade_suspected,
    };
    let cleartext = |reason| {
        if connects {
            Step::Relay {
                achieved: Achieved::Cleartext,
                reason,
            }
        } else {
            refuse(Reason::Unreachable, false)
        }
    };
    let authentication_expected = plan.level == Level::Authenticate || plan.auth_expected;
    let encryption_committed = plan.level == Level::Encrypt || plan.ratchet || plan.tls_committed;
    match plan.level {
        Level::Deny => return refuse(Reason::PolicyDeny, false),
        Level::Cleartext => return cleartext(Reason::PolicyCleartext),
        _ => {}
    }
    // A DANE-relevant lookup failed: refuse before connecting.
    if let Some(reason) = plan.refused {
        return refuse(reason, false);
    }
    let failure = match tls {
        TlsResult::Unreachable => return refuse(Reason::Unreachable, false),
        TlsResult::Established { auth: Ok(method) } => {
            return Step::Relay {
                achieved: Achieved::Authenticated(method),
                reason: Reason::None,
            };
        }
        // Authentication fails: refuse where it was expected (or the key is revoked), else
        // stay encrypted.
        TlsResult::Established { auth: Err(reason) }
            if authentication_expected || reason == Reason::PinRevoked =>
        {
            return refuse(reason, false);
        }
        TlsResult::Established { auth: Err(reason) } => {
            return Step::Relay {
                achieved: Achieved::Encrypted,
                reason,
            };
        }
        TlsResult::PeerNoTls => Reason::PeerNoTls,
        TlsResult::NoStarttls => Reason::StarttlsNotSupported,
        TlsResult::HandshakeFailed => Reason::TlsHandshakeFailed,
        TlsResult::HandshakeTimeout => Reason::HandshakeTimeout,
    };
    // No TLS or a failed handshake; a raised floor may be why the handshake failed.
    let floor_failed = plan.floor_raised && tls == TlsResult::HandshakeFailed;
    if authentication_expected || encryption_committed || floor_failed {
        refuse(failure, plan.ratchet)
    } else if plan.allow_cleartext_fallback {
        cleartext(failure)
    } else {
        refuse(failure, false)
    }
}

/// Every plan (level × fallback × ratchet × TLS commitment × authentication expected × floor
/// × DNS refusal) × TLS result × cleartext connect.
#[test]
fn every_plan_and_event_has_the_designed_outcome() {
    let mut cases = 0;
    for plan in plans() {
        for tls in TLS_RESULTS {
            for connects in [true, false] {
                assert_eq!(
                    simulate(plan, tls, connects),
                    expected(plan, tls, connects),
                    "{plan:?} {tls:?} connects={connects}"
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 5 * 2 * 2 * 2 * 2 * 2 * 4 * TLS_RESULTS.len() * 2);
}

#[test]
fn cleartext_never_tries_tls_and_deny_never_connects() {
    let (_, first) = Ladder::start(Plan::policy(Level::Cleartext, false));
    assert_eq!(first, Step::TryCleartext);
    let (_, first) = Ladder::start(Plan::policy(Level::Deny, false));
    assert!(matches!(
        first,
        Step::Refuse {
            reason: Reason::PolicyDeny,
            ..
        }
    ));
}

fn any_plan() -> impl Strategy<Value = Plan> {
    proptest::sample::select(plans())
}

fn any_tls() -> impl Strategy<Value = TlsResult> {
    proptest::sample::select(TLS_RESULTS.to_vec())
}

proptest! {
    /// Authentication failure never yields cleartext, and never `encrypted` where
    /// authentication was expected.
    #[test]
    fn failed_authentication_is_never_downgraded(plan in any_plan(), tls in any_tls(), connects: bool) {
        if let TlsResult::Established { auth: Err(_) } = tls {
            let step = simulate(plan, tls, connects);
            if plan.requires_authentication() && plan.level != Level::Cleartext && plan.level != Level::Deny {
                prop_assert!(matches!(step, Step::Refuse { .. }), "{:?}", step);
            }
            let cleartext = matches!(step, Step::Relay { achieved: Achieved::Cleartext, .. });
            prop_assert!(!cleartext || plan.level == Level::Cleartext, "{:?}", step);
        }
    }

    /// Explicit policy always wins: `cleartext` relays in cleartext whatever the evidence,
    /// `deny` refuses whatever it is.
    #[test]
    fn explicit_policy_wins(plan in any_plan(), tls in any_tls()) {
        let step = simulate(plan, tls, true);
        match plan.level {
            Level::Cleartext => prop_assert_eq!(step, Step::Relay { achieved: Achieved::Cleartext, reason: Reason::PolicyCleartext }),
            Level::Deny => {
                let denied = matches!(step, Step::Refuse { reason: Reason::PolicyDeny, .. });
                prop_assert!(denied, "{:?}", step);
            }
            _ => {}
        }
    }

    /// Cleartext after a TLS attempt only for an opportunistic plan with no commitment.
    #[test]
    fn cleartext_only_where_nothing_commits_to_tls(plan in any_plan(), tls in any_tls()) {
        if let Step::Relay { achieved: Achieved::Cleartext, reason } = simulate(plan, tls, true) {
            let allowed = plan.level == Level::Cleartext
                || (plan.level == Level::Opportunistic && plan.allow_cleartext_fallback && !plan.requires_tls());
            prop_assert!(allowed, "{:?} reached cleartext ({:?})", plan, reason);
            prop_assert_ne!(reason, Reason::None, "cleartext always carries a reason");
        }
    }

    /// A ratchet failure is always flagged as a suspected downgrade.
    #[test]
    fn ratchet_failures_are_suspected_downgrades(plan in any_plan(), tls in any_tls()) {
        let failed = matches!(tls, TlsResult::PeerNoTls | TlsResult::NoStarttls | TlsResult::HandshakeFailed | TlsResult::HandshakeTimeout);
        let step = simulate(plan, tls, true);
        if plan.ratchet && failed && plan.refused.is_none() && matches!(plan.level, Level::Opportunistic | Level::Encrypt | Level::Authenticate) {
            prop_assert!(matches!(step, Step::Refuse { downgrade_suspected: true, .. }), "{:?}", step);
        }
    }
}
