//! The processes under test: node pairs and the echo backend, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::args::Args;
use crate::sample;

/// One `osgate` process with its metrics address and log file.
#[derive(Debug)]
pub struct NodeProc {
    pub name: String,
    pub child: Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl NodeProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A node log's WARN and ERROR lines: how many, and of which kinds (with counts).
#[derive(Debug)]
pub struct LogSummary {
    pub node: String,
    pub count: usize,
    pub kinds: Vec<(String, usize)>,
}

#[derive(Debug)]
pub struct Fleet {
    /// Outbound and inbound node of each pair, in that order.
    pub nodes: Vec<NodeProc>,
    entries: Vec<SocketAddr>,
    backend: Child,
}

impl Fleet {
    pub fn start(args: &Args, dir: &Path) -> Result<Fleet, Error> {
        let osgate = osgate_bin(args)?;
        let (mut backend, backend_addr) = start_backend()?;
        let started = start_pairs(args, dir, &osgate, backend_addr);
        let (nodes, entries) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = backend.kill();
                return Err(e);
            }
        };
        Ok(Fleet {
            nodes,
            entries,
            backend,
        })
    }

    /// The outbound nodes' listeners, where clients connect.
    pub fn entries(&self) -> Vec<SocketAddr> {
        self.entries.clone()
    }

    /// Waits (up to `limit`) until no node reports an active connection.
    pub async fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let active: f64 = self
                .nodes
                .iter()
                .filter_map(|n| sample::metric(n.metrics, "osgate_connections_active"))
                .sum();
            if active == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// WARN and ERROR lines per node log.
    pub fn log_summary(&self) -> Vec<LogSummary> {
        self.nodes
            .iter()
            .map(|node| {
                let text = std::fs::read_to_string(&node.log).unwrap_or_default();
                let mut kinds: Vec<(String, usize)> = Vec::new();
                let mut count = 0;
                for line in text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                {
                    count += 1;
                    // Without the timestamp, cut short: lines of one kind differ only later.
                    let plain = plain(line);
                    let kind: String = plain
                        .split_once(' ')
                        .map_or(plain.as_str(), |(_, rest)| rest.trim_start())
                        .chars()
                        .take(90)
                        .collect();
                    match kinds.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, n)) => *n += 1,
                        None => kinds.push((kind, 1)),
                    }
                }
                LogSummary {
                    node: node.name.clone(),
                    count,
                    kinds,
                }
            })
            .collect()
    }
}

/// `line` without terminal colour escapes (ESC [ … m).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

/// This binary as `soak backend`, in its own process (its own descriptor budget).
fn start_backend() -> Result<(Child, SocketAddr), Error> {
    let mut child = crate::sys::die_with_parent(&mut Command::new(std::env::current_exe()?))
        .arg("backend")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("backend: no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    match line.trim().strip_prefix("listening ").map(str::parse) {
        Some(Ok(addr)) => Ok((child, addr)),
        _ => {
            let _ = child.kill();
            Err(format!("backend did not start: `{}`", line.trim()).into())
        }
    }
}

fn start_pairs(
    args: &Args,
    dir: &Path,
    osgate: &Path,
    backend: SocketAddr,
) -> Result<(Vec<NodeProc>, Vec<SocketAddr>), Error> {
    let (cert, key) = (dir.join("node.crt"), dir.join("node.key"));
    let keygen = [
        "keygen".as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--name".as_ref(),
        "gw.test".as_ref(),
    ];
    run_ok(osgate, &keygen)?;
    let mut nodes = Vec::new();
    let mut entries = Vec::new();
    for pair in 0..args.pairs {
        let (inbound, outbound) = (free_port()?, free_port()?);
        let store = dir.join(format!("pins-{pair}"));
        run_ok(
            osgate,
            &[
                "pins".as_ref(),
                "--store".as_ref(),
                store.as_os_str(),
                "init".as_ref(),
            ],
        )?;
        let inbound_body = format!(
            "[[inbound]]\nlisten = \"{inbound}\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let outbound_body = format!(
            "[tofu]\nstore = \"{}\"\n\n[[outbound]]\nlisten = \"{outbound}\"\npeer = \"{inbound}\"\npolicy = \"encrypt\"\n",
            store.display()
        );
        // Inbound first, so the outbound node's peer is up.
        let inbound_node = spawn_node(args, dir, osgate, &format!("in{pair}"), &inbound_body)?;
        wait_port(inbound)?;
        let outbound_node = spawn_node(args, dir, osgate, &format!("out{pair}"), &outbound_body)?;
        wait_port(outbound)?;
        nodes.extend([outbound_node, inbound_node]);
        entries.push(outbound);
    }
    Ok((nodes, entries))
}

/// Starts one node with caps above the soak's load (all clients come from 127.0.0.1) and
/// warnings-only logs (an outcome line per connection would be most of the work).
fn spawn_node(
    args: &Args,
    dir: &Path,
    osgate: &Path,
    name: &str,
    body: &str,
) -> Result<NodeProc, Error> {
    let metrics = free_port()?;
    let config = format!(
        "[node]\nio = \"{}\"\nworkers = 2\nmetrics_listen = \"{metrics}\"\nmax_connections = 30000\nmax_connections_per_source = 30000\n\n{body}",
        args.io
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let log = dir.join(format!("{name}.log"));
    let child = crate::sys::die_with_parent(&mut Command::new(osgate))
        .args(["run", "-c"])
        .arg(&path)
        .env("OSGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let node = NodeProc {
        name: name.into(),
        child,
        metrics,
        log,
    };
    wait_port(metrics)?;
    Ok(node)
}

fn run_ok(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<(), Error> {
    let out = Command::new(bin).args(args).output()?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{} {args:?}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

fn free_port() -> Result<SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Until something accepts on `addr` (a node is up once its listeners and metrics are).
fn wait_port(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after 20 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `osgate` next to this binary (target/release/), unless `--osgate` names one.
fn osgate_bin(args: &Args) -> Result<PathBuf, Error> {
    if let Some(path) = &args.osgate {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().ok_or("the soak binary has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().ok_or("the soak binary has no directory")?;
    }
    let bin = dir.join("osgate");
    match bin.exists() {
        true => Ok(bin),
        false => Err(format!(
            "{} is missing: build it first (cargo build --release -p osgate-node --bins), or pass --osgate",
            bin.display()
        )
        .into()),
    }
}
