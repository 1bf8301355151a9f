//! SPKI pins: `sha256/<base64 of the SHA-256 of the SubjectPublicKeyInfo>` (the form of
//! RFC 7469 §2.4), used by explicit pins, TOFU and fleet keys.

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;

/// The SHA-256 of a certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpkiPin([u8; 32]);

/// A pin string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a pin: expected sha256/ followed by 44 characters of base64")]
pub struct PinError(pub String);

impl SpkiPin {
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let error = || PinError(text.to_owned());
        let b64 = text.strip_prefix("sha256/").ok_or_else(error)?;
        let bytes = STANDARD.decode(b64).map_err(|_| error())?;
        Ok(Self(bytes.try_into().map_err(|_| error())?))
    }

    /// The SHA-256 digest itself: the association data of a TLSA `3 1 1` record.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The pin of `spki` (DER SubjectPublicKeyInfo).
    pub fn of_spki(spki: &[u8]) -> Self {
        let hash = digest::digest(&digest::SHA256, spki);
        let mut pin = [0; 32];
        pin.copy_from_slice(hash.as_ref());
        Self(pin)
    }

    /// The pin of the key in an end-entity certificate; `None` if the DER does not parse.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
        Some(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256/{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_reject_garbage() {
        let pin = SpkiPin::of_spki(b"not really DER, but any bytes hash");
        let text = pin.to_string();
        assert!(
            text.starts_with("sha256/") && text.len() == 7 + 44,
            "{text}"
        );
        assert_eq!(SpkiPin::parse(&text), Ok(pin));
        for bad in ["sha1/AAAA", "sha256/", "sha256/AAAA", "sha256/!!!!", "AAAA"] {
            assert!(SpkiPin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pin_of_a_certificate_is_the_hash_of_its_spki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = SpkiPin::of_certificate(cert.der()).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(pin, SpkiPin::of_spki(&key.subject_public_key_info()));
        assert_eq!(
            SpkiPin::of_certificate(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }
}
