//! What connection handlers share: listener settings and node-wide TLS state.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::gauge;
use osgate_core::crypto::{ChainVerifier, CryptoPolicy, TlsFloor};
use osgate_core::fleet::Fleet;
use osgate_core::outcome::Direction;
use osgate_core::policy::Level;
use rustls_pki_types::ServerName;

use crate::config::{Host, HostPort, Timeouts};
use crate::metrics as m;

/// Node-wide state, shared by every worker. A reload builds a new one for new connections;
/// the fleet, the pin store, the validation verdict and the caps carry over.
#[derive(Debug)]
pub(crate) struct Node {
    pub crypto: CryptoPolicy,
    pub timeouts: Timeouts,
    pub client_tls: ClientConfigs,
    pub chain: ChainVerifier,
    /// Explicit policy (the control plane's rules, then this node's) and the fleet's pins and
    /// node keys, swapped whole when the control plane sends an update.
    pub fleet: Arc<ArcSwap<Fleet>>,
    /// TOFU pins and the ratchet; `None` when `[tofu]` is not configured.
    pub store: Option<Arc<crate::store::Store>>,
    /// `[tofu] mode = "enforce"`: learn and check pins (else only the ratchet).
    pub tofu_enforce: bool,
    /// `[dns]`: DANE is on when set.
    pub dns: Option<crate::config::DnsConfig>,
    /// The start-up self-test validated the trust anchor's zone.
    pub dnssec_validating: Arc<std::sync::atomic::AtomicBool>,
    /// MTA-STS (RFC 8461) policies for `mx:` peers: fetched, cached, shared by the workers.
    pub sts: Arc<crate::sts::Sts>,
    /// Open connections against `[node]`'s caps.
    pub caps: Arc<osgate_core::caps::Caps>,
    /// TLS-RPT: outbound SMTP sessions are counted here (`record`), across reloads.
    pub tlsrpt: Arc<crate::tlsrpt::Recorder>,
}

/// A worker's validating resolver.
#[derive(Debug)]
pub(crate) struct WorkerDns {
    pub dns: crate::dns::Dns,
}

/// Client configs by TLS floor and policy class. Each has its own session cache, so a
/// session made where authentication was optional is never resumed where it is required
/// (CONFORMANCE B.11).
#[derive(Debug)]
pub(crate) struct ClientConfigs {
    /// `[floor][authentication required]`: TLS 1.2+ then TLS 1.3.
    pub by_class: [[Arc<rustls::ClientConfig>; 2]; 2],
    /// The session cache of the authentication-required configs, which forgets a peer's
    /// sessions when its TLSA set changes.
    pub authenticated_sessions: Arc<osgate_core::crypto::SessionCache>,
    /// `[floor]`, for fleet nodes: presenting this node's key (`None` without a control plane).
    pub fleet: Option<[Arc<rustls::ClientConfig>; 2]>,
}

impl ClientConfigs {
    pub fn get(&self, floor: TlsFloor, authentication_required: bool) -> Arc<rustls::ClientConfig> {
        let floor = usize::from(floor == TlsFloor::Tls13);
        self.by_class[floor][usize::from(authentication_required)].clone()
    }

    /// The config for a peer: one presenting this node's key when the peer is a fleet node.
    pub fn for_peer(
        &self,
        floor: TlsFloor,
        authentication_required: bool,
        fleet_node: bool,
    ) -> Arc<rustls::ClientConfig> {
        match (&self.fleet, fleet_node) {
            (Some(fleet), true) => fleet[usize::from(floor == TlsFloor::Tls13)].clone(),
            _ => self.get(floor, authentication_required),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OutboundListener {
    pub listen: String,
    /// The fixed next hop; for SMTP by MX, the mail domain (each MX host is a [`Target`] of
    /// its own).
    pub target: Target,
    /// The listener's default level and fallback, when no `[[policy]]` rule matches.
    pub level: Level,
    pub allow_cleartext_fallback: bool,
    /// `protocol = "smtp"`.
    pub smtp: Option<crate::config::OutboundSmtp>,
}

/// One next hop: what policy, the capability store and the TLS checks call it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub peer: HostPort,
    /// `host:port`, lower case: the key of the capability store.
    pub peer_key: String,
    /// The host as policy selectors match it: lower case, no brackets around IPv6.
    pub policy_host: String,
    pub server_name: ServerName<'static>,
    /// DANE may apply. Not for an MX host named by an insecure MX RRset: "the TLSA records
    /// of MX hosts found via an insecure MX RRset MUST NOT be used" (RFC 7672 §2.2.1).
    pub dane: bool,
    /// For an MX host: its mail domain, whose `[[policy]]` rules apply when none names the
    /// host itself (as Postfix's TLS policy table is keyed by the next-hop domain).
    pub policy_domain: Option<String>,
}

impl Target {
    pub fn new(peer: HostPort) -> Option<Self> {
        let server_name = match &peer.host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(name) => ServerName::try_from(name.clone()).ok()?,
        };
        Some(Self {
            peer_key: peer.to_string().to_ascii_lowercase(),
            policy_host: match &peer.host {
                Host::Ip(ip) => ip.to_string(),
                Host::Name(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            },
            server_name,
            dane: true,
            policy_domain: None,
            peer,
        })
    }
}

#[derive(Debug)]
pub(crate) struct InboundListener {
    pub listen: String,
    pub backend: HostPort,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub cleartext_allowed: bool,
    /// The file's `clients`; the control plane's inbound policy for `listen` replaces it.
    pub clients: osgate_core::clients::Clients,
    /// `protocol = "smtp"`.
    pub smtp: Option<crate::config::InboundSmtp>,
}

impl InboundListener {
    /// The desired level, as outcome records name it.
    pub fn desired(&self) -> &'static str {
        if self.cleartext_allowed {
            "opportunistic"
        } else {
            "encrypt"
        }
    }
}

/// Resolves `target` to its first address.
pub(crate) async fn resolve(target: &HostPort) -> io::Result<SocketAddr> {
    match &target.host {
        Host::Ip(ip) => Ok(SocketAddr::new(*ip, target.port)),
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address"))
            }),
    }
}

/// Counts a connection in `osgate_connections_active` while it lives.
pub(crate) struct Active(Direction);

impl Active {
    pub fn new(direction: Direction) -> Self {
        gauge!(m::CONNECTIONS_ACTIVE, "direction" => direction.as_str()).increment(1.0);
        Self(direction)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        gauge!(m::CONNECTIONS_ACTIVE, "direction" => self.0.as_str()).decrement(1.0);
    }
}
