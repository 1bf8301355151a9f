//! Soak: node pairs holding N concurrent tunnels under R new connections/s of churn, for a
//! long time, sampled every few seconds — does anything grow?
//!
//! Processes: per pair an inbound and an outbound `osgate` node; one echo backend (this
//! binary, `soak backend`); this process as the load generator and sampler. Each tunnel is a
//! client connection to an outbound node, a TLS connection between the nodes (policy
//! `encrypt`) and a connection from the inbound node to the backend. Long-lived tunnels send a
//! small ping every `--ping-every` seconds and check the echo; churn connections send 64
//! bytes, check the echo, half-close, and wait for the close.
//!
//! Each sample: per node RSS and open descriptors, the node-owned sockets in CLOSE_WAIT
//! (`ss state close-wait`, by pid), `osgate_cleartext_despite_policy_total`, plus the churn
//! achieved and the tunnels alive. The verdict: RSS and descriptors flat within 5% after
//! warm-up, no CLOSE_WAIT, no cleartext, no tunnel lost.
//!
//! ```sh
//! cargo build --release -p osgate-node -p osgate-benches --bins
//! target/release/soak --short          # 30 s, 1,000 tunnels, 200/s: a check
//! target/release/soak                  # 10 min, 10,000 tunnels, 1,000/s
//! ```
#![allow(clippy::print_stdout)]

mod args;
mod load;
mod nodes;
mod report;
mod sample;
mod sys;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use args::Args;
use load::Stats;
use nodes::Fleet;
use report::{Moment, Row};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("backend") {
        return exit(load::backend_main(argv.get(1).map(String::as_str)));
    }
    match Args::parse(&argv) {
        Ok(Some(args)) => exit(run(&args)),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(64)
        }
    }
}

fn exit(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let hard = osgate_benches::sys::raise_nofile_limit()?;
    args.check_budget(hard)?;
    let dir = std::env::temp_dir().join(format!("osgate-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fleet = Fleet::start(args, &dir)?;
    eprintln!(
        "soak: {} pair(s) up (io = {}), descriptor limit {hard}; opening {} tunnels",
        args.pairs, args.io, args.tunnels
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stats = Arc::new(Stats::default());
    let result = runtime.block_on(soak(args, &fleet, &stats));
    let logs = fleet.log_summary();
    let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    drop(fleet);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rows = result?;
    report::print(args, &names, &rows, &logs, &stats);
    Ok(())
}

/// Ramp up, churn for the duration while sampling, then close everything and sample again.
async fn soak(args: &Args, fleet: &Fleet, stats: &Arc<Stats>) -> Result<Vec<Row>, Error> {
    let targets = fleet.entries();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let idle = Row::take(fleet, stats, Moment::Event("idle"));
    let ramp = Instant::now();
    let tunnels = load::open_tunnels(args, &targets, stats).await?;
    eprintln!(
        "soak: {} tunnels open in {:.1} s",
        args.tunnels,
        ramp.elapsed().as_secs_f64()
    );
    let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    eprintln!("{}", report::header(&names));
    let mut rows = vec![idle, Row::take(fleet, stats, Moment::Event("tunnels open"))];
    eprintln!("{}\n{}", rows[0].line(), rows[1].line());
    let churn = tokio::spawn(load::churn(
        args.rate,
        args.max_in_flight(),
        targets.clone(),
        stats.clone(),
        stopped,
    ));
    let start = Instant::now();
    let (mut next, mut last) = (start, (start, 0, 0));
    while start.elapsed() < args.duration {
        next += args.sample_every;
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let (ok, micros) = (stats.churn_ok(), stats.churn_micros.load(Relaxed));
        let done = (ok - last.1) as f64;
        let moment = Moment::Churn {
            at: now - start,
            rate: done / (now - last.0).as_secs_f64(),
            mean_ms: (micros - last.2) as f64 / done.max(1.0) / 1000.0,
            max_ms: stats.churn_max_micros.swap(0, Relaxed) as f64 / 1000.0,
        };
        last = (now, ok, micros);
        let row = Row::take(fleet, stats, moment);
        eprintln!("{}", row.line());
        rows.push(row);
    }
    stop.send_replace(true);
    churn.await??;
    rows.push(Row::take(fleet, stats, Moment::Event("churn stopped")));
    tunnels.close().await;
    fleet.wait_idle(Duration::from_secs(60)).await;
    rows.push(Row::take(fleet, stats, Moment::Event("all closed")));
    Ok(rows)
}
