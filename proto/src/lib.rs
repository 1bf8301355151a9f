//! The control-plane API of osgate (`osgate.v1`), shared by the control plane, `osgatectl` and
//! nodes: generated gRPC code, validation of API messages into the core model (one place, so
//! what the control plane accepts is what nodes apply), and the TLS connector that pins the
//! control plane's key.

pub mod connect;
pub mod features;
pub mod ops;
pub mod tlsrpt;
pub mod validate;
pub mod watch;
pub mod wire;

/// The kernel's host name (`localhost` when it has none): the default EHLO name of SMTP
/// listeners and `organization-name` of TLS-RPT reports, on nodes and the control plane.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Generated messages and services.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("osgate.v1");

    /// The encoded descriptors, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("osgate_v1");
}

/// The largest message either side decodes: a snapshot of a large fleet fits, a
/// pathological one is refused before it is held in memory (CONFORMANCE G.50).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The HTTP header that carries an admin's bearer token.
pub const AUTHORIZATION: &str = "authorization";
