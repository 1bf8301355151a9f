//! MTA-STS (RFC 8461) for outbound SMTP: the `_mta-sts` TXT lookup, the HTTPS policy fetch,
//! and the policy cache in memory and under `<state_dir>/mta-sts/`. What to make of the
//! answers is decided in [`osgate_core::sts`].
//!
//! §3.3: the policy host's certificate must be valid for `mta-sts.<domain>` (RFC 6125) and
//! chain to a root the sender trusts — here `[node] ca_bundle`, or the system's roots;
//! "HTTP 3xx redirects MUST NOT be followed, and HTTP caching ... MUST NOT be used"; and
//! "A suggested timeout is one minute, and a suggested maximum policy size is 64 kilobytes".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osgate_core::crypto::{ChainVerifier, CryptoPolicy};
use osgate_core::outcome::Reason;
use osgate_core::sts::{self, Policy, PolicyBody, Step, StsLookup, Txt, http};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Dns;

/// The policy host's port (§3.3: "https://mta-sts.<domain>/.well-known/mta-sts.txt").
pub const HTTPS_PORT: u16 = 443;
/// The whole fetch: addresses, connect, handshake, request and response.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// One address of the policy host; the next is tried after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// §3.3: "In the case that the HTTPS GET fails, implementers SHOULD limit further attempts to
/// a period of five minutes or longer per version ID" — and sessions for the domain do not
/// each wait out a dead policy host meanwhile.
const RETRY_AFTER_FAILURE: u64 = 300;
/// Policy domains kept in memory; past this, the idle ones are dropped (their policies stay
/// on disk and are read again on next use).
const DOMAINS_IN_MEMORY: usize = 10_000;

/// The node's MTA-STS resolver; shared by every worker (one lookup per domain at a time).
#[derive(Debug)]
pub struct Sts {
    client: Arc<rustls::ClientConfig>,
    chain: ChainVerifier,
    /// `<state_dir>/mta-sts`: one file per policy domain; `None`: kept in memory only.
    dir: Option<PathBuf>,
    port: u16,
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

/// What is known about one policy domain.
#[derive(Debug, Default)]
struct Entry {
    /// The disk cache was read into `policy`.
    loaded: bool,
    policy: Option<Policy>,
    /// The last failed fetch: TXT id, reason, and when it may be tried again.
    failure: Option<(String, Reason, u64)>,
}

/// A fetch that failed: the RFC 8460 result type and what happened, for the log.
type FetchError = (Reason, String);

impl Sts {
    /// PKIX against `chain`'s roots (`[node] ca_bundle`, or the system's); the policies are
    /// kept under `state_dir` when given.
    pub fn new(
        crypto: &CryptoPolicy,
        chain: ChainVerifier,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        // No resumption: every fetch sees, and checks, the policy host's chain.
        let client = crypto
            .clone()
            .with_resumption(false)
            .unauthenticated_client()
            .map_err(|e| format!("MTA-STS client: {e}"))?;
        Ok(Self {
            client,
            chain,
            dir: state_dir.map(|d| d.join("mta-sts")),
            port: HTTPS_PORT,
            domains: Mutex::default(),
        })
    }

    /// The policy hosts' port instead of 443 (tests).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The MTA-STS policy for mail to `domain` at `now` (Unix seconds). `fleet`: the policy
    /// the control plane fetched for the domain, taken as the cached policy when this
    /// resolver holds none (the fleet's cache: a first contact starts from what the fleet
    /// knows, and a fetch blocked here falls back to it, §10.2).
    pub async fn policy(
        &self,
        dns: &Dns,
        domain: &str,
        now: u64,
        fleet: Option<&Policy>,
    ) -> StsLookup {
        let Some(domain) = policy_domain(domain) else {
            return StsLookup::NoPolicy;
        };
        let entry = self.entry(&domain);
        let mut entry = entry.lock().await;
        if !entry.loaded {
            entry.policy = self.load(&domain);
            entry.loaded = true;
        }
        if entry.policy.as_ref().is_none_or(|p| !p.is_fresh(now)) {
            if let Some(fleet) = fleet.filter(|p| p.is_fresh(now)) {
                entry.policy = Some(fleet.clone());
            }
        }
        let txt = match dns.txt(&format!("_mta-sts.{domain}")).await {
            Some(records) => sts::parse_txt(&records),
            None => Txt::LookupFailed,
        };
        let (id, fallback) = match sts::step(entry.policy.as_ref(), &txt, now) {
            Step::Done(lookup) => return lookup,
            Step::Fetch { id, fallback } => (id, fallback),
        };
        let recent = entry.failure.as_ref();
        let recent = recent.filter(|(failed, _, until)| *failed == id && now < *until);
        let fetched = match recent {
            Some((_, reason, _)) => Err(*reason),
            None => match self.fetch(dns, &domain).await {
                Ok(body) => Ok(body),
                Err((reason, detail)) => {
                    tracing::warn!(target: "osgate::sts", domain, id, reason = reason.as_str(), detail, "MTA-STS policy fetch failed");
                    entry.failure = Some((id.clone(), reason, now + RETRY_AFTER_FAILURE));
                    Err(reason)
                }
            },
        };
        let lookup = sts::after_fetch(id, fallback, fetched, now);
        if let StsLookup::Policy(policy, sts::Source::Fresh) = &lookup {
            entry.failure = None;
            entry.policy = Some(policy.clone());
            self.save(&domain, policy);
        }
        lookup
    }

    fn entry(&self, domain: &str) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        if domains.len() >= DOMAINS_IN_MEMORY && !domains.contains_key(domain) {
            domains.retain(|_, entry| Arc::strong_count(entry) > 1);
        }
        domains.entry(domain.to_owned()).or_default().clone()
    }

    fn load(&self, domain: &str) -> Option<Policy> {
        let text = std::fs::read_to_string(self.dir.as_ref()?.join(domain)).ok()?;
        let policy = Policy::from_cache(&text);
        if policy.is_none() {
            tracing::warn!(target: "osgate::sts", domain, "unreadable MTA-STS cache file ignored");
        }
        policy
    }

    fn save(&self, domain: &str, policy: &Policy) {
        let Some(dir) = &self.dir else { return };
        let file = dir.join(domain);
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| crate::durable::write_atomic(&file, policy.to_cache().as_bytes()));
        if let Err(e) = written {
            tracing::warn!(target: "osgate::sts", domain, error = %e, dir = %dir.display(), "cannot persist the MTA-STS policy (kept in memory)");
        } else if let Err(e) = self.match_owner(dir, &file) {
            tracing::debug!(target: "osgate::sts", domain, error = %e, "cache file keeps its owner");
        }
    }

    /// Gives the folder and `file` the state folder's owner, so that `osgate mta-sts` run as
    /// root leaves a cache the node's own user can still update.
    fn match_owner(&self, dir: &std::path::Path, file: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Some(state) = dir.parent() else {
            return Ok(());
        };
        let owner = std::fs::metadata(state)?;
        for path in [dir, file] {
            let meta = std::fs::metadata(path)?;
            if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
                std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))?;
            }
        }
        Ok(())
    }

    /// GET `https://mta-sts.<domain>/.well-known/mta-sts.txt`, within [`FETCH_TIMEOUT`].
    async fn fetch(&self, dns: &Dns, domain: &str) -> Result<PolicyBody, FetchError> {
        let host = format!("mta-sts.{domain}");
        let fetch = async {
            let addresses = dns
                .addresses(&host)
                .await
                .map_err(|_| fetch_error(format!("{host}: no address")))?;
            self.get(&host, &addresses.ips).await
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fetch_error(format!("{host}: timed out")))??;
        sts::parse_policy(&body).map_err(|e| (Reason::StsPolicyInvalid, e.to_string()))
    }

    async fn get(&self, host: &str, ips: &[IpAddr]) -> Result<Vec<u8>, FetchError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| fetch_error(format!("{host}: not a DNS name")))?;
        let tcp = self.connect(host, ips).await?;
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| fetch_error(format!("{host}: TLS handshake: {e}")))?;
        let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
        if let Err(reason) = self.chain.check(chain, &name, UnixTime::now()) {
            let detail = format!("{host}: PKIX: {}", reason.as_str());
            return Err((Reason::StsWebpkiInvalid, detail));
        }
        let request = http::request(host);
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| fetch_error(format!("{host}: {e}")))?;
        let response = read_response(&mut tls)
            .await
            .map_err(|e| fetch_error(format!("{host}: {e}")))?;
        http::parse_response(&response).map_err(|e| (e.reason(), format!("{host}: {e}")))
    }

    async fn connect(
        &self,
        host: &str,
        ips: &[IpAddr],
    ) -> Result<tokio::net::TcpStream, FetchError> {
        let mut last = format!("{host}: no address");
        for ip in ips {
            let connect = tokio::net::TcpStream::connect(SocketAddr::new(*ip, self.port));
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(e)) => last = format!("{host} ({ip}): {e}"),
                Err(_) => last = format!("{host} ({ip}): connect timed out"),
            }
        }
        Err(fetch_error(last))
    }
}

/// Everything the server sends until it closes, up to one byte past the limit (which the
/// parser rejects). A close without close_notify ends the response too: the body is then
/// checked against its Content-Length or chunked framing, or parses as a policy or not.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut limited = stream.take(http::RESPONSE_LIMIT as u64 + 1);
    match limited.read_to_end(&mut out).await {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(out),
        Err(e) => Err(e),
    }
}

fn fetch_error(detail: String) -> FetchError {
    (Reason::StsPolicyFetchError, detail)
}

/// The policy domain, lower case without the final dot; `None` for what is not a DNS name
/// (it also names the cache file, so it must never be a path).
fn policy_domain(domain: &str) -> Option<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::policy_domain;

    #[test]
    fn only_dns_names_become_policy_domains() {
        assert_eq!(
            policy_domain("Example.NET.").as_deref(),
            Some("example.net")
        );
        for bad in ["", ".", "a/b", "..", "a..b", "../etc", "a b", "a.b/"] {
            assert_eq!(policy_domain(bad), None, "{bad:?}");
        }
    }
}
