//! `osgate mta-sts DOMAIN`: the policy the node would apply to mail for DOMAIN, found the way
//! the node finds it (its resolver, its PKIX roots, its policy cache under `state_dir`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use osgate_core::crypto::{ChainVerifier, CryptoPolicy, TlsFloor};
use osgate_core::sts::{Source, StsLookup};

use super::Sts;
use crate::config::Config;

/// The reports (one per domain, in order, looked up concurrently as sessions would), and
/// whether each established a policy or its absence (false: a failure).
pub(crate) fn run(
    config: &Path,
    domains: &[String],
    port: Option<u16>,
) -> Result<(String, bool), String> {
    let config = Config::load(config).map_err(|e| format!("config error: {e}"))?;
    let dns = config
        .dns
        .clone()
        .ok_or("MTA-STS needs the node's resolver, and [dns] dane = false turns it off")?;
    let crypto = CryptoPolicy::new(&config.node.tls_groups, TlsFloor::Tls12)
        .map_err(|e| format!("node.tls_groups: {e}"))?;
    let chain = ChainVerifier::new(crate::node::roots(&config), &crypto);
    let port = port.unwrap_or(config.smtp.mta_sts_port);
    let sts = Arc::new(Sts::new(&crypto, chain, Some(&config.node.state_dir))?.with_port(port));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lookups = runtime.block_on(async {
        let dns = crate::dns::Dns::new(&dns)?;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, domain) in domains.iter().enumerate() {
            let (sts, dns, domain) = (sts.clone(), dns.clone(), domain.clone());
            tasks.spawn(async move { (i, sts.policy(&dns, &domain, now, None).await) });
        }
        let mut lookups = tasks.join_all().await;
        lookups.sort_by_key(|(i, _)| *i);
        Ok::<_, String>(lookups)
    })?;
    let established = lookups
        .iter()
        .all(|(_, l)| !matches!(l, StsLookup::Failed(_)));
    let reports: Vec<String> = domains
        .iter()
        .zip(&lookups)
        .map(|(domain, (_, lookup))| render(domain, lookup))
        .collect();
    Ok((reports.join("\n"), established))
}

fn render(domain: &str, lookup: &StsLookup) -> String {
    let mut out = format!("domain: {domain}\n");
    match lookup {
        StsLookup::NoPolicy => out.push_str("policy: none\n"),
        StsLookup::Failed(reason) => {
            let _ = writeln!(out, "policy: failed\nreason: {}", reason.as_str());
        }
        StsLookup::Policy(policy, source) => {
            let _ = writeln!(
                out,
                "policy: {}\nid: {}\nmax_age: {}\nfetched_at: {}",
                policy.mode.as_str(),
                policy.id,
                policy.max_age,
                policy.fetched_at
            );
            for mx in &policy.mx {
                let _ = writeln!(out, "mx: {mx}");
            }
            let _ = writeln!(out, "source: {}", source.as_str());
            if let Source::CachedAfterFailure(reason) = source {
                let _ = writeln!(out, "reason: {}", reason.as_str());
            }
        }
    }
    out
}
