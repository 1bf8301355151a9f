//! The load: long-lived tunnels that ping, churn connections at a fixed rate, and the echo
//! backend (run as its own process: `soak backend`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::Error;
use crate::args::Args;

/// One exchange (connect, echo, close) or one ping may take this long before it counts failed.
const DEADLINE: Duration = Duration::from_secs(10);
/// Tunnels being opened at once during the ramp.
const RAMP_CONCURRENCY: usize = 200;
/// Errors kept verbatim for the report.
const KEEP_ERRORS: usize = 5;

/// Counters the sampler reads while the load runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub churn_ok: AtomicU64,
    pub churn_failed: AtomicU64,
    pub churn_skipped: AtomicU64,
    pub in_flight: AtomicU64,
    pub tunnels_alive: AtomicU64,
    pub tunnels_lost: AtomicU64,
    pub pings_ok: AtomicU64,
    /// Sum and maximum of completed churn exchanges' durations, µs.
    pub churn_micros: AtomicU64,
    pub churn_max_micros: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

impl Stats {
    pub fn churn_ok(&self) -> u64 {
        self.churn_ok.load(Relaxed)
    }

    fn note(&self, what: &str, e: &dyn std::fmt::Display) {
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < KEEP_ERRORS
        {
            errors.push(format!("{what}: {e}"));
        }
    }
}

/// The open long-lived tunnels; [`Tunnels::close`] ends them.
#[derive(Debug)]
pub struct Tunnels {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Tunnels {
    /// Half-closes every tunnel and waits until each has seen the far side close.
    pub async fn close(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens `args.tunnels` tunnels round-robin over `targets`; fails if any cannot be opened.
pub async fn open_tunnels(
    args: &Args,
    targets: &[SocketAddr],
    stats: &Arc<Stats>,
) -> Result<Tunnels, Error> {
    let (stop, stopped) = watch::channel(false);
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let ramp = Arc::new(Semaphore::new(RAMP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for id in 0..args.tunnels {
        let addr = targets[id % targets.len()];
        // Pings spread evenly over the period, not all at once.
        let phase = args.ping_every.mul_f64(id as f64 / args.tunnels as f64);
        let (stats, ramp, opened_tx) = (stats.clone(), ramp.clone(), opened_tx.clone());
        let (every, stopped) = (args.ping_every, stopped.clone());
        tasks.spawn(async move {
            let permit = ramp.acquire_owned().await;
            let stream = timeout(DEADLINE, open(addr, id as u64)).await;
            drop(permit);
            let stream = match stream {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return drop(opened_tx.send(Err(e.to_string()))),
                Err(_) => return drop(opened_tx.send(Err("timed out".into()))),
            };
            stats.tunnels_alive.fetch_add(1, Relaxed);
            let _ = opened_tx.send(Ok(()));
            hold(stream, id as u64, phase, every, stopped, &stats).await;
        });
    }
    drop(opened_tx);
    let (mut failed, mut first) = (0, None);
    // Each task reports once (and keeps its sender while it holds the tunnel).
    for _ in 0..args.tunnels {
        let Some(result) = opened.recv().await else {
            return Err("a tunnel task ended without reporting".into());
        };
        if let Err(e) = result {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(Tunnels { stop, tasks }),
        Some(e) => Err(format!("{failed} of {} tunnels did not open: {e}", args.tunnels).into()),
    }
}

async fn open(addr: SocketAddr, id: u64) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    ping(&mut stream, id, 0).await?;
    Ok(stream)
}

/// Pings every `every` until told to stop, then closes cleanly. A failed ping loses the tunnel.
async fn hold(
    mut stream: TcpStream,
    id: u64,
    phase: Duration,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
    stats: &Stats,
) {
    let mut next = Instant::now() + phase;
    for count in 1.. {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            () = tokio::time::sleep_until(next.into()) => {}
        }
        next += every;
        match timeout(DEADLINE, ping(&mut stream, id, count)).await {
            Ok(Ok(())) => stats.pings_ok.fetch_add(1, Relaxed),
            outcome => {
                stats.tunnels_alive.fetch_sub(1, Relaxed);
                stats.tunnels_lost.fetch_add(1, Relaxed);
                let e = outcome.map_or_else(|_| "timed out".to_string(), |r| format!("{r:?}"));
                return stats.note("tunnel ping", &e);
            }
        };
    }
    let _ = timeout(DEADLINE, close(&mut stream)).await;
    stats.tunnels_alive.fetch_sub(1, Relaxed);
}

/// 16 bytes out, the same 16 back.
async fn ping(stream: &mut TcpStream, id: u64, count: u64) -> std::io::Result<()> {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..].copy_from_slice(&count.to_le_bytes());
    stream.write_all(&out).await?;
    let mut back = [0; 16];
    stream.read_exact(&mut back).await?;
    match back == out {
        true => Ok(()),
        false => Err(std::io::Error::other("the echo differs from the ping")),
    }
}

/// Half-closes and waits for the far side's close (every hop relayed the FIN both ways).
async fn close(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.shutdown().await?;
    let mut rest = [0; 64];
    while stream.read(&mut rest).await? > 0 {}
    Ok(())
}

/// Starts `rate` short connections a second round-robin over `targets` until told to stop,
/// then waits for those in flight. Over `max_in_flight` at once, a due connection is skipped
/// and counted instead.
pub async fn churn(
    rate: u64,
    max_in_flight: usize,
    targets: Vec<SocketAddr>,
    stats: Arc<Stats>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (start, mut started) = (Instant::now(), 0u64);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while started < due {
            started += 1;
            if stats.in_flight.load(Relaxed) as usize >= max_in_flight {
                stats.churn_skipped.fetch_add(1, Relaxed);
                continue;
            }
            let addr = targets[started as usize % targets.len()];
            stats.in_flight.fetch_add(1, Relaxed);
            tasks.spawn(churn_one(addr, started, stats.clone()));
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn churn_one(addr: SocketAddr, id: u64, stats: Arc<Stats>) {
    let began = Instant::now();
    let result = timeout(DEADLINE, exchange(addr, id)).await;
    stats.in_flight.fetch_sub(1, Relaxed);
    match result {
        Ok(Ok(())) => {
            let micros = began.elapsed().as_micros() as u64;
            stats.churn_micros.fetch_add(micros, Relaxed);
            stats.churn_max_micros.fetch_max(micros, Relaxed);
            stats.churn_ok.fetch_add(1, Relaxed);
        }
        Ok(Err(e)) => {
            stats.churn_failed.fetch_add(1, Relaxed);
            stats.note("churn", &e);
        }
        Err(_) => {
            stats.churn_failed.fetch_add(1, Relaxed);
            stats.note("churn", &"timed out");
        }
    }
}

/// Connect, 64 bytes echoed, half-close, the far side's close.
async fn exchange(addr: SocketAddr, id: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let out: Vec<u8> = id.to_le_bytes().into_iter().cycle().take(64).collect();
    stream.write_all(&out).await?;
    let mut back = [0; 64];
    stream.read_exact(&mut back).await?;
    if back[..] != out[..] {
        return Err(std::io::Error::other("the echo differs from what was sent"));
    }
    close(&mut stream).await
}

/// `soak backend [ADDR]`: an echo server that half-closes after the client's EOF; prints
/// `listening ADDR` on stdout once bound.
pub fn backend_main(addr: Option<&str>) -> Result<(), Error> {
    let addr: SocketAddr = addr.unwrap_or("127.0.0.1:0").parse()?;
    osgate_benches::sys::raise_nofile_limit()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        println!("listening {}", listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => drop(tokio::spawn(echo(stream))),
                // Out of descriptors or similar: the soak's verdict shows it as failures.
                Err(e) => {
                    eprintln!("backend: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}
