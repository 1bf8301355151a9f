// Tests check certificates made now, so they read the clock the core itself never does.
#![allow(clippy::disallowed_methods)]

use rustls_pki_types::{ServerName, UnixTime};

use super::*;
use crate::crypto::{CryptoPolicy, KxGroup, TlsFloor, check_dane_ta};
use crate::outcome::Reason;

fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

struct Chain {
    ee: CertificateDer<'static>,
    ee_spki: Vec<u8>,
    ca: CertificateDer<'static>,
}

/// A CA and a leaf for `name`; `expired` backdates the leaf.
fn chain(name: &str, expired: bool) -> Chain {
    let issued = crate::test_pki::issue(name, expired);
    Chain {
        ee: issued.leaf,
        ee_spki: issued.leaf_spki,
        ca: issued.ca,
    }
}

#[test]
fn only_dane_usages_selectors_and_matching_types_with_right_lengths_are_usable() {
    assert!(tlsa(3, 1, 1, vec![0; 32]).is_usable());
    assert!(tlsa(2, 0, 2, vec![0; 64]).is_usable());
    assert!(tlsa(3, 0, 0, vec![1, 2, 3]).is_usable());
    for unusable in [
        tlsa(0, 1, 1, vec![0; 32]),
        tlsa(1, 1, 1, vec![0; 32]),
        tlsa(4, 1, 1, vec![0; 32]),
        tlsa(3, 2, 1, vec![0; 32]),
        tlsa(3, 1, 3, vec![0; 32]),
        tlsa(3, 1, 1, vec![0; 31]),
        tlsa(3, 1, 2, vec![0; 32]),
        tlsa(3, 1, 0, vec![]),
    ] {
        assert!(!unusable.is_usable(), "{unusable:?}");
    }
    assert_eq!(
        TlsaSet::classify(&[tlsa(1, 1, 1, vec![0; 32])]),
        TlsaSet::Unusable
    );
    assert_eq!(TlsaSet::classify(&[]), TlsaSet::Unusable);
}

#[test]
fn digest_agility_keeps_the_strongest_digest_per_usage_and_selector() {
    let sha256 = tlsa(3, 1, 1, vec![1; 32]);
    let sha512 = tlsa(3, 1, 2, vec![2; 64]);
    let full = tlsa(3, 1, 0, vec![3; 10]);
    let other_selector = tlsa(3, 0, 1, vec![4; 32]);
    let TlsaSet::Usable(kept) = TlsaSet::classify(&[
        sha256.clone(),
        sha512.clone(),
        full.clone(),
        other_selector.clone(),
    ]) else {
        panic!("usable");
    };
    assert_eq!(kept, vec![sha512, full, other_selector]);
}

#[test]
fn dane_ee_matches_the_key_or_certificate_and_ignores_name_and_expiry() {
    let c = chain("right.test", true);
    let spki256 = sha::sha256(&c.ee_spki);
    let cert512 = sha::sha512(c.ee.as_ref());
    for record in [
        tlsa(3, 1, 1, spki256.clone()),
        tlsa(3, 0, 2, cert512),
        tlsa(3, 1, 0, c.ee_spki.clone()),
        tlsa(3, 0, 0, c.ee.to_vec()),
    ] {
        let records = [record.clone()];
        assert_eq!(
            match_chain(&records, std::slice::from_ref(&c.ee)),
            Match::EndEntity(&records[0]),
            "{record:?}"
        );
    }
    let wrong = [tlsa(3, 1, 1, vec![0; 32])];
    assert_eq!(
        match_chain(&wrong, std::slice::from_ref(&c.ee)),
        Match::NoMatch
    );
}

#[test]
fn a_weaker_matching_digest_is_ignored_when_a_stronger_one_is_published() {
    let c = chain("a.test", false);
    let records = [
        tlsa(3, 1, 1, sha::sha256(&c.ee_spki)),
        tlsa(3, 1, 2, vec![9; 64]),
    ];
    let TlsaSet::Usable(kept) = TlsaSet::classify(&records) else {
        panic!("usable");
    };
    assert_eq!(
        match_chain(&kept, std::slice::from_ref(&c.ee)),
        Match::NoMatch
    );
}

#[test]
fn dane_ta_anchors_at_the_matched_certificate_and_checks_the_name() {
    let c = chain("mx.a.test", false);
    let records = [tlsa(2, 0, 1, sha::sha256(c.ca.as_ref()))];
    let presented = [c.ee.clone(), c.ca.clone()];
    assert_eq!(
        match_chain(&records, &presented),
        Match::TrustAnchor(&records[0], 1)
    );
    let policy = CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls12).unwrap();
    let now = UnixTime::now();
    let right: ServerName<'_> = "mx.a.test".try_into().unwrap();
    let wrong: ServerName<'_> = "other.test".try_into().unwrap();
    assert_eq!(check_dane_ta(&policy, &presented, 1, &right, now), Ok(()));
    assert_eq!(
        check_dane_ta(&policy, &presented, 1, &wrong, now),
        Err(Reason::CertificateHostMismatch)
    );
    assert_eq!(
        check_dane_ta(&policy, &presented, 5, &right, now),
        Err(Reason::ValidationFailure)
    );
    // A TA record never matches the end-entity certificate itself.
    assert_eq!(match_chain(&records, &presented[..1]), Match::NoMatch);
}
