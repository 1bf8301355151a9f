//! An osgate node process with JSON logs, its bound addresses, outcomes and metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::WAIT;
use crate::process::{Process, sample, scrape};

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
    bin("osgate")
}

/// `osgate`, or, when `OSGATE_TEST_SECCOMP` names a seccomp profile, `osgate` under that
/// profile (as a container runtime applies it), so that a whole suite checks the profile.
fn node_command() -> Command {
    let Some(profile) = std::env::var_os("OSGATE_TEST_SECCOMP") else {
        return Command::new(osgate_bin());
    };
    let mut command =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/seccomp_exec.py"));
    command.arg(profile).arg("--").arg(osgate_bin());
    command
}

/// A binary of the workspace next to this test's build output.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// A running node. Killed on drop.
pub struct Node {
    pub process: Process,
    /// Bound addresses by config key (`outbound[0]`, `inbound[0]`).
    pub listeners: HashMap<String, SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// The config file it runs on.
    pub config: PathBuf,
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
        Node::run(path, Some(metrics))
    }

    /// Starts a node on an existing config file (e.g. again, after a restart).
    pub fn run(config: PathBuf, metrics: Option<SocketAddr>) -> Node {
        let mut command = node_command();
        command
            .args(["run", "-c"])
            .arg(&config)
            .args(["--log-format", "json"])
            .env("OSGATE_LOG", "info,osgate::tls=debug");
        let mut process = Process::spawn(command);
        process.wait_for(|v| v["message"] == "osgate node started");
        let listeners = process
            .log
            .iter()
            .filter(|v| v["message"] == "listening")
            .map(|v| {
                let key = v["key"].as_str().unwrap().to_owned();
                (key, v["listen"].as_str().unwrap().parse().unwrap())
            })
            .collect();
        Node {
            process,
            listeners,
            metrics,
            config,
        }
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.listeners[key]
    }

    /// Every log line seen so far.
    pub fn log(&self) -> &[Value] {
        &self.process.log
    }

    /// Waits for a log event matching `pred` (already seen or new) and returns it.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.wait_for(pred)
    }

    /// The next outcome record of `direction` not yet returned by this function.
    pub fn outcome(&mut self, direction: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = &mut self.process.log;
            let untaken = log
                .iter()
                .position(|v| is_outcome(v, direction) && v["taken"] != true);
            if let Some(i) = untaken {
                log[i]["taken"] = Value::Bool(true);
                return log[i].clone();
            }
            self.process.receive(deadline);
        }
    }

    /// The node's Prometheus exposition.
    pub fn scrape(&self) -> String {
        scrape(self.metrics.unwrap())
    }

    /// The value of the sample `name{labels}` (labels in any order), 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.scrape(), name, labels)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

fn is_outcome(v: &Value, direction: &str) -> bool {
    v["target"] == "osgate::outcome" && v["direction"] == direction
}

/// A loopback port that was free a moment ago (for peers that cannot report their own).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn unique() -> u64 {
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

/// Creates an empty capability store at `store` and returns the `[tofu]` section using it.
pub fn tofu_store(store: &Path) -> String {
    let (code, err) = osgate(&["pins", "--store", store.to_str().unwrap(), "init"]);
    assert_eq!(code, 0, "{err}");
    format!("[tofu]\nstore = \"{}\"\n", store.display())
}
