//! MTA-STS policies in the fleet's cache (RFC 8461): the control plane fetches, over HTTPS
//! with PKIX as a node would, the policy of every mail domain assigned to a node as an SMTP
//! peer (port 25), and distributes it. A node that holds no fresh policy of its own takes the
//! fleet's as its cached one: its first message to the domain is already held to the policy,
//! and a fetch an attacker blocks at that node falls back to it (§10.2).

use std::collections::BTreeSet;

use osgate_core::crypto::{ChainVerifier, CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::sts::StsLookup;
use osgate_dns::Dns;
use osgate_dns::sts::Sts;
use osgate_proto::features;
use osgate_proto::pb::{self, resource::Kind};
use rustls::RootCertStore;

use crate::config::StsConfig;
use crate::ctx::{Ctx, put};
use crate::db::Write;

/// The resolver for the fleet's policies (kept in memory; the database is the copy that lasts).
pub fn resolver(config: &StsConfig) -> Result<Sts, String> {
    let crypto = CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls12).map_err(|e| e.to_string())?;
    let roots = match &config.roots {
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            roots
        }
        None => ChainVerifier::system_roots(),
    };
    let chain = ChainVerifier::new(roots, &crypto);
    Ok(Sts::new(&crypto, chain, None)?.with_port(config.port))
}

/// The mail domains of `peers`: hosts of SMTP peers (port 25) that are names.
pub fn domains(peers: &BTreeSet<String>) -> BTreeSet<String> {
    peers
        .iter()
        .filter_map(|p| p.rsplit_once(':'))
        .filter(|(host, port)| *port == "25" && host.parse::<std::net::IpAddr>().is_err())
        .map(|(host, _)| host.to_owned())
        .collect()
}

/// The resource for what `lookup` found, or `None` when the domain has no policy in effect.
/// A domain whose policy could not be fetched keeps what nodes hold (`Err`).
fn resource(domain: &str, lookup: &StsLookup) -> Result<Option<pb::StsPolicy>, &'static str> {
    match lookup {
        StsLookup::Policy(policy, _) => Ok(Some(pb::StsPolicy {
            domain: domain.to_owned(),
            id: policy.id.clone(),
            policy: policy.lines().join("\r\n") + "\r\n",
            fetched_at: policy.fetched_at,
            requires: vec![features::STS_CACHE.into()],
        })),
        StsLookup::NoPolicy => Ok(None),
        _ => Err("fetch-failed"),
    }
}

/// Looks the policy of `domain` up; the write, if what nodes hold changes.
pub async fn refresh(ctx: &Ctx, sts: &Sts, dns: &Dns, domain: &str, now: u64) -> Option<Write> {
    let lookup = sts.policy(dns, domain, now, None).await;
    let held = match ctx
        .state
        .get("sts", domain)
        .as_deref()
        .and_then(|r| r.kind.clone())
    {
        Some(Kind::Sts(s)) => Some(s),
        _ => None,
    };
    match (resource(domain, &lookup), held) {
        (Ok(Some(new)), held) if held.as_ref() != Some(&new) => {
            let resource = pb::Resource {
                kind: Some(Kind::Sts(new)),
            };
            Some(put("sts", domain.to_owned(), &resource))
        }
        (Ok(None), Some(_)) => Some(Write::Delete {
            kind: "sts",
            name: domain.to_owned(),
        }),
        (Err(why), _) => {
            tracing::warn!(
                domain,
                result = why,
                "MTA-STS cache: no policy fetched; nodes keep what they hold"
            );
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_smtp_peers_are_mail_domains() {
        let peers = [
            "mail.test:25",
            "web.test:443",
            "192.0.2.1:25",
            "other.test:25",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let got: Vec<String> = domains(&peers).into_iter().collect();
        assert_eq!(got, ["mail.test", "other.test"]);
    }

    #[test]
    fn a_policy_round_trips_through_the_resource() {
        let text = "version: STSv1\nmode: enforce\nmx: mx.test\nmax_age: 86400\n";
        let policy = osgate_core::sts::Policy::from_parts("20261201", 1_000, text).unwrap();
        let lookup = StsLookup::Policy(policy.clone(), osgate_core::sts::Source::Fresh);
        let r = resource("mail.test", &lookup).unwrap().unwrap();
        let (domain, back) = osgate_proto::validate::sts(&r).unwrap();
        assert_eq!((domain.as_str(), back), ("mail.test", policy));
        assert_eq!(resource("mail.test", &StsLookup::NoPolicy), Ok(None));
    }
}
