//! Emits each connection's outcome record: one tracing event and its metrics.

use metrics::{counter, histogram};
use osgate_core::outcome::{Betrayal, Close, Outcome};

use crate::metrics as m;

/// The RFC 8460 result type an SMTP session is reported with, if it is a failure.
fn tlsrpt_result(outcome: &Outcome) -> Option<&'static str> {
    match osgate_core::tlsrpt::verdict(outcome.reason, outcome.carried_tls()) {
        osgate_core::tlsrpt::Verdict::Failure(result) => Some(result.as_str()),
        _ => None,
    }
}

/// Counts `outcome` and logs it as one event (target `osgate::outcome`).
pub fn emit(outcome: &Outcome) {
    crate::tally::count(outcome);
    let direction = outcome.direction.as_str();
    let achieved = outcome.achieved.as_str();
    let tls = outcome.tls.clone().unwrap_or_default();
    counter!(
        m::CONNECTIONS_TOTAL,
        "direction" => direction,
        "achieved" => achieved,
        "method" => outcome.achieved.method_str(),
        "reason" => outcome.reason.as_str(),
    )
    .increment(1);
    let bytes = outcome.bytes_up + outcome.bytes_down;
    if bytes > 0 {
        counter!(m::BYTES_TOTAL, "direction" => direction, "achieved" => achieved).increment(bytes);
    }
    if let Some(handshake) = outcome.handshake {
        histogram!(m::HANDSHAKE_DURATION, "direction" => direction).record(handshake.as_secs_f64());
    }
    // Ending unrelayed after this thread's drain was cut means the cut ended it.
    let close = match outcome.close {
        Close::NotRelayed if crate::watchdog::cut_done() => Close::Drained,
        close => close,
    };
    if close != Close::NotRelayed {
        counter!(m::RELAY_CLOSES_TOTAL, "close" => close.as_str()).increment(1);
    }
    match outcome.commitment.betrayed_by(outcome.achieved) {
        Some(Betrayal::CleartextDespitePolicy) => {
            counter!(m::CLEARTEXT_DESPITE_POLICY_TOTAL).increment(1);
        }
        Some(Betrayal::EncryptedDespiteAuthentication) => {
            counter!(m::ENCRYPTED_DESPITE_AUTHENTICATION_TOTAL).increment(1);
        }
        None => {}
    }
    let smtp = outcome.smtp.as_deref();
    if let Some(smtp) = smtp {
        counter!(m::SMTP_SESSIONS_TOTAL, "direction" => direction, "starttls" => smtp.starttls.as_str(), "achieved" => achieved)
            .increment(1);
        if smtp.injected_bytes > 0 {
            counter!(m::SMTP_INJECTIONS_TOTAL, "direction" => direction).increment(1);
        }
    }
    // Last, so that whoever reads this record sees the counters already updated.
    tracing::info!(
        target: "osgate::outcome",
        direction,
        protocol = outcome.protocol.as_str(),
        listener = %outcome.listener,
        peer = %outcome.peer,
        desired = outcome.desired,
        achieved,
        method = outcome.achieved.method_str(),
        reason = outcome.reason.as_str(),
        tls_version = tls.version,
        tls_suite = tls.suite,
        tls_group = tls.group,
        tls_resumed = tls.resumed,
        close = close.as_str(),
        bytes_up = outcome.bytes_up,
        bytes_down = outcome.bytes_down,
        handshake_ms = outcome.handshake.map(|d| d.as_secs_f64() * 1e3),
        duration_ms = outcome.duration.as_secs_f64() * 1e3,
        policy = %outcome.policy,
        peer_key = outcome.peer_key.as_deref(),
        downgrade_suspected = outcome.downgrade_suspected,
        dane = outcome.dane,
        // "fleet": the TLSA set came from the control plane's cache, not this node's lookup.
        source = outcome.fleet.dane_source(),
        // Who committed the peer to TLS by having done it before: "local" or "fleet".
        ratchet = outcome.fleet.ratchet_source(),
        client = outcome.client.as_deref(),
        tlsa = outcome.tlsa.as_deref(),
        report_only_policy = outcome.report_only.as_ref().map(|r| r.0.as_str()),
        report_only_achieved = outcome.report_only.as_ref().map(|r| r.1.as_str()),
        report_only_method = outcome.report_only.as_ref().map(|r| r.1.method_str()),
        report_only_reason = outcome.report_only.as_ref().map(|r| r.2.as_str()),
        starttls = smtp.map(|s| s.starttls.as_str()),
        mx = smtp.and_then(|s| s.mx.as_deref()),
        sts = smtp.and_then(|s| s.sts.as_deref()),
        injected_bytes = smtp.map(|s| s.injected_bytes),
        // SMTP: the RFC 8460 §4.3 result type this session is reported with, if any.
        tlsrpt_result = smtp.and_then(|_| tlsrpt_result(outcome)),
        "connection {achieved}",
    );
}
