//! The node configuration: TOML parsed into validated types at the boundary.
//!
//! Unknown keys, bad addresses and unreadable certificate or key files are errors naming the
//! file, the key and the reason. Relative paths are relative to the config file's folder.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use osgate_core::crypto::KxGroup;
use osgate_core::outcome::Method;
use osgate_core::pin::SpkiPin;
use osgate_core::policy::{Level, PolicySet, Rule, RuleSpec};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

mod raw;

/// A configuration error: which file, which key, and why.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Which I/O driver runs the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
}

/// A host (name or address) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(name) => write!(f, "{name}:{}", self.port),
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

impl HostPort {
    fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not host:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        let name = rustls_pki_types::DnsName::try_from(host)
            .map_err(|_| format!("`{host}` is neither an IP address nor a DNS name"))?;
        Ok(Self {
            host: Host::Name(name.as_ref().to_owned()),
            port,
        })
    }
}

/// Per-connection deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long an inbound listener waits for a client's first bytes.
    pub peek: Duration,
    pub connect: Duration,
    pub handshake: Duration,
    /// A relayed connection with no bytes moving either way for this long is closed.
    pub idle: Duration,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub io: IoChoice,
    /// Worker threads; each runs one event loop with its own listeners.
    pub workers: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub timeouts: Timeouts,
    /// Key-exchange groups offered and accepted, most preferred first.
    pub tls_groups: Vec<KxGroup>,
    /// PEM roots for PKIX checks of outbound peers; `None` means the system trust store.
    pub ca_bundle: Option<Vec<CertificateDer<'static>>>,
    /// TLS session resumption (client cache, server tickets).
    pub tls_resumption: bool,
    /// Open connections allowed, node-wide and per source address.
    pub caps: osgate_core::caps::Limits,
    /// The pin store, the last-known-good and the first-start marker; the config folder may
    /// be read-only.
    pub state_dir: PathBuf,
    /// How long a stopping node lets live connections finish before it cuts them.
    pub drain_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Outbound {
    pub listen: SocketAddr,
    /// The next hop; with `smtp.by_mx`, the mail domain whose MX hosts are the next hops.
    pub peer: HostPort,
    /// The listener's default when no `[[policy]]` rule matches the peer.
    pub level: Level,
    pub allow_cleartext_fallback: bool,
    /// `protocol = "smtp"`.
    pub smtp: Option<OutboundSmtp>,
}

/// RFC 5321 §4.5.3.2 gives 5 minutes for the greeting and for most replies; osgate waits as
/// long as a conforming MTA would, unless told otherwise.
const SMTP_TIMEOUT_MS: u64 = 300_000;

/// How long an SMTP dialogue waits for the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmtpTimeouts {
    /// For the server's greeting.
    pub greeting: Duration,
    /// For each command (from a client) or reply (from a server) before the relay.
    pub command: Duration,
}

/// An `[[outbound]]` listener with `protocol = "smtp"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundSmtp {
    pub timeouts: SmtpTimeouts,
    /// The name osgate EHLOs with.
    pub helo: String,
    /// `peer = "mx:domain"`: the next hops are the domain's MX hosts (RFC 5321 §5.1).
    pub by_mx: bool,
    /// `[smtp] mta_sts`, for `mx:` peers.
    pub mta_sts: bool,
}

/// An `[[inbound]]` listener with `protocol = "smtp"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundSmtp {
    pub starttls: osgate_core::smtp::InboundStarttls,
    pub timeouts: SmtpTimeouts,
}

/// `[smtp]`: what every SMTP listener shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    pub helo_name: String,
    /// MTA-STS (RFC 8461) for `mx:` destinations.
    pub mta_sts: bool,
    /// The policy hosts' HTTPS port: 443 (RFC 8461 §3.3); another for tests.
    pub mta_sts_port: u16,
}

pub use osgate_dns::DnsConfig;

/// `[tofu]`: pins learned on first use, and the ratchet, in one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TofuConfig {
    pub store: PathBuf,
    pub enforce: bool,
    pub ratchet: Duration,
    /// The store is the default one (no `store` key): created on first start.
    pub default_store: bool,
}

/// The pin store's file in the state folder, when `[tofu]` names none.
pub const DEFAULT_PIN_STORE: &str = "pins";
/// The last-known-good control-plane snapshot's file in the state folder.
const DEFAULT_LAST_KNOWN_GOOD: &str = "controlplane.lkg";
/// The state folder of an installed node, when neither the config nor systemd names one.
const DEFAULT_STATE_DIR: &str = "/var/lib/osgate";
/// The longest ratchet: past this a number is a typo, not a policy (and `* 3600` would wrap).
const MAX_RATCHET_HOURS: u64 = 87_600;

/// The certificate chain and key an inbound listener presents.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub backend: HostPort,
    pub identity: Identity,
    /// The key that replaces `identity` next: published in DNS before it is used.
    pub next_identity: Option<Identity>,
    pub cleartext_allowed: bool,
    /// Who the listener serves; the control plane's inbound policy for it replaces this.
    pub clients: osgate_core::clients::Clients,
    /// `protocol = "smtp"`.
    pub smtp: Option<InboundSmtp>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub outbound: Vec<Outbound>,
    pub inbound: Vec<Inbound>,
    pub policy: PolicySet,
    /// `None`: TOFU and the ratchet are off.
    pub tofu: Option<TofuConfig>,
    /// `None`: DANE is off.
    pub dns: Option<DnsConfig>,
    /// `None`: no control plane; the node runs on its own config.
    pub controlplane: Option<ControlPlaneConfig>,
    /// The certificate, key and anchor files read: a change to one reloads the node.
    pub files: Vec<PathBuf>,
    pub smtp: SmtpConfig,
}

/// `[controlplane]`: where the fleet's policy and capability caches come from.
#[derive(Debug)]
pub struct ControlPlaneConfig {
    /// `host:port`.
    pub address: String,
    /// The control plane's key.
    pub server_pin: SpkiPin,
    /// The node key: its identity to the control plane.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The last-known-good snapshot.
    pub state: PathBuf,
    /// A one-time token to enrol the node key with, if it is not registered yet.
    pub enroll_token: Option<String>,
    /// `host:port` of this node's inbound listeners, as other nodes reach them.
    pub advertise: Vec<String>,
    /// PING interval on the watch stream (and how long an answer may take).
    pub keepalive: Duration,
}

impl PartialEq for ControlPlaneConfig {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
            && self.server_pin == other.server_pin
            && self.chain == other.chain
            && self.key.secret_der() == other.key.secret_der()
            && self.state == other.state
            && self.enroll_token == other.enroll_token
            && self.advertise == other.advertise
            && self.keepalive == other.keepalive
    }
}

impl Clone for ControlPlaneConfig {
    fn clone(&self) -> Self {
        Self {
            address: self.address.clone(),
            server_pin: self.server_pin,
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            state: self.state.clone(),
            enroll_token: self.enroll_token.clone(),
            advertise: self.advertise.clone(),
            keepalive: self.keepalive,
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "-".into(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (which anchors relative paths and errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = raw::File::parse(text, path)?;
        let validator = Validator {
            path,
            files: std::cell::RefCell::default(),
        };
        let mut config = validator.config(file)?;
        config.files = validator.files.take();
        Ok(config)
    }
}

struct Validator<'a> {
    path: &'a Path,
    files: std::cell::RefCell<Vec<PathBuf>>,
}

/// `$STATE_DIRECTORY` (the first, when systemd lists several), else the installed default.
/// `domain[:port]` of an `mx:` peer: port 25 unless given (RFC 5321 §4.5.4.2 "the SMTP
/// server port"); a port other than 25 also names the TLSA records looked up
/// (`_PORT._tcp.<mx>`), which is what lets a test run on a port it picks.
fn mx_destination(text: &str) -> Result<HostPort, String> {
    let (domain, port) = match text.rsplit_once(':') {
        Some((domain, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port number"))?;
            (domain, port)
        }
        None => (text, 25),
    };
    let name = rustls_pki_types::DnsName::try_from(domain)
        .map_err(|_| format!("`mx:{domain}` needs a mail domain name"))?;
    Ok(HostPort {
        host: Host::Name(name.as_ref().trim_end_matches('.').to_ascii_lowercase()),
        port,
    })
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_string_lossy().split(':').next()?.to_owned();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

impl Validator<'_> {
    fn error(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn config(&self, file: raw::File) -> Result<Config, ConfigError> {
        if file.outbound.is_empty() && file.inbound.is_empty() {
            return Err(self.error("-", "no [[outbound]] or [[inbound]] listener is configured"));
        }
        let node = self.node(file.node)?;
        let smtp = self.smtp(file.smtp)?;
        let outbound = file
            .outbound
            .into_iter()
            .enumerate()
            .map(|(i, o)| self.outbound(i, o, &smtp))
            .collect::<Result<Vec<_>, _>>()?;
        let inbound = file
            .inbound
            .into_iter()
            .enumerate()
            .map(|(i, o)| self.inbound(i, o))
            .collect::<Result<Vec<_>, _>>()?;
        let policy = file
            .policy
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.rule(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((i, j)) = osgate_core::policy::ambiguous(&policy) {
            let levels = (policy[i].level.as_str(), policy[j].level.as_str());
            return Err(self.error(
                format!("policy[{j}]"),
                format!(
                    "matches the same peers as policy[{i}] with another level ({} and {}); keep one",
                    levels.0, levels.1
                ),
            ));
        }
        // TOFU and the ratchet are on unless `[tofu]` turns both off.
        let tofu = file.tofu.unwrap_or_default();
        if tofu.ratchet_hours > MAX_RATCHET_HOURS {
            return Err(self.error(
                "tofu.ratchet_hours",
                format!(
                    "{} is more than {MAX_RATCHET_HOURS} (ten years)",
                    tofu.ratchet_hours
                ),
            ));
        }
        let tofu =
            (tofu.mode == raw::TofuMode::Enforce || tofu.ratchet_hours > 0).then(|| TofuConfig {
                store: match tofu.store.as_deref() {
                    Some(store) => self.resolve(store),
                    None => node.state_dir.join(DEFAULT_PIN_STORE),
                },
                enforce: tofu.mode == raw::TofuMode::Enforce,
                ratchet: Duration::from_secs(tofu.ratchet_hours.saturating_mul(3600)),
                default_store: tofu.store.is_none(),
            });
        let dns = match file.dns {
            None => Some(DnsConfig::implicit()),
            Some(d) if !d.dane => None,
            Some(d) => Some(self.dns(d)?),
        };
        let controlplane = file
            .controlplane
            .map(|c| self.controlplane(c, &inbound, &node.state_dir))
            .transpose()?;
        let by_mx = outbound
            .iter()
            .position(|o| o.smtp.as_ref().is_some_and(|s| s.by_mx));
        if let (Some(i), None) = (by_mx, &dns) {
            return Err(self.error(
                format!("outbound[{i}].peer"),
                "`mx:` peers need [dns]'s resolver, which `dane = false` turns off",
            ));
        }
        if controlplane.is_none() {
            let fleet = policy
                .iter()
                .position(|r| r.methods.contains(&Method::Fleet));
            if let Some(i) = fleet {
                return Err(self.error(
                    format!("policy[{i}].methods"),
                    "method `fleet` needs [controlplane]: fleet node keys come from the control plane",
                ));
            }
        }
        let config = Config {
            node,
            outbound,
            inbound,
            policy: PolicySet::new(policy),
            tofu,
            dns,
            controlplane,
            files: Vec::new(),
            smtp,
        };
        self.distinct_listeners(&config)?;
        Ok(config)
    }

    fn controlplane(
        &self,
        c: raw::ControlPlane,
        inbound: &[Inbound],
        state_dir: &Path,
    ) -> Result<ControlPlaneConfig, ConfigError> {
        let server_pin = match (&c.server_pin, &c.server_certificate) {
            (Some(pin), None) => SpkiPin::parse(pin)
                .map_err(|e| self.error("controlplane.server_pin", e.to_string()))?,
            (None, Some(path)) => {
                let key = "controlplane.server_certificate";
                let chain = self.certificates(key, path)?;
                chain
                    .first()
                    .and_then(SpkiPin::of_certificate)
                    .ok_or_else(|| self.error(key, "the certificate does not parse"))?
            }
            _ => {
                return Err(self.error(
                    "controlplane",
                    "give exactly one of server_pin and server_certificate (the control plane's key)",
                ));
            }
        };
        let chain = self.certificates("controlplane.certificate", &c.certificate)?;
        let key = self.private_key("controlplane.private_key", &c.private_key)?;
        let advertise = match c.advertise.is_empty() {
            true => inbound.iter().map(|i| i.listen.to_string()).collect(),
            false => c.advertise,
        };
        Ok(ControlPlaneConfig {
            address: c.address,
            server_pin,
            chain,
            key,
            state: match &c.state {
                Some(state) => self.resolve(state),
                None => state_dir.join(DEFAULT_LAST_KNOWN_GOOD),
            },
            enroll_token: c.enroll_token,
            advertise,
            keepalive: self.duration("controlplane.keepalive_ms", c.keepalive_ms)?,
        })
    }

    fn node(&self, node: raw::Node) -> Result<NodeConfig, ConfigError> {
        let metrics_listen = node
            .metrics_listen
            .map(|text| self.socket_addr("node.metrics_listen", &text))
            .transpose()?;
        let tls_groups = match node.tls_groups {
            None => KxGroup::DEFAULT.to_vec(),
            Some(names) => self.groups(&names)?,
        };
        let ca_bundle = node
            .ca_bundle
            .map(|p| self.certificates("node.ca_bundle", &p))
            .transpose()?;
        let timeouts = Timeouts {
            peek: self.duration("node.peek_timeout_ms", node.peek_timeout_ms)?,
            connect: self.duration("node.connect_timeout_ms", node.connect_timeout_ms)?,
            handshake: self.duration("node.handshake_timeout_ms", node.handshake_timeout_ms)?,
            idle: self.duration("node.idle_timeout_ms", node.idle_timeout_ms)?,
        };
        Ok(NodeConfig {
            io: node.io,
            workers: node.workers,
            metrics_listen,
            timeouts,
            tls_groups,
            ca_bundle,
            tls_resumption: node.tls_resumption,
            caps: self.caps(node.max_connections, node.max_connections_per_source)?,
            state_dir: match &node.state_dir {
                Some(dir) => self.resolve(dir),
                None => default_state_dir(),
            },
            drain_timeout: self.duration("node.drain_timeout_ms", node.drain_timeout_ms)?,
        })
    }

    fn caps(
        &self,
        total: usize,
        per_source: usize,
    ) -> Result<osgate_core::caps::Limits, ConfigError> {
        if total == 0 {
            return Err(self.error("node.max_connections", "must be at least 1"));
        }
        if per_source == 0 || per_source > total {
            return Err(self.error(
                "node.max_connections_per_source",
                format!("must be between 1 and node.max_connections ({total})"),
            ));
        }
        Ok(osgate_core::caps::Limits { total, per_source })
    }

    fn smtp(&self, smtp: Option<raw::Smtp>) -> Result<SmtpConfig, ConfigError> {
        let smtp = smtp.unwrap_or(raw::Smtp {
            helo_name: None,
            mta_sts: true,
            mta_sts_port: None,
        });
        let helo_name = match smtp.helo_name {
            Some(name) => name,
            None => osgate_proto::host_name(),
        };
        if rustls_pki_types::DnsName::try_from(helo_name.as_str()).is_err() {
            return Err(self.error(
                "smtp.helo_name",
                format!("`{helo_name}` is not a domain name (RFC 5321 §4.1.1.1: EHLO takes the client's domain)"),
            ));
        }
        Ok(SmtpConfig {
            helo_name,
            mta_sts: smtp.mta_sts,
            mta_sts_port: smtp.mta_sts_port.unwrap_or(443),
        })
    }

    fn smtp_timeouts(
        &self,
        key: &dyn Fn(&str) -> String,
        greeting: Option<u64>,
        command: Option<u64>,
    ) -> Result<SmtpTimeouts, ConfigError> {
        Ok(SmtpTimeouts {
            greeting: self.duration(
                &key("greeting_timeout_ms"),
                greeting.unwrap_or(SMTP_TIMEOUT_MS),
            )?,
            command: self.duration(
                &key("command_timeout_ms"),
                command.unwrap_or(SMTP_TIMEOUT_MS),
            )?,
        })
    }

    /// Keys that only an SMTP listener has, given to a TCP one.
    fn smtp_only(
        &self,
        key: &dyn Fn(&str) -> String,
        given: &[(&str, bool)],
    ) -> Result<(), ConfigError> {
        match given.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(self.error(key(name), "only with protocol = \"smtp\"")),
            None => Ok(()),
        }
    }

    fn outbound_smtp(
        &self,
        key: &dyn Fn(&str) -> String,
        o: &raw::Outbound,
        smtp: &SmtpConfig,
    ) -> Result<(Option<OutboundSmtp>, HostPort), ConfigError> {
        let by_mx = o.peer.strip_prefix("mx:");
        if o.protocol == raw::Protocol::Tcp {
            let given = [
                ("helo_name", o.helo_name.is_some()),
                ("greeting_timeout_ms", o.greeting_timeout_ms.is_some()),
                ("command_timeout_ms", o.command_timeout_ms.is_some()),
                ("peer", by_mx.is_some()),
            ];
            self.smtp_only(key, &given)?;
            let peer = HostPort::parse(&o.peer).map_err(|r| self.error(key("peer"), r))?;
            return Ok((None, peer));
        }
        let peer = match by_mx {
            Some(domain) => mx_destination(domain),
            None => HostPort::parse(&o.peer),
        }
        .map_err(|r| self.error(key("peer"), r))?;
        let helo = o
            .helo_name
            .clone()
            .unwrap_or_else(|| smtp.helo_name.clone());
        if rustls_pki_types::DnsName::try_from(helo.as_str()).is_err() {
            return Err(self.error(key("helo_name"), format!("`{helo}` is not a domain name")));
        }
        let outbound = OutboundSmtp {
            timeouts: self.smtp_timeouts(key, o.greeting_timeout_ms, o.command_timeout_ms)?,
            helo,
            by_mx: by_mx.is_some(),
            mta_sts: smtp.mta_sts && by_mx.is_some(),
        };
        Ok((Some(outbound), peer))
    }

    fn outbound(
        &self,
        i: usize,
        o: raw::Outbound,
        smtp: &SmtpConfig,
    ) -> Result<Outbound, ConfigError> {
        let key = |field: &str| format!("outbound[{i}].{field}");
        let level = match Level::from_name(&o.policy) {
            Some(level @ (Level::Opportunistic | Level::Encrypt | Level::Cleartext)) => level,
            _ => {
                return Err(self.error(
                    key("policy"),
                    format!(
                        "unknown policy `{}`; expected opportunistic, encrypt or cleartext (finer rules go in [[policy]])",
                        o.policy
                    ),
                ));
            }
        };
        if o.allow_cleartext_fallback.is_some() && level != Level::Opportunistic {
            return Err(self.error(
                key("allow_cleartext_fallback"),
                "only meaningful with policy = \"opportunistic\"",
            ));
        }
        let (smtp, peer) = self.outbound_smtp(&key, &o, smtp)?;
        Ok(Outbound {
            listen: self.socket_addr(&key("listen"), &o.listen)?,
            peer,
            level,
            allow_cleartext_fallback: o.allow_cleartext_fallback.unwrap_or(true),
            smtp,
        })
    }

    fn rule(&self, i: usize, p: raw::Policy) -> Result<Rule, ConfigError> {
        let spec = RuleSpec {
            selector: &p.selector,
            level: &p.level,
            methods: &p.methods,
            pins: &p.pins,
            min_tls: p.min_tls.as_deref(),
            allow_cleartext_fallback: p.allow_cleartext_fallback,
            report_only: p.report_only,
        };
        spec.build(format!("policy[{i}]")).map_err(|e| {
            let key = match e.field {
                "" => format!("policy[{i}]"),
                field => format!("policy[{i}].{field}"),
            };
            self.error(key, e.reason)
        })
    }

    fn inbound(&self, i: usize, o: raw::Inbound) -> Result<Inbound, ConfigError> {
        let key = |field: &str| format!("inbound[{i}].{field}");
        let smtp = self.inbound_smtp(&key, &o)?;
        let identity = Identity {
            chain: self.certificates(&key("certificate"), &o.certificate)?,
            key: self.private_key(&key("private_key"), &o.private_key)?,
        };
        let next_identity = match (&o.next_certificate, &o.next_private_key) {
            (None, None) => None,
            (Some(cert), Some(private_key)) => Some(Identity {
                chain: self.certificates(&key("next_certificate"), cert)?,
                key: self.private_key(&key("next_private_key"), private_key)?,
            }),
            (Some(_), None) => {
                return Err(self.error(key("next_private_key"), "next_certificate needs its key"));
            }
            (None, Some(_)) => {
                return Err(self.error(
                    key("next_certificate"),
                    "next_private_key needs its certificate",
                ));
            }
        };
        let cleartext_allowed = match smtp {
            Some(smtp) => smtp.starttls == osgate_core::smtp::InboundStarttls::Offer,
            None => matches!(o.cleartext, Some(raw::Cleartext::Allow)),
        };
        let clients = match (&o.clients, smtp.is_some()) {
            (None, _) => osgate_core::clients::Clients::Any,
            (Some(_), true) => {
                return Err(self.error(
                    key("clients"),
                    "an SMTP listener serves every client (mail servers seldom present certificates); clients applies to TCP listeners",
                ));
            }
            (Some(raw::OneOrMany::One(one)), false) => {
                self.clients(&key, std::slice::from_ref(one))?
            }
            (Some(raw::OneOrMany::Many(many)), false) => self.clients(&key, many)?,
        };
        Ok(Inbound {
            listen: self.socket_addr(&key("listen"), &o.listen)?,
            backend: HostPort::parse(&o.backend).map_err(|r| self.error(key("backend"), r))?,
            identity,
            next_identity,
            cleartext_allowed,
            clients,
            smtp,
        })
    }

    fn clients(
        &self,
        key: &dyn Fn(&str) -> String,
        values: &[String],
    ) -> Result<osgate_core::clients::Clients, ConfigError> {
        osgate_core::clients::Clients::parse(values)
            .map_err(|reason| self.error(key("clients"), reason))
    }

    fn inbound_smtp(
        &self,
        key: &dyn Fn(&str) -> String,
        o: &raw::Inbound,
    ) -> Result<Option<InboundSmtp>, ConfigError> {
        if o.protocol == raw::Protocol::Tcp {
            let given = [
                ("starttls", o.starttls.is_some()),
                ("greeting_timeout_ms", o.greeting_timeout_ms.is_some()),
                ("command_timeout_ms", o.command_timeout_ms.is_some()),
            ];
            self.smtp_only(key, &given)?;
            return Ok(None);
        }
        if o.cleartext.is_some() {
            return Err(self.error(
                key("cleartext"),
                "an SMTP listener always starts in cleartext; say starttls = \"offer\" or \"require\"",
            ));
        }
        Ok(Some(InboundSmtp {
            starttls: match o.starttls {
                Some(raw::Starttls::Require) => osgate_core::smtp::InboundStarttls::Require,
                Some(raw::Starttls::Offer) | None => osgate_core::smtp::InboundStarttls::Offer,
            },
            timeouts: self.smtp_timeouts(key, o.greeting_timeout_ms, o.command_timeout_ms)?,
        }))
    }

    fn dns(&self, d: raw::Dns) -> Result<DnsConfig, ConfigError> {
        let servers = d
            .servers
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        self.error(
                            "dns.servers",
                            format!("`{s}` is not an IP address (with optional port)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (trust_anchor, anchor_zone) = match &d.trust_anchor {
            None => (None, ".".to_owned()),
            Some(path) => {
                let path = self.resolve(path);
                let zone = self.anchor_zone(&path)?;
                (Some(path), zone)
            }
        };
        Ok(DnsConfig {
            servers,
            trust_anchor,
            anchor_zone,
            timeout: self.duration("dns.timeout_ms", d.timeout_ms)?,
            budget: self.dns_budget(&d)?,
            explicit: true,
            cache_max_ttl: None,
        })
    }

    /// The owner of the first DNSKEY in a trust anchor file.
    fn anchor_zone(&self, path: &Path) -> Result<String, ConfigError> {
        self.files.borrow_mut().push(path.to_owned());
        let text = std::fs::read_to_string(path).map_err(|e| {
            self.error(
                "dns.trust_anchor",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        osgate_dns::anchor_owner(&text)
            .map(str::to_owned)
            .ok_or_else(|| {
                self.error(
                    "dns.trust_anchor",
                    format!("{} holds no DNSKEY", path.display()),
                )
            })
    }

    fn socket_addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse()
            .map_err(|_| self.error(key, format!("`{text}` is not an IP address with a port")))
    }

    /// `[dns] budget_ms`; by default one timeout for the addresses and each of two TLSA bases.
    fn dns_budget(&self, d: &raw::Dns) -> Result<Duration, ConfigError> {
        const MAX_MS: u64 = 600_000;
        let ms = match d.budget_ms {
            Some(ms) if ms > MAX_MS => {
                return Err(self.error("dns.budget_ms", "must be at most 600000 (10 minutes)"));
            }
            Some(ms) => ms,
            None => d.timeout_ms.saturating_mul(3).min(MAX_MS),
        };
        self.duration("dns.budget_ms", ms)
    }

    fn duration(&self, key: &str, ms: u64) -> Result<Duration, ConfigError> {
        if ms == 0 {
            return Err(self.error(key, "must be at least 1 millisecond"));
        }
        Ok(Duration::from_millis(ms))
    }

    fn groups(&self, names: &[String]) -> Result<Vec<KxGroup>, ConfigError> {
        if names.is_empty() {
            return Err(self.error("node.tls_groups", "at least one group is needed"));
        }
        names
            .iter()
            .map(|name| {
                KxGroup::from_name(name).ok_or_else(|| {
                    self.error(
                        "node.tls_groups",
                        format!(
                            "unknown group `{name}`; expected x25519mlkem768, x25519, secp256r1 or secp384r1"
                        ),
                    )
                })
            })
            .collect()
    }

    fn private_key(&self, key: &str, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
        let path = self.watched(path);
        PrivateKeyDer::from_pem_file(&path).map_err(|e| {
            self.error(
                key,
                format!("cannot read a PEM private key from {}: {e}", path.display()),
            )
        })
    }

    fn certificates(
        &self,
        key: &str,
        path: &str,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = self.watched(path);
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                self.error(
                    key,
                    format!("cannot read PEM certificates from {}: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(self.error(key, format!("{} holds no PEM certificate", path.display())));
        }
        Ok(certs)
    }

    /// A file whose contents the config holds: a change to it reloads the node.
    fn watched(&self, path: &str) -> PathBuf {
        let path = self.resolve(path);
        self.files.borrow_mut().push(path.clone());
        path
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    fn distinct_listeners(&self, config: &Config) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        let listeners = config
            .outbound
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("outbound[{i}].listen"), o.listen))
            .chain(
                config
                    .inbound
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (format!("inbound[{i}].listen"), o.listen)),
            );
        for (key, addr) in listeners {
            if addr.port() != 0 && !seen.insert(addr) {
                return Err(self.error(key, format!("{addr} is configured twice")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
