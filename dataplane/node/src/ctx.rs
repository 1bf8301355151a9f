//! What connection handlers share: listener settings and node-wide TLS state.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics::gauge;
use osgate_core::crypto::{ChainVerifier, CryptoPolicy};
use osgate_core::ladder::Policy;
use osgate_core::outcome::Direction;
use rustls_pki_types::ServerName;

use crate::config::{Host, HostPort, Timeouts};
use crate::metrics as m;

/// Node-wide state, shared by every worker.
#[derive(Debug)]
pub(crate) struct Node {
    pub crypto: CryptoPolicy,
    pub timeouts: Timeouts,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub chain: ChainVerifier,
}

#[derive(Debug)]
pub(crate) struct OutboundListener {
    pub listen: String,
    pub peer: HostPort,
    pub server_name: ServerName<'static>,
    pub policy: Policy,
}

#[derive(Debug)]
pub(crate) struct InboundListener {
    pub listen: String,
    pub backend: HostPort,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub cleartext_allowed: bool,
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
