//! `osgate-controlplane` configuration. Errors name the file, the key and the reason.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use osgate_core::pin::SpkiPin;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    controlplane: RawControlPlane,
    #[serde(default)]
    admin: Vec<RawAdmin>,
    dns: Option<RawDns>,
}

/// `[dns]`: the validating resolver of the DANE cache (as the node's `[dns]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    servers: Vec<String>,
    trust_anchor: Option<PathBuf>,
    timeout_ms: Option<u64>,
    /// Refresh each TLSA set at least this often, sooner when its TTL says so.
    refresh_max_secs: Option<u64>,
    /// Fetch MTA-STS policies for assigned SMTP peers (port 25) too.
    mta_sts: Option<bool>,
    /// The policy hosts' HTTPS port: 443 (RFC 8461 §3.3); another for tests.
    mta_sts_port: Option<u16>,
    /// PEM roots for the policy hosts' PKIX check; default: the system's.
    ca_bundle: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlPlane {
    listen: String,
    certificate: PathBuf,
    private_key: PathBuf,
    metrics: Option<String>,
    /// `postgres://…`, or a path to the SQLite file.
    database: Option<String>,
    corroboration: Option<u32>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    confirm_nodes: Option<usize>,
    drain_timeout_ms: Option<u64>,
    /// How long a peer one node did TLS with stays TLS-mandatory for every node.
    ratchet_hours: Option<u64>,
    /// The key that replaces this one, published (`tlsa`) before it is used.
    next_certificate: Option<PathBuf>,
    next_private_key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    name: String,
    role: String,
    token_sha256: Option<String>,
    spki: Option<String>,
    /// An admin's client certificate file: its key is the credential.
    certificate: Option<PathBuf>,
}

/// `[dns]`: the DANE cache.
#[derive(Clone, Debug)]
pub struct DaneCacheConfig {
    pub resolver: osgate_dns::DnsConfig,
    pub refresh_max: Duration,
    /// MTA-STS policies for assigned SMTP peers; `None`: `mta_sts = false`.
    pub sts: Option<StsConfig>,
}

#[derive(Clone, Debug)]
pub struct StsConfig {
    pub port: u16,
    /// `None`: the system's roots.
    pub roots: Option<Vec<CertificateDer<'static>>>,
}

/// What an admin may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// How an admin proves who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// SHA-256 of the bearer token: the file never holds the token.
    TokenSha256([u8; 32]),
    /// The key of an mTLS client certificate.
    Key(SpkiPin),
}

#[derive(Clone, Debug)]
pub struct Admin {
    pub name: String,
    pub role: Role,
    pub credential: Credential,
}

#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub metrics: Option<SocketAddr>,
    pub database: String,
    /// Distinct nodes that must report a key before it spreads fleet-wide.
    pub corroboration: u32,
    /// Open connections to the listener, in all and from one source address.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// A policy change that lowers the level for peers of more nodes than this needs
    /// `--confirm`.
    pub confirm_nodes: usize,
    pub ratchet: Duration,
    /// The DANE cache's resolver; `None`: the control plane resolves nothing.
    pub dns: Option<DaneCacheConfig>,
    pub admins: Vec<Admin>,
    /// On SIGTERM/SIGINT: how long in-flight requests may take before the process exits.
    pub drain_timeout: Duration,
    /// The next key's certificate chain, for `tlsa` only.
    pub next_chain: Option<Vec<CertificateDer<'static>>>,
}

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.as_str() {
            "" => write!(f, "{}: {}", self.file.display(), self.reason),
            key => write!(f, "{}: {key}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

struct Loader<'a> {
    file: &'a Path,
    dir: PathBuf,
}

impl Loader<'_> {
    fn error(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }

    fn chain(&self, key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = self.resolve(path);
        let chain = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.error(key, format!("{}: {e}", path.display())))?;
        match chain.is_empty() {
            true => Err(self.error(key, format!("{}: no PEM certificate", path.display()))),
            false => Ok(chain),
        }
    }

    fn private_key(&self, key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
        let path = self.resolve(path);
        PrivateKeyDer::from_pem_file(&path)
            .map_err(|e| self.error(key, format!("{}: {e}", path.display())))
    }

    /// The optional next key: both files or neither, each readable.
    fn next_chain(
        &self,
        cp: &RawControlPlane,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, ConfigError> {
        match (&cp.next_certificate, &cp.next_private_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                self.private_key("controlplane.next_private_key", key)?;
                Ok(Some(self.chain("controlplane.next_certificate", cert)?))
            }
            (Some(_), None) => Err(self.error(
                "controlplane.next_private_key",
                "missing: next_certificate needs its private key",
            )),
            (None, Some(_)) => Err(self.error(
                "controlplane.next_certificate",
                "missing: next_private_key needs its certificate",
            )),
        }
    }

    fn dns(&self, d: RawDns) -> Result<DaneCacheConfig, ConfigError> {
        let servers = d
            .servers
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        self.error(
                            "dns.servers",
                            format!("`{s}` is not an IP address (with optional port)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (trust_anchor, anchor_zone) = match d.trust_anchor {
            None => (None, ".".to_owned()),
            Some(path) => {
                let path = self.resolve(&path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.error(
                        "dns.trust_anchor",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let zone = osgate_dns::anchor_owner(&text)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        self.error(
                            "dns.trust_anchor",
                            format!("{} holds no DNSKEY", path.display()),
                        )
                    })?;
                (Some(path), zone)
            }
        };
        let timeout_ms = d.timeout_ms.unwrap_or(2_000);
        if timeout_ms == 0 || timeout_ms > 60_000 {
            return Err(self.error("dns.timeout_ms", "must be between 1 and 60000"));
        }
        let refresh = d.refresh_max_secs.unwrap_or(3_600);
        if refresh == 0 {
            return Err(self.error("dns.refresh_max_secs", "must be at least 1"));
        }
        let timeout = Duration::from_millis(timeout_ms);
        let roots = match &d.ca_bundle {
            Some(path) => Some(self.chain("dns.ca_bundle", path)?),
            None => None,
        };
        let sts = d.mta_sts.unwrap_or(true).then_some(StsConfig {
            port: d.mta_sts_port.unwrap_or(443),
            roots,
        });
        Ok(DaneCacheConfig {
            sts,
            resolver: osgate_dns::DnsConfig {
                servers,
                trust_anchor,
                anchor_zone,
                timeout,
                budget: timeout.saturating_mul(3),
                explicit: true,
                cache_max_ttl: Some(Duration::from_secs(refresh)),
            },
            refresh_max: Duration::from_secs(refresh),
        })
    }

    fn addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse()
            .map_err(|_| self.error(key, format!("`{text}` is not an address:port")))
    }

    fn admin(&self, i: usize, raw: RawAdmin) -> Result<Admin, ConfigError> {
        let key = |field: &str| format!("admin[{i}].{field}");
        let role = match raw.role.as_str() {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            other => {
                return Err(self.error(key("role"), format!("`{other}` is not admin or viewer")));
            }
        };
        let credential = match (raw.token_sha256, raw.spki, raw.certificate) {
            (Some(hex), None, None) => {
                Credential::TokenSha256(parse_hex32(&hex).ok_or_else(|| {
                    self.error(
                        key("token_sha256"),
                        "expected 64 hex digits (osgate-controlplane hash-token)",
                    )
                })?)
            }
            (None, Some(pin), None) => Credential::Key(
                SpkiPin::parse(&pin).map_err(|e| self.error(key("spki"), e.to_string()))?,
            ),
            (None, None, Some(path)) => {
                let path = self.resolve(&path);
                let pin = osgate_proto::connect::pin_of_certificate_file(&path);
                Credential::Key(pin.ok_or_else(|| {
                    self.error(
                        key("certificate"),
                        format!("{}: no readable PEM certificate", path.display()),
                    )
                })?)
            }
            _ => {
                return Err(self.error(
                    format!("admin[{i}]"),
                    "give exactly one of token_sha256, spki and certificate",
                ));
            }
        };
        Ok(Admin {
            name: raw.name,
            role,
            credential,
        })
    }
}

/// Parses 64 hex digits.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl Config {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let dir = file.parent().map(Path::to_owned).unwrap_or_default();
        let loader = Loader { file, dir };
        let text = std::fs::read_to_string(file).map_err(|e| loader.error("", e.to_string()))?;
        let deserializer =
            toml::Deserializer::parse(&text).map_err(|e| loader.error("", e.to_string()))?;
        let raw: Raw = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| loader.error(e.path().to_string(), e.inner().message().to_owned()))?;
        let cp = raw.controlplane;
        let chain = loader.chain("controlplane.certificate", &cp.certificate)?;
        let key = loader.private_key("controlplane.private_key", &cp.private_key)?;
        let next_chain = loader.next_chain(&cp)?;
        let drain_timeout =
            Duration::from_millis(cp.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS));
        let database = match cp.database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
            Some(path) => sqlite_url(&loader.resolve(Path::new(&path))),
            None => sqlite_url(&loader.resolve(Path::new("controlplane.db"))),
        };
        let corroboration = cp.corroboration.unwrap_or(2);
        if corroboration == 0 {
            return Err(loader.error("controlplane.corroboration", "must be at least 1"));
        }
        let max_connections = cp.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_connections_per_source = cp
            .max_connections_per_source
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_SOURCE.min(max_connections));
        if max_connections == 0 {
            return Err(loader.error("controlplane.max_connections", "must be at least 1"));
        }
        if max_connections_per_source == 0 || max_connections_per_source > max_connections {
            return Err(loader.error(
                "controlplane.max_connections_per_source",
                format!("must be between 1 and max_connections ({max_connections})"),
            ));
        }
        let confirm_nodes = cp.confirm_nodes.unwrap_or(1);
        // The node's default ratchet: a fleet fact lasts as long as a node's own would.
        let ratchet = Duration::from_secs(cp.ratchet_hours.unwrap_or(720).saturating_mul(3600));
        let admins = raw
            .admin
            .into_iter()
            .enumerate()
            .map(|(i, a)| loader.admin(i, a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            listen: loader.addr("controlplane.listen", &cp.listen)?,
            chain,
            key,
            metrics: cp
                .metrics
                .map(|m| loader.addr("controlplane.metrics", &m))
                .transpose()?,
            database,
            corroboration,
            max_connections,
            max_connections_per_source,
            confirm_nodes,
            ratchet,
            dns: raw.dns.map(|d| loader.dns(d)).transpose()?,
            admins,
            drain_timeout,
            next_chain,
        })
    }
}

/// In-flight admin requests take milliseconds; this leaves room under a supervisor's
/// stop timeout (systemd 90 s, Kubernetes 30 s).
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Enough for thousands of nodes, each with one long-lived connection.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Nodes behind one NAT address share this.
const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 512;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

#[cfg(test)]
mod tests;
