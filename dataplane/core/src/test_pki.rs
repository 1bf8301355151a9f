//! Test certificates: a CA and a leaf it issued.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub(crate) struct Issued {
    pub ca: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    pub leaf_key: PrivateKeyDer<'static>,
    pub leaf_spki: Vec<u8>,
}

/// A fresh CA and a leaf for `name`; `expired` backdates the leaf's validity to 2020.
pub(crate) fn issue(name: &str, expired: bool) -> Issued {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf = params.signed_by(&key, &issuer).unwrap();
    Issued {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        leaf_spki: key.subject_public_key_info(),
    }
}
