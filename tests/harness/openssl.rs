//! OpenSSL's `s_server` and `s_client` as foreign TLS peers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};

use crate::WAIT;
use crate::certs::Pem;
use crate::node::free_port;

/// `openssl s_server -quiet`: what the client sends arrives on its stdout, line by line.
pub struct SServer {
    child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    pub stdin: Option<ChildStdin>,
}

impl SServer {
    pub fn start(pem: &Pem, extra: &[&str]) -> Self {
        Self::start_on(free_port(), pem, extra)
    }

    /// Starts on `addr` (e.g. to replace another server on the same port).
    pub fn start_on(addr: SocketAddr, pem: &Pem, extra: &[&str]) -> Self {
        Self::start_in(std::path::Path::new("."), addr, pem, extra)
    }

    /// Starts in the folder `cwd` (what `-WWW` and `-HTTP` serve files from).
    pub fn start_in(cwd: &std::path::Path, addr: SocketAddr, pem: &Pem, extra: &[&str]) -> Self {
        let mut child = Command::new("openssl")
            .current_dir(cwd)
            .args(["s_server", "-quiet", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&pem.cert)
            .arg("-key")
            .arg(&pem.key)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        let server = Self {
            child,
            addr,
            lines,
            stdin,
        };
        server.wait_listening();
        server
    }

    /// `-quiet` prints nothing when ready, so readiness is a TCP connect that succeeds
    /// (s_server shrugs off the probe's failed handshake and keeps accepting).
    fn wait_listening(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not start"
            );
            std::thread::yield_now();
        }
    }

    /// The next line s_server printed (client data, or `stderr: ...`).
    pub fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line from s_server")
    }

    /// Sends `line` through `via` (a listener that leads here) and waits until it arrives.
    pub fn send_line(&self, via: SocketAddr, line: &str) {
        let mut client = std::net::TcpStream::connect(via).unwrap();
        client.write_all(format!("{line}\n").as_bytes()).unwrap();
        assert_eq!(self.wait_line(line), line);
    }

    /// Lines until one contains `needle`.
    pub fn wait_line(&self, needle: &str) -> String {
        loop {
            let line = self.line();
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl s_client` against `addr`, sends `input`, closes stdin, returns stdout.
pub fn s_client(addr: SocketAddr, extra: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(addr.to_string())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin: ChildStdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    out
}
