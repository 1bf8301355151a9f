//! The operations side of `run`: `/metrics`, `/live` and `/ready` on the metrics listener,
//! systemd notifications (`Type=notify`), and the signals that start a drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use osgate_proto::ops::Endpoint;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

use crate::lifecycle::Lifecycle;

/// How often histograms and summaries are folded (the exporter needs it without its own
/// HTTP listener).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder and serves it, with health, on `addr`.
pub fn serve_endpoint(addr: SocketAddr, lifecycle: Arc<Lifecycle>) -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot record metrics: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let endpoint = Endpoint {
        metrics: Box::new(move || handle.render()),
        ready: Box::new(move || lifecycle.readiness()),
    };
    osgate_proto::ops::serve(addr, endpoint)
        .map(|_| ())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`); a no-op otherwise.
pub fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `WATCHDOG=1` every half `WATCHDOG_USEC`, from the runtime: a stuck runtime stops them.
pub async fn watchdog() {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(timeout / 2);
    loop {
        tick.tick().await;
        notify(NotifyState::Watchdog);
    }
}

/// Resolves with the signal's name at SIGTERM or SIGINT. Installed before serving, so a
/// signal that comes early is not lost.
pub fn stop_signal() -> Result<impl Future<Output = &'static str>, String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
