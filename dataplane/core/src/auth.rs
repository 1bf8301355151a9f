//! Which key the peer proved, from the evidence we hold, strongest source first.
//!
//! DESIGN.md: "A weaker source never overrides a failing stronger one." So the first source
//! that *has* evidence for this peer decides: operator pins, then the TOFU pin, then PKIX. A
//! mismatching pin is a refusal reason even if a public CA would vouch for the new key.
//! Order: operator pins > fleet node keys > DANE (a secure, usable TLSA set) > TOFU pin > PKIX.
//! Before all of them: a key the fleet revoked for the peer is refused (CONFORMANCE D.29).

use crate::outcome::{Method, Reason};
use crate::pin::SpkiPin;

/// The TOFU state of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tofu {
    /// TOFU is turned off.
    Off,
    /// No key pinned for this peer yet.
    Unknown,
    Pinned(SpkiPin),
    /// Planned rotation (CONFORMANCE D.27): an operator vouched for the next key, and both
    /// keys are accepted until the peer presents the next one.
    Rotating {
        current: SpkiPin,
        next: SpkiPin,
    },
    /// An operator revoked the pin: refused until a new key is pinned.
    Revoked,
    /// The pin store cannot be read: never "verification off".
    StoreUnavailable,
}

/// Evidence about one peer, before connecting.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    /// Operator pins: the policy rule's, else those an admin approved fleet-wide.
    pub pins: &'a [SpkiPin],
    /// The registered keys of the fleet node at the peer's address.
    pub fleet: &'a [SpkiPin],
    /// Keys an operator revoked for the peer: refused whatever else vouches for them.
    pub revoked: &'a [SpkiPin],
    /// A secure, usable TLSA set was found for the peer.
    pub dane: bool,
    pub tofu: Tofu,
}

/// The methods that count: those of an `authenticate` rule, or all of them.
#[derive(Clone, Copy, Debug)]
pub enum Methods<'a> {
    All,
    Only(&'a [Method]),
}

impl Methods<'_> {
    fn allows(&self, method: Method) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(&method),
        }
    }
}

impl Evidence<'_> {
    /// Whether the evidence names a key the peer must prove.
    pub fn expects_authentication(&self, methods: Methods<'_>) -> bool {
        let pins = methods.allows(Method::Pinned) && !self.pins.is_empty();
        let fleet = methods.allows(Method::Fleet) && !self.fleet.is_empty();
        let dane = methods.allows(Method::Dane) && self.dane;
        let tofu = methods.allows(Method::Tofu)
            && matches!(
                self.tofu,
                Tofu::Pinned(_) | Tofu::Rotating { .. } | Tofu::Revoked | Tofu::StoreUnavailable
            );
        pins || fleet || dane || tofu
    }
}

/// Checks that need the whole chain, run only when no stronger source has evidence.
pub trait ChainChecks {
    /// Matches the chain against the peer's usable TLSA set (RFC 7671).
    fn dane(&self) -> Result<(), Reason>;
    /// Validates the chain for the peer's name against trusted roots.
    fn pkix(&self) -> Result<(), Reason>;
}

/// The strongest method the `presented` key passes, or why it passes none.
pub fn authenticate(
    methods: Methods<'_>,
    evidence: &Evidence<'_>,
    presented: Option<SpkiPin>,
    checks: &dyn ChainChecks,
) -> Result<Method, Reason> {
    let Some(presented) = presented else {
        return Err(Reason::ValidationFailure);
    };
    if evidence.revoked.contains(&presented) {
        return Err(Reason::PinRevoked);
    }
    if methods.allows(Method::Pinned) && !evidence.pins.is_empty() {
        return match evidence.pins.contains(&presented) {
            true => Ok(Method::Pinned),
            false => Err(Reason::PinMismatch),
        };
    }
    if methods.allows(Method::Fleet) && !evidence.fleet.is_empty() {
        return match evidence.fleet.contains(&presented) {
            true => Ok(Method::Fleet),
            false => Err(Reason::FleetKeyMismatch),
        };
    }
    if methods.allows(Method::Dane) && evidence.dane {
        return checks.dane().map(|()| Method::Dane);
    }
    if methods.allows(Method::Tofu) {
        match evidence.tofu {
            Tofu::Pinned(pin) if pin == presented => return Ok(Method::Tofu),
            Tofu::Rotating { current, next } if presented == current || presented == next => {
                return Ok(Method::Tofu);
            }
            Tofu::Pinned(_) | Tofu::Rotating { .. } => return Err(Reason::KeyChanged),
            Tofu::Revoked => return Err(Reason::PinRevoked),
            Tofu::StoreUnavailable => return Err(Reason::PinStoreUnavailable),
            Tofu::Off | Tofu::Unknown => {}
        }
    }
    if methods.allows(Method::Pkix) {
        return checks.pkix().map(|()| Method::Pkix);
    }
    Err(Reason::CertificateNotTrusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> SpkiPin {
        SpkiPin::of_spki(&[n])
    }

    struct Checks {
        dane: Result<(), Reason>,
        pkix: Result<(), Reason>,
    }

    impl ChainChecks for Checks {
        fn dane(&self) -> Result<(), Reason> {
            self.dane
        }
        fn pkix(&self) -> Result<(), Reason> {
            self.pkix
        }
    }

    const PKIX_OK: &Checks = &Checks {
        dane: Err(Reason::TlsaInvalid),
        pkix: Ok(()),
    };
    const PKIX_BAD: &Checks = &Checks {
        dane: Err(Reason::TlsaInvalid),
        pkix: Err(Reason::CertificateNotTrusted),
    };
    const DANE_OK: &Checks = &Checks {
        dane: Ok(()),
        pkix: Err(Reason::CertificateNotTrusted),
    };

    #[test]
    fn stronger_evidence_decides_and_weaker_never_overrides_it() {
        let pins = [pin(1), pin(2)];
        let with_pins = Evidence {
            pins: &pins,
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Pinned(pin(3)),
        };
        assert_eq!(
            authenticate(Methods::All, &with_pins, Some(pin(2)), PKIX_BAD),
            Ok(Method::Pinned)
        );
        assert_eq!(
            authenticate(Methods::All, &with_pins, Some(pin(3)), PKIX_OK),
            Err(Reason::PinMismatch)
        );

        let tofu = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Pinned(pin(3)),
        };
        assert_eq!(
            authenticate(Methods::All, &tofu, Some(pin(3)), PKIX_BAD),
            Ok(Method::Tofu)
        );
        assert_eq!(
            authenticate(Methods::All, &tofu, Some(pin(4)), PKIX_OK),
            Err(Reason::KeyChanged)
        );

        let revoked = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Revoked,
        };
        assert_eq!(
            authenticate(Methods::All, &revoked, Some(pin(3)), PKIX_OK),
            Err(Reason::PinRevoked)
        );

        let broken = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::StoreUnavailable,
        };
        assert_eq!(
            authenticate(Methods::All, &broken, Some(pin(4)), PKIX_OK),
            Err(Reason::PinStoreUnavailable)
        );

        let nothing = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Unknown,
        };
        assert_eq!(
            authenticate(Methods::All, &nothing, Some(pin(4)), PKIX_OK),
            Ok(Method::Pkix)
        );
        assert_eq!(
            authenticate(Methods::All, &nothing, Some(pin(4)), PKIX_BAD),
            Err(Reason::CertificateNotTrusted)
        );
        assert_eq!(
            authenticate(Methods::All, &nothing, None, PKIX_OK),
            Err(Reason::ValidationFailure)
        );
    }

    #[test]
    fn during_a_planned_rotation_both_keys_work_and_no_third() {
        let rotating = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Rotating {
                current: pin(1),
                next: pin(2),
            },
        };
        for key in [1, 2] {
            assert_eq!(
                authenticate(Methods::All, &rotating, Some(pin(key)), PKIX_BAD),
                Ok(Method::Tofu)
            );
        }
        assert_eq!(
            authenticate(Methods::All, &rotating, Some(pin(3)), PKIX_OK),
            Err(Reason::KeyChanged)
        );
    }

    #[test]
    fn dane_outranks_tofu_and_pkix_and_a_mismatch_is_not_overridden() {
        let dane = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: true,
            tofu: Tofu::Pinned(pin(3)),
        };
        assert_eq!(
            authenticate(Methods::All, &dane, Some(pin(9)), DANE_OK),
            Ok(Method::Dane)
        );
        assert_eq!(
            authenticate(Methods::All, &dane, Some(pin(3)), PKIX_OK),
            Err(Reason::TlsaInvalid)
        );
        assert!(dane.expects_authentication(Methods::Only(&[Method::Dane])));
        let pins = [pin(1)];
        let both = Evidence {
            pins: &pins,
            fleet: &[],
            revoked: &[],
            dane: true,
            tofu: Tofu::Unknown,
        };
        assert_eq!(
            authenticate(Methods::All, &both, Some(pin(1)), PKIX_BAD),
            Ok(Method::Pinned)
        );
    }

    #[test]
    fn an_authenticate_rule_counts_only_its_methods() {
        let tofu = Evidence {
            pins: &[],
            fleet: &[],
            revoked: &[],
            dane: false,
            tofu: Tofu::Pinned(pin(3)),
        };
        let pkix_only = Methods::Only(&[Method::Pkix]);
        assert_eq!(
            authenticate(pkix_only, &tofu, Some(pin(9)), PKIX_OK),
            Ok(Method::Pkix)
        );
        assert!(!tofu.expects_authentication(pkix_only));
        assert!(tofu.expects_authentication(Methods::All));
        let pinned_only = Methods::Only(&[Method::Pinned]);
        assert_eq!(
            authenticate(pinned_only, &tofu, Some(pin(3)), PKIX_OK),
            Err(Reason::CertificateNotTrusted),
            "no pins and no other allowed method: nothing proves the key"
        );
    }
}
