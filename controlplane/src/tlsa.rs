//! `osgate-controlplane tlsa`: the DANE-EE records for the control plane's key.
//!
//! RFC 7671 §5.1: DANE-EE(3) with SPKI(1) selector and SHA2-256(1) matching, which survives
//! certificate renewal with the same key. RFC 7671 §8.1: publish the next key's record
//! beside the current one before the key is used ("current + next").

use osgate_core::pin::SpkiPin;
use rustls_pki_types::CertificateDer;

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
    let mut keys = vec![("current", first)];
    if let Some(next) = config.next_chain.as_ref().and_then(|c| c.first()) {
        keys.push(("next", next));
    }
    keys.into_iter()
        .map(|(which, cert)| {
            let key = SpkiPin::of_certificate(cert)
                .ok_or_else(|| format!("the {which} certificate does not parse as X.509"))?;
            let record = osgate_core::dane::ee_record(port, &name, &key);
            Ok(format!("{record} ; {which} key"))
        })
        .collect()
}

fn first_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = parsed.valid_dns_names().next()?;
    Some(name.to_owned())
}
