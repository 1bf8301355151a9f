//! An osgate node process with JSON logs, its bound addresses, outcomes and metrics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Instant;

use serde_json::Value;

use crate::WAIT;

/// The I/O driver a node is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Uring,
    Epoll,
}

impl Io {
    pub fn as_str(self) -> &'static str {
        match self {
            Io::Uring => "uring",
            Io::Epoll => "epoll",
        }
    }
}

/// The `osgate` binary next to this test's build output (`cargo build --bins` builds it).
pub fn osgate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("osgate");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// A running node. Killed on drop.
pub struct Node {
    child: Child,
    events: Receiver<Value>,
    /// Every log line seen so far.
    pub log: Vec<Value>,
    /// Bound addresses by config key (`outbound[0]`, `inbound[0]`).
    pub listeners: HashMap<String, SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl Node {
    /// Starts a node on the `[node]`-less `body` (listeners), with `io` and a metrics port.
    /// `dir` anchors relative paths.
    pub fn start(dir: &Path, io: Io, node_extra: &str, body: &str) -> Node {
        let metrics = free_port();
        let config = format!(
            "[node]\nio = \"{}\"\nworkers = 2\nmetrics_listen = \"{metrics}\"\n{node_extra}\n{body}",
            io.as_str()
        );
        let path = dir.join(format!("node-{}.toml", unique()));
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(osgate_bin())
            .args(["run", "-c"])
            .arg(&path)
            .args(["--log-format", "json"])
            .env("OSGATE_LOG", "info,osgate::tls=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            child,
            events,
            log: Vec::new(),
            listeners: HashMap::new(),
            metrics: Some(metrics),
        };
        node.wait_for(|v| v["message"] == "osgate node started");
        let listeners = node
            .log
            .iter()
            .filter(|v| v["message"] == "listening")
            .map(|v| {
                let key = v["key"].as_str().unwrap().to_owned();
                (key, v["listen"].as_str().unwrap().parse().unwrap())
            })
            .collect();
        node.listeners = listeners;
        node
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.listeners[key]
    }

    /// Waits for a log event matching `pred` (already seen or new) and returns it.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.log.iter().find(|v| pred(v)) {
                return found.clone();
            }
            self.receive(deadline);
        }
    }

    /// The next outcome record of `direction` not yet returned by this function.
    pub fn outcome(&mut self, direction: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let untaken = self
                .log
                .iter()
                .position(|v| is_outcome(v, direction) && v["taken"] != true);
            if let Some(i) = untaken {
                self.log[i]["taken"] = Value::Bool(true);
                return self.log[i].clone();
            }
            self.receive(deadline);
        }
    }

    /// Appends the next log event, failing the test at `deadline` or if the node exited.
    fn receive(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(value) => self.log.push(value),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no matching event in {WAIT:?}; log: {:#?}", self.log)
            }
            Err(RecvTimeoutError::Disconnected) => panic!("node exited; log: {:#?}", self.log),
        }
    }

    /// The node's Prometheus exposition.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of the sample `name{labels}` (labels in any order), 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.scrape();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value.parse::<f64>().unwrap())
            .sum()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn is_outcome(v: &Value, direction: &str) -> bool {
    v["target"] == "osgate::outcome" && v["direction"] == direction
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago (for peers that cannot report their own).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `osgate` with `args` and returns (exit code, stderr).
pub fn osgate(args: &[&str]) -> (i32, String) {
    let output = Command::new(osgate_bin()).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
