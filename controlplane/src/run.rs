//! `osgate-controlplane run`: serve until SIGTERM or SIGINT, then drain and exit 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ctx::Ctx;
use crate::{caps, db, lifecycle, nodes, ops, server, state, store};

pub fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::fail(1, &format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(serve(config));
    // Tasks still running after a drain (a stream past the drain timeout) are dropped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(1, &e),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    // One control plane per SQLite file; `restore` takes the same lock.
    let _lock = match db::sqlite_path(&config.database) {
        Some(path) => Some(store::lock(&path)?),
        None => None,
    };
    let health = tonic_health::server::HealthReporter::new();
    let lifecycle = Arc::new(lifecycle::Lifecycle::new(health.clone()));
    if let Some(addr) = config.metrics {
        ops::serve_endpoint(addr, lifecycle.clone())?;
    }
    crate::metrics::export_at_zero();
    let stop = ops::stop_signal()?;
    let db = db::Db::open(&config.database)
        .await
        .map_err(|e| format!("database {}: {e}", crate::redact(&config.database)))?;
    let ctx = Arc::new(Ctx {
        db,
        state: Arc::new(state::State::new()),
        nodes: nodes::Tracker::default(),
        corroboration: config.corroboration,
        confirm_nodes: config.confirm_nodes,
        lifecycle,
        ratchet_secs: config.ratchet.as_secs(),
        dane_errors: Default::default(),
    });
    ctx.refresh().await;
    let crypto = osgate_core::crypto::CryptoPolicy::new(
        osgate_core::crypto::KxGroup::DEFAULT,
        osgate_core::crypto::TlsFloor::Tls13,
    )
    .map_err(|e| e.to_string())?;
    let tls = crypto
        .control_server(config.chain, config.key)
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        listen = %bound,
        database = crate::redact(&config.database),
        revision = ctx.state.revision(),
        "control plane serving"
    );
    tokio::spawn(crate::background(ctx.clone()));
    tokio::spawn(probe(ctx.clone()));
    if let Some(dns) = config.dns.clone() {
        tokio::spawn(crate::dane::run(ctx.clone(), dns));
    }
    let caps = caps::new(config.max_connections, config.max_connections_per_source);
    let server = server::serve(ctx.clone(), config.admins, listener, tls, caps, health);
    tokio::pin!(server);
    ops::notify(sd_notify::NotifyState::Ready);
    // After READY=1: systemd reads pings only from a started service.
    tokio::spawn(ops::watchdog());
    let signal = tokio::select! {
        served = &mut server => return served.map_err(|e| e.to_string()),
        signal = stop => signal,
    };
    drain(&ctx, signal, config.drain_timeout, server).await
}

/// Stops taking connections and streams, lets in-flight requests finish up to
/// `timeout`, stores the node statuses, and returns.
async fn drain(
    ctx: &Ctx,
    signal: &str,
    timeout: Duration,
    server: impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
) -> Result<(), String> {
    ops::notify(sd_notify::NotifyState::Stopping);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    // Logged once it is true: a watcher of the log sees /ready and health already changed.
    ctx.lifecycle.begin_drain().await;
    tracing::info!(
        signal,
        drain_timeout_ms = timeout_ms,
        "draining: health NOT_SERVING, node streams told to reconnect, in-flight requests finishing"
    );
    match tokio::time::timeout(timeout, server).await {
        Ok(served) => served.map_err(|e| e.to_string())?,
        Err(_) => tracing::warn!(
            drain_timeout_ms = timeout_ms,
            "drain timeout: closing the connections still open"
        ),
    }
    let flush = ctx.nodes.flush(&ctx.db, true);
    match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot store node statuses at exit"),
        Err(_) => tracing::warn!("cannot store node statuses at exit: the database is slow"),
    }
    tracing::info!("control plane stopped");
    Ok(())
}

/// How long the last store of node statuses may take at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

async fn probe(ctx: Arc<Ctx>) {
    ctx.lifecycle.probe_database(&ctx.db).await;
}
