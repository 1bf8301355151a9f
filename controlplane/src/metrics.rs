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
/// Counter: refused enrolments, by `reason` (unknown-token, refused).
pub const ENROLMENTS_REFUSED: &str = "osgate_cp_enrolments_refused_total";
/// Counter: pin reports refused, by `reason` (malformed, unassigned-peer).
pub const PIN_REPORTS_REFUSED: &str = "osgate_cp_pin_reports_refused_total";
/// Counter: connections closed before TLS, by `reason` (global-cap, per-source-cap).
pub const CONNECTIONS_REFUSED: &str = "osgate_cp_connections_refused_total";
/// Gauge: open connections to the gRPC listener.
pub const CONNECTIONS: &str = "osgate_cp_connections";
/// Counter: node streams cut because the node was deleted or its key replaced.
pub const STREAMS_CUT: &str = "osgate_cp_node_streams_cut_total";
/// Counter: capability reports refused, by `reason` (malformed, unassigned-peer).
pub const CAPABILITY_REPORTS_REFUSED: &str = "osgate_cp_capability_reports_refused_total";
/// Counter: changes of the fleet's capability caches, by `change` (reported: a fleet ratchet
/// set or extended; cleared: by an operator; dane-updated: a TLSA set or its validity).
pub const CAPABILITY_CHANGES: &str = "osgate_cp_capability_changes_total";
/// Counter: the control plane's own TLSA lookups, by `result` (the node's labels:
/// secure-usable, secure-unusable, no-tlsa, insecure-address, insecure-tlsa, bogus, failed).
pub const DANE_LOOKUPS: &str = "osgate_cp_dane_lookups_total";
/// Gauge: peers with a fleet TLSA set within its DNSSEC validity.
pub const DANE_SETS: &str = "osgate_cp_dane_sets";

/// Every counter with fixed labels, at 0 from start: an `increase()` alert sees the first
/// event.
pub fn export_at_zero() {
    let fixed: [(&str, &[&str]); 5] = [
        (ENROLMENTS_REFUSED, &["unknown-token", "refused"]),
        (PIN_REPORTS_REFUSED, &["malformed", "unassigned-peer"]),
        (
            CAPABILITY_REPORTS_REFUSED,
            &["malformed", "unassigned-peer"],
        ),
        (CONNECTIONS_REFUSED, &["global-cap", "per-source-cap"]),
        (STREAMS_CUT, &[]),
    ];
    for (name, reasons) in fixed {
        if reasons.is_empty() {
            metrics::counter!(name).absolute(0);
        }
        for reason in reasons {
            metrics::counter!(name, "reason" => *reason).absolute(0);
        }
    }
    for change in ["reported", "cleared", "dane-updated"] {
        metrics::counter!(CAPABILITY_CHANGES, "change" => change).absolute(0);
    }
    metrics::gauge!(CONNECTIONS).set(0.0);
}
