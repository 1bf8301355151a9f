//! The config file as written: serde types that reject unknown keys.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, IoChoice};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub outbound: Vec<Outbound>,
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    #[serde(default)]
    pub policy: Vec<Policy>,
    pub tofu: Option<Tofu>,
    pub dns: Option<Dns>,
    pub controlplane: Option<ControlPlane>,
    pub smtp: Option<Smtp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Smtp {
    pub helo_name: Option<String>,
    #[serde(default = "yes")]
    pub mta_sts: bool,
    pub mta_sts_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Protocol {
    #[default]
    Tcp,
    Smtp,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Starttls {
    Offer,
    Require,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlPlane {
    pub address: String,
    pub server_pin: Option<String>,
    /// The control plane's certificate file: its key is pinned.
    pub server_certificate: Option<String>,
    pub certificate: String,
    pub private_key: String,
    /// Default: `controlplane.lkg` in `[node] state_dir`.
    pub state: Option<String>,
    pub enroll_token: Option<String>,
    #[serde(default)]
    pub advertise: Vec<String>,
    /// HTTP/2 PING interval on the watch stream; a dead stream is found within twice this.
    #[serde(default = "keepalive_ms")]
    pub keepalive_ms: u64,
}

fn keepalive_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Dns {
    /// Default: the system's resolvers (/etc/resolv.conf).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Default: the IANA root trust anchors built into the resolver.
    pub trust_anchor: Option<String>,
    #[serde(default = "dns_timeout_ms")]
    pub timeout_ms: u64,
    /// Default: three timeouts (at most 10 minutes).
    pub budget_ms: Option<u64>,
    /// `false` turns DANE off.
    #[serde(default = "yes")]
    pub dane: bool,
}

fn yes() -> bool {
    true
}

fn dns_timeout_ms() -> u64 {
    2_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    #[serde(rename = "match")]
    pub selector: String,
    pub level: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub pins: Vec<String>,
    pub min_tls: Option<String>,
    pub allow_cleartext_fallback: Option<bool>,
    #[serde(default)]
    pub report_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tofu {
    /// Default: `state/pins` next to the config file, created on first start.
    pub store: Option<String>,
    #[serde(default)]
    pub mode: TofuMode,
    /// How long a peer that completed TLS stays committed to TLS (0: no ratchet).
    #[serde(default = "ratchet_hours")]
    pub ratchet_hours: u64,
}

fn ratchet_hours() -> u64 {
    24 * 30
}

impl Default for Tofu {
    fn default() -> Self {
        Self {
            store: None,
            mode: TofuMode::Enforce,
            ratchet_hours: ratchet_hours(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TofuMode {
    #[default]
    Enforce,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Node {
    pub io: IoChoice,
    pub workers: usize,
    pub metrics_listen: Option<String>,
    pub peek_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub tls_groups: Option<Vec<String>>,
    pub ca_bundle: Option<String>,
    pub tls_resumption: bool,
    /// Connection caps (CONFORMANCE F.36).
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Where the pin store, the last-known-good and the first-start marker live.
    pub state_dir: Option<String>,
    /// How long a stopping node lets live connections finish.
    pub drain_timeout_ms: u64,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            io: IoChoice::Auto,
            workers: 0,
            metrics_listen: None,
            peek_timeout_ms: 3_000,
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            tls_groups: None,
            ca_bundle: None,
            tls_resumption: true,
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            state_dir: None,
            drain_timeout_ms: 25_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Outbound {
    pub listen: String,
    pub peer: String,
    #[serde(default = "opportunistic")]
    pub policy: String,
    pub allow_cleartext_fallback: Option<bool>,
    #[serde(default)]
    pub protocol: Protocol,
    pub helo_name: Option<String>,
    pub greeting_timeout_ms: Option<u64>,
    pub command_timeout_ms: Option<u64>,
}

fn opportunistic() -> String {
    "opportunistic".into()
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Inbound {
    pub listen: String,
    pub backend: String,
    pub certificate: String,
    pub private_key: String,
    /// The next key, published (`osgate tlsa`) before it replaces the current one.
    pub next_certificate: Option<String>,
    pub next_private_key: Option<String>,
    pub cleartext: Option<Cleartext>,
    /// `"any"` (default), `"fleet"`, or a list of `"fleet"` and `sha256/…` pins.
    pub clients: Option<OneOrMany>,
    #[serde(default)]
    pub protocol: Protocol,
    pub starttls: Option<Starttls>,
    pub greeting_timeout_ms: Option<u64>,
    pub command_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Cleartext {
    Allow,
    #[default]
    Deny,
}

impl File {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let error = |key: String, e: &toml::de::Error| ConfigError {
            file: path.to_owned(),
            key,
            reason: describe(text, e),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| error("-".into(), &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "-".to_owned(),
                p => p,
            };
            error(key, e.inner())
        })
    }
}

/// The message with its line number, without toml's multi-line source excerpt.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message.to_owned(),
    }
}
