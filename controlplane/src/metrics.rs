//! The control plane's metric names, in one place (README "Metrics" documents them).

/// Gauge: nodes with an open Watch stream to this replica.
pub const NODES_CONNECTED: &str = "osgate_cp_nodes_connected";
/// Gauge: the newest revision this replica serves.
pub const REVISION: &str = "osgate_cp_revision";
/// Counter: ACKs received from nodes.
pub const ACKS: &str = "osgate_cp_acks_total";
/// Counter: NACKs received from nodes (a node refused an update; see `osgatectl get nodes`).
pub const NACKS: &str = "osgate_cp_nacks_total";
/// Counter: admin requests by `method` and gRPC `code`.
pub const ADMIN_REQUESTS: &str = "osgate_cp_admin_requests_total";
/// Counter: requests refused before their message was read, by gRPC `code`.
pub const REQUESTS_REFUSED: &str = "osgate_cp_requests_refused_total";
/// Gauge: peers with more than one key reported and none approved.
pub const PIN_CONFLICTS: &str = "osgate_cp_pin_conflicts";
/// Counter: pins reported by nodes.
pub const PINS_REPORTED: &str = "osgate_cp_pins_reported_total";
