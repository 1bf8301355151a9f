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
        let (path, metrics) = Node::write_config(dir, io, node_extra, body);
        Node::run(path, Some(metrics))
    }

    /// Writes the config [`Node::start`] would run (in `dir`, with a fresh metrics port).
    pub fn write_config(dir: &Path, io: Io, node_extra: &str, body: &str) -> (PathBuf, SocketAddr) {
        let metrics = free_port();
        // State beside the config (never the installed default), unless the test says.
        let state = match node_extra.contains("state_dir") {
            true => "",
            false => "state_dir = \"state\"\n",
        };
        let config = format!(
            "[node]\nio = \"{}\"\nworkers = 2\nmetrics_listen = \"{metrics}\"\n{state}{node_extra}\n{body}",
            io.as_str()
        );
        let path = dir.join(format!("node-{}.toml", unique()));
        std::fs::write(&path, config).unwrap();
        (path, metrics)
    }

    /// [`Node::start`] with the descriptor limit (soft, hard) set before the node's first
    /// instruction (`prlimit` execs the node: same process).
    pub fn start_limited(
        dir: &Path,
        io: Io,
        nofile: (u64, u64),
        node_extra: &str,
        body: &str,
    ) -> Node {
        let (path, metrics) = Node::write_config(dir, io, node_extra, body);
        let limit = format!("--nofile={}:{}", nofile.0, nofile.1);
        let command = Node::command_via("prlimit", &[&limit, "--"], &path);
        Node::launch(command, path, Some(metrics))
    }

    /// Starts a node on an existing config file (e.g. again, after a restart).
    pub fn run(config: PathBuf, metrics: Option<SocketAddr>) -> Node {
        let command = Node::command(&config);
        Node::launch(command, config, metrics)
    }

    /// [`Node::command`] started through `launcher` (`prlimit`, `unshare`, …), which then
    /// execs the node: the same process, with its environment.
    pub fn command_via(launcher: &str, args: &[&str], config: &Path) -> Command {
        let node = Node::command(config);
        let mut command = Command::new(launcher);
        command
            .args(args)
            .arg(node.get_program())
            .args(node.get_args());
        for (key, value) in node.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command
    }

    /// The command that runs a node on `config` with JSON logs.
    pub fn command(config: &Path) -> Command {
        let mut command = node_command();
        command
            .args(["run", "-c"])
            .arg(config)
            .args(["--log-format", "json"])
            .env("OSGATE_LOG", "info,osgate::tls=debug");
        command
    }

    /// Starts `command` (a node on `config`, perhaps wrapped or with a changed environment)
    /// and waits until it serves.
    pub fn launch(command: Command, config: PathBuf, metrics: Option<SocketAddr>) -> Node {
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

    /// Sends `signal` (`HUP`, `TERM`, `INT`) to the node.
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Rewrites the config file and sends SIGHUP; returns the reload's log line (`reloaded`
    /// or `reload refused; nothing changed`), the first one after `seen` lines.
    pub fn reload(&mut self, config: &str) -> Value {
        std::fs::write(&self.config, config).unwrap();
        let seen = self.process.log.len();
        self.signal("HUP");
        self.wait_after(seen, is_reload_end)
    }

    /// Waits for a log event matching `pred` among the lines after the first `seen`.
    pub fn wait_after(&mut self, seen: usize, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.process.log.iter().skip(seen).find(|v| pred(v)) {
                return found.clone();
            }
            self.process.receive(deadline);
        }
    }

    /// Waits until the node exits (its log ends) and returns its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.process.wait_exit(WAIT).code()
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }
}

/// The log line that ends a reload, whether it applied or was refused.
pub fn is_reload_end(v: &Value) -> bool {
    v["message"] == "reloaded: new connections use the new config; open ones finish on theirs"
        || v["message"] == "reload refused; nothing changed"
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
