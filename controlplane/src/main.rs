//! `osgate-controlplane`: stores explicit policy and the fleet's capability caches, and
//! streams them to every node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod admin;
mod auth;
mod blast;
mod caps;
mod config;
mod ctx;
mod db;
mod enroll;
mod fleet;
mod metrics;
mod nodes;
mod peer;
mod pins;
mod server;
mod state;

use config::Config;
use ctx::Ctx;

#[derive(Parser)]
#[command(
    name = "osgate-controlplane",
    version,
    about = "The osgate control plane"
)]
struct Cli {
    /// Log lines as text or JSON (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Checks a configuration file and exits.
    CheckConfig { config: PathBuf },
    /// Prints the SHA-256 of a bearer token read from standard input, for `[[admin]]`.
    HashToken,
}

/// Configuration and usage errors, as sysexits(3) EX_USAGE.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OSGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Run { config } => match Config::load(&config) {
            Ok(config) => run(config),
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
        Command::HashToken => hash_token(),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("osgate-controlplane: {message}");
    ExitCode::from(code)
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut token) {
        return fail(1, &format!("cannot read the token: {e}"));
    }
    let hex = enroll::hex_sha256(token.trim_end_matches(['\r', '\n']));
    #[allow(clippy::print_stdout)]
    {
        println!("{hex}");
    }
    ExitCode::SUCCESS
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    if let Some(addr) = config.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    }
    crate::metrics::export_at_zero();
    let db = db::Db::open(&config.database)
        .await
        .map_err(|e| format!("database {}: {e}", redact(&config.database)))?;
    let ctx = Arc::new(Ctx {
        db,
        state: Arc::new(state::State::new()),
        nodes: nodes::Tracker::default(),
        corroboration: config.corroboration,
        confirm_nodes: config.confirm_nodes,
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
        database = redact(&config.database),
        revision = ctx.state.revision(),
        "control plane serving"
    );
    tokio::spawn(background(ctx.clone()));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let caps = caps::new(config.max_connections, config.max_connections_per_source);
    server::serve(ctx.clone(), config.admins, listener, tls, caps, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    let _ = ctx.nodes.flush(&ctx.db, true).await;
    Ok(())
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Flushes node statuses, follows other replicas' writes (NOTIFY), and re-reads storage now
/// and then in case a notification was lost.
async fn background(ctx: Arc<Ctx>) {
    if ctx.db.backend == db::Backend::Postgres {
        tokio::spawn(listen_for_revisions(ctx.clone()));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        // Statuses as they change; every connected node's heartbeat every 5 s.
        if let Err(e) = ctx.nodes.flush(&ctx.db, ticks % 5 == 0).await {
            tracing::warn!(error = %e, "cannot store node statuses");
        }
        if ticks % 5 == 0 {
            ctx.refresh().await;
        }
    }
}

async fn listen_for_revisions(ctx: Arc<Ctx>) {
    loop {
        let listener = sqlx::postgres::PgListener::connect(&ctx.db.url).await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for other replicas' revisions; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(db::NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            continue;
        }
        // Anything committed while we were not listening.
        ctx.refresh().await;
        while listener.recv().await.is_ok() {
            ctx.refresh().await;
        }
    }
}
