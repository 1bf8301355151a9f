//! Features named in `requires` (see the header of osgate.proto). A node applies a message
//! only if it implements every feature the message requires.

/// The fleet ratchet (`Capability`).
pub const CAPABILITY: &str = "capability.v1";
/// The fleet's TLSA sets (`DaneRecord`).
pub const DANE_CACHE: &str = "dane-cache.v1";
/// Listener client policies (`InboundPolicy`).
pub const INBOUND_CLIENTS: &str = "inbound-clients.v1";

/// The features this build implements.
pub const SUPPORTED: &[&str] = &[
    "policy.v1",
    "pin.v1",
    "node-key.v1",
    CAPABILITY,
    DANE_CACHE,
    INBOUND_CLIENTS,
];

/// The first feature in `requires` that this build does not implement.
pub fn first_unsupported(requires: &[String]) -> Option<&str> {
    requires
        .iter()
        .map(String::as_str)
        .find(|name| !SUPPORTED.contains(name))
}
