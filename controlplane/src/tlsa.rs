//! `osgate-controlplane tlsa`: the DANE-EE records for the control plane's key.
//!
//! RFC 7671 §5.1: DANE-EE(3) with SPKI(1) selector and SHA2-256(1) matching, which survives
//! certificate renewal with the same key. RFC 7671 §8.1: publish the next key's record
//! beside the current one before the key is used ("current + next").

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// One zone-file line per key: `_<port>._tcp.<name>. IN TLSA 3 1 1 <hex>`.
pub fn records(config: &Config, name: Option<&str>) -> Result<Vec<String>, String> {
    let port = config.listen.port();
    if port == 0 {
        return Err("controlplane.listen: port 0 is chosen at start; a TLSA record needs the port clients use".into());
    }
    let first = config
        .chain
        .first()
        .ok_or("controlplane.certificate: no certificate")?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => first_dns_name(first).ok_or(
            "controlplane.certificate: no DNS name in its subject alternative names; give --name",
        )?,
    };
    let owner = format!("_{port}._tcp.{}.", name.trim_end_matches('.'));
    let mut keys = vec![("current", first)];
    if let Some(next) = config.next_chain.as_ref().and_then(|c| c.first()) {
        keys.push(("next", next));
    }
    keys.into_iter()
        .map(|(which, cert)| {
            let hash = spki_sha256(cert)
                .ok_or_else(|| format!("the {which} certificate does not parse as X.509"))?;
            Ok(format!("{owner} IN TLSA 3 1 1 {hash} ; {which} key"))
        })
        .collect()
}

/// The hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
fn spki_sha256(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let digest = Sha256::digest(parsed.subject_public_key_info().as_ref());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn first_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = parsed.valid_dns_names().next()?;
    Some(name.to_owned())
}
