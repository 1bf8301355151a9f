//! `osgate`: the dataplane node. This file only wires the command line to the modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod config;
mod controlplane;
mod ctx;
use osgate_dns as dns;
mod durable;
mod filewatch;
mod health;
mod inbound;
mod io;
mod keygen;
mod listener;
mod metrics;
mod node;
mod observed;
mod outbound;
mod ownkeys;
mod pins;
mod relay;
mod report;
mod smtp;
mod store;
mod sts;
mod supervisor;
mod sys;
mod tally;
mod tls;
mod tlsrpt;
mod watchdog;
mod worker;

/// sysexits.h EX_USAGE: the configuration (or command line) is wrong.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "osgate",
    version,
    about = "Opportunistic-security gateway node (RFC 7435)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Run {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
        log_format: LogFormat,
    },
    /// Validate a config file and exit (0 when valid, 64 when not).
    CheckConfig { file: PathBuf },
    /// Print the TLSA records (3 1 1: DANE-EE, SPKI, SHA-256) each inbound listener should
    /// publish at _port._tcp.NAME: the current key, and the next one when configured
    /// (RFC 7671 §8.1: publish the next key before it is used).
    Tlsa {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// The DNS name peers use (default: the certificate's DNS names).
        #[arg(long)]
        name: Option<String>,
    },
    /// Manage the capability store (TOFU pins and the ratchet).
    Pins {
        /// The store file (`[tofu] store` in the node config).
        #[arg(long)]
        store: PathBuf,
        #[command(subcommand)]
        command: pins::PinsCommand,
    },
    /// Print the MTA-STS (RFC 8461) policy the node would apply to mail for each DOMAIN: mode,
    /// mx patterns, id, max_age and whether it was fetched now or cached — or why none
    /// applies. Exit 0 when a policy or its absence is established, 1 when a lookup failed.
    MtaSts {
        #[arg(required = true)]
        domains: Vec<String>,
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// The policy hosts' HTTPS port (default: `[smtp] mta_sts_port`, 443; for test beds).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Print reports from this node's state folder.
    Reports {
        #[command(subcommand)]
        command: tlsrpt::cli::ReportsCommand,
    },
    /// Create a private key and a self-signed certificate for an inbound listener.
    Keygen {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// DNS names (or IP addresses) the certificate names.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            run(&config)
        }
        Command::CheckConfig { file } => match config::Config::load(&file) {
            Ok(config) => {
                eprintln!("{}: valid", file.display());
                let state = &config.node.state_dir;
                if !state.is_dir() {
                    eprintln!(
                        "note: the state folder {} does not exist yet; the node creates it at start",
                        state.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("config error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Tlsa { config, name } => {
            let records = config::Config::load(&config)
                .map_err(|e| format!("config error: {e}"))
                .and_then(|c| ownkeys::tlsa(&c, name.as_deref()));
            match records {
                Ok(out) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tlsa: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Pins { store, command } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match pins::run(command, &store, now) {
                Ok(out) => {
                    // The command's output, for people and scripts (logs go to stderr).
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pins: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MtaSts {
            domains,
            config,
            port,
        } => {
            init_logging(LogFormat::Plain);
            match sts::cli::run(&config, &domains, port) {
                Ok((out, established)) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                    match established {
                        true => ExitCode::SUCCESS,
                        false => ExitCode::FAILURE,
                    }
                }
                Err(e) => {
                    eprintln!("mta-sts: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Reports { command } => match tlsrpt::cli::run(command) {
            Ok(out) => {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("reports: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { cert, key, names } => match keygen::generate(&names, &cert, &key) {
            Ok(pin) => {
                #[allow(clippy::print_stdout)]
                {
                    println!("{pin}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keygen: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match config::Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match node::run(path.to_owned(), config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OSGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
