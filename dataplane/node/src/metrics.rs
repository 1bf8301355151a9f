//! Metric names, described once. Labels come from fixed sets (the `as_str` of core enums).

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Connections by how they ended: `direction`, `achieved`, `method`, `reason`.
pub const CONNECTIONS_TOTAL: &str = "osgate_connections_total";
/// Connections open now, by `direction`.
pub const CONNECTIONS_ACTIVE: &str = "osgate_connections_active";
/// Time from TCP connect (outbound) or first byte (inbound) to a finished TLS handshake.
pub const HANDSHAKE_DURATION: &str = "osgate_handshake_duration_seconds";
/// Application bytes relayed, by `direction` and `achieved`.
pub const BYTES_TOTAL: &str = "osgate_bytes_total";
/// 1 for the I/O driver that runs, by `driver`.
pub const IO_DRIVER_INFO: &str = "osgate_io_driver_info";
/// Inbound first bytes rejected by the classifier, by `kind`.
pub const DETECT_REJECTED_TOTAL: &str = "osgate_detect_rejected_total";
/// Relays that ended by `close` (`clean`, `truncated`, `reset`, `idle-timeout`).
pub const RELAY_CLOSES_TOTAL: &str = "osgate_relay_closes_total";
/// Connections that reached cleartext although policy or evidence committed them to TLS or
/// authentication. Must stay 0.
pub const CLEARTEXT_DESPITE_POLICY_TOTAL: &str = "osgate_cleartext_despite_policy_total";
/// Connections that reached `encrypted` although authentication was expected. Must stay 0.
pub const ENCRYPTED_DESPITE_AUTHENTICATION_TOTAL: &str =
    "osgate_encrypted_despite_authentication_expected_total";
/// TOFU decisions by `decision` (`match`, `learned`, `key-changed`, `store-unavailable`).
pub const TOFU_CHECKS_TOTAL: &str = "osgate_tofu_checks_total";
/// Peers remembered as TLS-capable that failed to do TLS, refused.
pub const DOWNGRADE_SUSPECTED_TOTAL: &str = "osgate_downgrade_suspected_total";
/// Policy decisions by `level` and `report_only` (`true` for rules only reported).
pub const POLICY_DECISIONS_TOTAL: &str = "osgate_policy_decisions_total";
/// 1 when the capability store (TOFU pins, ratchet) is readable, 0 when it is not.
pub const PIN_STORE_AVAILABLE: &str = "osgate_pin_store_available";
/// DANE lookups by `result` (`secure-usable`, `secure-unusable`, `no-tlsa`, `insecure-address`,
/// `insecure-tlsa`, `bogus`, `failed`).
pub const DANE_LOOKUPS_TOTAL: &str = "osgate_dane_lookups_total";
/// 1 when the start-up self-test validated the trust anchor's zone, 0 when DNSSEC validation
/// does not work (then DANE-requiring peers are refused).
pub const DNSSEC_VALIDATION_AVAILABLE: &str = "osgate_dnssec_validation_available";
/// Accept errors by `kind` (e.g. descriptor exhaustion).
pub const ACCEPT_ERRORS_TOTAL: &str = "osgate_accept_errors_total";

/// SMTP sessions by `direction`, `starttls` (what the peer said of it) and `achieved`.
pub const SMTP_SESSIONS_TOTAL: &str = "osgate_smtp_sessions_total";
/// SMTP sessions in which a peer sent bytes across the TLS boundary (after STARTTLS or its
/// 220, before the handshake), discarded: command or response injection, by `direction`.
pub const SMTP_INJECTIONS_TOTAL: &str = "osgate_smtp_injections_total";

/// Connections closed right after accept because a cap was reached, by `reason`
/// (`global-cap`, `per-source-cap`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "osgate_connections_refused_total";

/// Gauge: the control-plane revision this node applies (0: none).
pub const CP_REVISION: &str = "osgate_controlplane_revision";
/// Gauge: seconds since the node last knew its control-plane config was current.
pub const CP_CONFIG_AGE: &str = "osgate_controlplane_config_age_seconds";
/// Gauge: 1 while a watch stream to the control plane is open.
pub const CP_CONNECTED: &str = "osgate_controlplane_connected";
/// Gauge: 1 while the node runs with no control-plane overrides (none received or persisted).
pub const CP_NO_OVERRIDES: &str = "osgate_controlplane_no_overrides";
/// Counter: control-plane updates by `result` (`ack`, `nack`).
pub const CP_UPDATES_TOTAL: &str = "osgate_controlplane_updates_total";
/// Gauge: pins learned here and not yet reported to the control plane.
pub const CP_PINS_PENDING: &str = "osgate_controlplane_pins_pending";

/// Counter: config reloads by `result` (`success`, `failure`).
pub const CONFIG_RELOADS_TOTAL: &str = "osgate_config_reloads_total";
/// Gauge: when the config was last loaded successfully (start or reload), Unix seconds.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "osgate_config_last_reload_success_timestamp_seconds";
/// Gauge: when the certificate a `listener` presents expires, Unix seconds (`controlplane`:
/// the node key the control plane knows this node by).
pub const CERTIFICATE_EXPIRY: &str = "osgate_certificate_expiry_timestamp_seconds";
/// Gauge: 1 while the node drains (stopping; listeners closed).
pub const DRAINING: &str = "osgate_draining";

/// How often histogram samples are folded in, scraped or not (bounded memory).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the operations endpoint (`/metrics`, `/live`, `/ready`, its own thread) and
/// describes every metric. Without a listener no recorder is installed: metrics cost nothing.
pub fn install(
    listen: Option<SocketAddr>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> Result<(), String> {
    if let Some(addr) = listen {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(HANDSHAKE_DURATION.into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("osgate-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|e| e.to_string())?;
        let endpoint = osgate_proto::ops::Endpoint {
            metrics: Box::new(move || handle.render()),
            ready: Box::new(ready),
        };
        osgate_proto::ops::serve(addr, endpoint)
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    }
    describe();
    export_zeros();
    describe_caps();
    describe_lifecycle();
    describe_smtp();
    Ok(())
}

fn describe_smtp() {
    describe_counter!(
        SMTP_SESSIONS_TOTAL,
        "SMTP sessions by direction, what the peer said of STARTTLS, and the protection achieved."
    );
    describe_counter!(
        SMTP_INJECTIONS_TOTAL,
        "SMTP sessions whose peer sent bytes between STARTTLS and the TLS handshake (discarded), by direction."
    );
    for direction in ["inbound", "outbound"] {
        metrics::counter!(SMTP_INJECTIONS_TOTAL, "direction" => direction).absolute(0);
    }
}

fn describe_lifecycle() {
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads (SIGHUP, changed certificate or key files), by result."
    );
    for result in ["success", "failure"] {
        metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the config was last loaded successfully (start or reload), Unix time."
    );
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "When the certificate a listener presents expires, Unix time (controlplane: the node key)."
    );
    describe_gauge!(DRAINING, "1 while the node drains before it stops.");
    metrics::gauge!(DRAINING).set(0.0);
}

/// Counters with fixed label sets start at 0, so an `increase()` alert sees the first event.
fn export_zeros() {
    use metrics::counter;
    for name in [
        CLEARTEXT_DESPITE_POLICY_TOTAL,
        ENCRYPTED_DESPITE_AUTHENTICATION_TOTAL,
        DOWNGRADE_SUSPECTED_TOTAL,
    ] {
        counter!(name).absolute(0);
    }
    for decision in ["match", "learned", "key-changed", "store-unavailable"] {
        counter!(TOFU_CHECKS_TOTAL, "decision" => decision).absolute(0);
    }
    let dane = [
        "secure-usable",
        "secure-unusable",
        "no-tlsa",
        "insecure-address",
        "insecure-tlsa",
        "bogus",
        "failed",
    ];
    for result in dane {
        counter!(DANE_LOOKUPS_TOTAL, "result" => result).absolute(0);
    }
    for kind in osgate_core::detect::Malformed::ALL {
        counter!(DETECT_REJECTED_TOTAL, "kind" => kind.as_str()).absolute(0);
    }
    for close in ["clean", "truncated", "reset", "idle-timeout", "drained"] {
        counter!(RELAY_CLOSES_TOTAL, "close" => close).absolute(0);
    }
    for result in ["ack", "nack"] {
        counter!(CP_UPDATES_TOTAL, "result" => result).absolute(0);
    }
}

/// The cap counters, described and exported at 0 so an `increase()` alert sees the first one.
fn describe_caps() {
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections closed right after accept because a connection cap was reached, by reason."
    );
    for reason in osgate_core::caps::Refusal::ALL {
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason.as_str()).absolute(0);
    }
}

fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Connections by direction and the protection they achieved (cleartext, encrypted, authenticated, refused)."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Connections open now, by direction.");
    describe_histogram!(
        HANDSHAKE_DURATION,
        Unit::Seconds,
        "Duration of TLS handshakes, by direction."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Application bytes relayed, by direction and achieved protection."
    );
    describe_gauge!(
        IO_DRIVER_INFO,
        "1 for the I/O driver in use (uring or epoll)."
    );
    describe_counter!(
        DETECT_REJECTED_TOTAL,
        "Inbound first bytes that looked like TLS but were not, by kind."
    );
    describe_counter!(RELAY_CLOSES_TOTAL, "Relays by how they ended.");
    describe_counter!(
        CLEARTEXT_DESPITE_POLICY_TOTAL,
        "Connections carried in cleartext although policy or evidence committed them to TLS. Always 0 unless there is a bug."
    );
    describe_counter!(
        ENCRYPTED_DESPITE_AUTHENTICATION_TOTAL,
        "Connections carried encrypted but unauthenticated although authentication was expected. Always 0 unless there is a bug."
    );
    describe_counter!(ACCEPT_ERRORS_TOTAL, "accept() failures, by kind.");
    describe_counter!(TOFU_CHECKS_TOTAL, "Trust-on-first-use checks, by decision.");
    describe_counter!(
        DOWNGRADE_SUSPECTED_TOTAL,
        "Connections refused because a peer that did TLS before did not (suspected downgrade)."
    );
    describe_counter!(
        POLICY_DECISIONS_TOTAL,
        "Explicit policy decisions, by level and report_only."
    );
    describe_gauge!(
        PIN_STORE_AVAILABLE,
        "1 when the capability store is readable, 0 when it is not."
    );
}
