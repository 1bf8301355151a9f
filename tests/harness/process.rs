//! A child process of the harness whose stderr is a JSON log stream, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Instant;

use serde_json::Value;

use crate::WAIT;

pub struct Process {
    pub child: Child,
    events: Receiver<Value>,
    /// Every log line seen so far (lines that are not JSON as strings).
    pub log: Vec<Value>,
}

impl Process {
    /// Spawns `command` with its stderr followed.
    pub fn spawn(mut command: Command) -> Process {
        let mut child = command
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
        Process {
            child,
            events,
            log: Vec::new(),
        }
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

    /// Appends the next log event, failing the test at `deadline` or if the process exited.
    pub fn receive(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(value) => self.log.push(value),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no matching event in {WAIT:?}; log: {:#?}", self.log)
            }
            Err(RecvTimeoutError::Disconnected) => panic!("process exited; log: {:#?}", self.log),
        }
    }

    /// Appends every log event received so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(value) = self.events.try_recv() {
            self.log.push(value);
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `signal` (`TERM`, `INT` or `HUP`) with kill(2).
    pub fn signal(&self, signal: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let signal = match signal {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "HUP" => Signal::HUP,
            other => panic!("no signal {other} in the harness"),
        };
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, signal).unwrap();
    }

    /// Waits up to `within` for the process to exit: reads its log to the end (it closed
    /// stderr), then reaps it.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(value) => self.log.push(value),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("still running after {within:?}; log: {:#?}", self.log)
                }
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of the sample `name{labels}` (labels in any order) in a Prometheus exposition,
/// summed over matching series; 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
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

/// `GET path` from an operations endpoint: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// GET /metrics from `addr`.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs `command` to completion; fails the test unless it succeeded; its standard output.
pub fn stdout_of(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
