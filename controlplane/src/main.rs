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
mod capabilities;
mod caps;
mod config;
mod ctx;
mod dane;
mod db;
mod enroll;
mod fleet;
mod lifecycle;
mod metrics;
mod nodes;
mod ops;
mod peer;
mod pins;
mod run;
mod server;
mod state;
mod store;
mod tlsa;
mod tlsrpt;

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
    /// Copies the SQLite database to FILE, consistently, while the control plane runs.
    /// (PostgreSQL: use pg_dump.)
    Backup {
        #[arg(short, long)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Replaces the SQLite database with the backup FILE. The control plane must be
    /// stopped; the replaced database is kept beside it. (PostgreSQL: use pg_restore.)
    Restore {
        #[arg(short, long)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Prints the TLSA records (3 1 1) to publish for the control plane's key and its next
    /// key (RFC 7671 §8.1).
    Tlsa {
        #[arg(short, long)]
        config: PathBuf,
        /// The control plane's DNS name; by default the certificate's first DNS name.
        #[arg(long)]
        name: Option<String>,
    },
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
        // Colour only for a person at a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Run { config } => match Config::load(&config) {
            Ok(config) => run::run(config),
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
        Command::HashToken => hash_token(),
        Command::Backup { config, file } => {
            store_command(
                &config,
                |url| async move { store::backup(&url, &file).await },
            )
        }
        Command::Restore { config, file } => {
            store_command(
                &config,
                |url| async move { store::restore(&url, &file).await },
            )
        }
        Command::Tlsa { config, name } => match Config::load(&config) {
            Ok(config) => match tlsa::records(&config, name.as_deref()) {
                Ok(lines) => print_lines(&lines),
                Err(e) => fail(EXIT_CONFIG, &e),
            },
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
    }
}

#[allow(clippy::print_stdout)]
fn print_lines(lines: &[String]) -> ExitCode {
    for line in lines {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Runs `backup` or `restore` on the configured database.
fn store_command<F, Fut>(config: &std::path::Path, command: F) -> ExitCode
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    if db::sqlite_path(&config.database).is_none() {
        return fail(EXIT_CONFIG, store::POSTGRES);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(command(config.database)),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    };
    match result {
        Ok(done) => print_lines(&[done]),
        Err(e) => fail(1, &e),
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

/// A database URL without its password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Flushes node statuses, follows other replicas' writes (NOTIFY), and re-reads storage now
/// and then in case a notification was lost.
pub(crate) async fn background(ctx: Arc<Ctx>) {
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
