//! The node's own keys: when they expire (loudly, before they do — CONFORMANCE H.51), and the
//! TLSA records that publish them.
//!
//! RFC 7671 §8.1: "publish the TLSA records for the new key (or certificate) … and wait …
//! before deploying it" — a key rollover publishes "current + next" for at least the TTL of
//! the TLSA RRset, then switches. `osgate tlsa` prints both.

use std::fmt::Write;

use metrics::gauge;
use osgate_core::dane;
use osgate_core::pin::SpkiPin;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{Config, Identity};
use crate::metrics as m;

/// How long before expiry a certificate is warned about at each check.
const WARN_BEFORE_SECS: i64 = 14 * 24 * 3600;

/// What the checks and `osgate tlsa` need from one certificate.
#[derive(Debug)]
struct Facts {
    not_after: i64,
    dns_names: Vec<String>,
}

fn facts(cert: &CertificateDer<'_>) -> Option<Facts> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let dns_names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.trim_end_matches('.').to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Facts {
        not_after: parsed.validity().not_after.timestamp(),
        dns_names,
    })
}

/// The keys the node presents, by the label its gauge carries.
fn presented(config: &Config) -> Vec<(String, &[CertificateDer<'static>])> {
    let inbound = config
        .inbound
        .iter()
        .map(|i| (i.listen.to_string(), i.identity.chain.as_slice()));
    let controlplane = config
        .controlplane
        .iter()
        .map(|c| ("controlplane".to_owned(), c.chain.as_slice()));
    inbound.chain(controlplane).collect()
}

/// Sets each key's expiry gauge and logs the ones expired or expiring soon.
pub(crate) fn check_expiry(config: &Config, now: i64) {
    for (listener, chain) in presented(config) {
        let Some(facts) = chain.first().and_then(facts) else {
            continue;
        };
        gauge!(m::CERTIFICATE_EXPIRY, "listener" => listener.clone()).set(facts.not_after as f64);
        let left = facts.not_after - now;
        if left <= 0 {
            tracing::error!(target: "osgate::node", listener, expired_secs_ago = -left, "this certificate has EXPIRED: peers that check it refuse the connection; rotate the key (next_certificate, then SIGHUP)");
        } else if left < WARN_BEFORE_SECS {
            tracing::warn!(target: "osgate::node", listener, days_left = left / 86_400, "this certificate expires soon; rotate the key (next_certificate, then SIGHUP)");
        }
    }
}

/// `osgate tlsa -c FILE`: the `3 1 1` records each inbound listener should publish at
/// `_port._tcp.name`, current key then next. `name` overrides the certificates' DNS names.
pub(crate) fn tlsa(config: &Config, name: Option<&str>) -> Result<String, String> {
    if config.inbound.is_empty() {
        return Err("the config has no [[inbound]] listener: nothing to publish".into());
    }
    let mut out = String::new();
    for (i, inbound) in config.inbound.iter().enumerate() {
        let port = inbound.listen.port();
        let keys = [
            ("current", Some(&inbound.identity)),
            ("next", inbound.next_identity.as_ref()),
        ];
        for (which, identity) in keys {
            let Some(identity) = identity else { continue };
            let (names, key) = published(identity)?;
            let names = match name {
                Some(name) => vec![name.to_owned()],
                None => names,
            };
            let _ = writeln!(out, "; inbound[{i}] {} — {which} key", inbound.listen);
            if names.is_empty() {
                let _ = writeln!(out, "; the certificate names no DNS name: pass --name");
                let _ = writeln!(out, "{}", dane::ee_record(port, "NAME", &key));
            }
            for host in names {
                let _ = writeln!(out, "{}", dane::ee_record(port, &host, &key));
            }
        }
    }
    Ok(out)
}

/// The certificate's DNS names and the key its record publishes.
fn published(identity: &Identity) -> Result<(Vec<String>, SpkiPin), String> {
    let leaf = identity
        .chain
        .first()
        .ok_or_else(|| "an empty certificate chain".to_owned())?;
    let key =
        SpkiPin::of_certificate(leaf).ok_or_else(|| "a certificate does not parse".to_owned())?;
    let names = facts(leaf).map(|f| f.dns_names).unwrap_or_default();
    Ok((names, key))
}
