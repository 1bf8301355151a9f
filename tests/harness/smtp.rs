//! SMTP peers over loopback: a scripted client that can misbehave (several commands in one
//! write, BDAT, STARTTLS), scripted destination servers that misbehave the ways E.30–E.34
//! describe, and wrappers for `swaks` and `posttls-finger`.
//!
//! Every read is one byte at a time in cleartext, so a peer never holds bytes past the line it
//! answered: what arrives after `220` to STARTTLS stays on the wire for the other side's
//! handshake, exactly as a real injection does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::WAIT;
use crate::certs::{AnyServer, Pem, server_config};
use crate::peers::Server;

/// The longest line a peer here reads before giving up on it.
const LINE_CAP: usize = 1 << 20;

/// A connection, cleartext or after STARTTLS.
pub enum Wire {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Client(s) => s.read(buf),
            Wire::Server(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Client(s) => s.write(buf),
            Wire::Server(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Client(s) => s.flush(),
            Wire::Server(s) => s.flush(),
        }
    }
}

impl Wire {
    fn tcp(self) -> TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Client(s) => s.sock,
            Wire::Server(s) => s.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Wire::Plain(_))
    }

    /// One line without its CRLF; `None` at EOF, on an error, or past [`LINE_CAP`].
    pub fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.read(&mut byte) {
                Ok(1) => {}
                _ => return None,
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
            if line.len() > LINE_CAP {
                return None;
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// One reply (RFC 5321 §4.2: lines `NNN-` then `NNN `); `None` if the peer closed.
    pub fn reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        Some(Reply { code, lines })
    }
}

/// An SMTP reply: its code and its lines as received.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether an EHLO reply advertises `keyword` (case-insensitive).
    pub fn has(&self, keyword: &str) -> bool {
        self.lines.iter().any(|l| {
            l.get(4..)
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// A scripted SMTP client.
pub struct Client {
    pub wire: Wire,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            wire: Wire::Plain(tcp),
        }
    }

    /// The next reply; fails the test if the server closed instead.
    pub fn reply(&mut self) -> Reply {
        self.wire.reply().expect("a reply before the server closed")
    }

    /// Writes `bytes` in one write (several commands at once, when asked).
    pub fn write(&mut self, bytes: &[u8]) {
        self.wire.write_all(bytes).unwrap();
        self.wire.flush().unwrap();
    }

    pub fn send(&mut self, line: &str) {
        self.write(format!("{line}\r\n").as_bytes());
    }

    pub fn command(&mut self, line: &str) -> Reply {
        self.send(line);
        self.reply()
    }

    /// TLS on the connection (after a `220` to STARTTLS), server unverified, SNI `name`.
    pub fn handshake(&mut self, name: &str) -> Result<(), std::io::Error> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer::default()))
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = std::mem::replace(&mut self.wire, Wire::Plain(dummy())).tcp();
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.wire = Wire::Client(Box::new(tls));
        Ok(())
    }

    /// EHLO, STARTTLS (expects 220), the handshake, EHLO again: the post-TLS EHLO reply.
    pub fn starttls(&mut self, name: &str) -> Reply {
        assert_eq!(self.command("EHLO client.test").code, 250);
        let ready = self.command("STARTTLS");
        assert_eq!(ready.code, 220, "{}", ready.text());
        self.handshake(name).unwrap();
        self.command("EHLO client.test")
    }

    /// MAIL, RCPT, DATA with `body` (dot-stuffed here), ending in the final reply.
    pub fn mail(&mut self, from: &str, to: &str, body: &str) -> Reply {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).code, 250);
        assert_eq!(self.command(&format!("RCPT TO:<{to}>")).code, 250);
        assert_eq!(self.command("DATA").code, 354);
        let mut data = String::new();
        for line in body.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.write(data.as_bytes());
        self.reply()
    }

    /// QUIT, expecting 221, and close (a real client closes then: the relay ends).
    pub fn quit(mut self) {
        let bye = self.command("QUIT");
        assert_eq!(bye.code, 221, "{}", bye.text());
    }

    /// Whether the server closes (EOF or reset) within the harness deadline.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match self.wire.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }
}

/// A closed placeholder while the stream changes hands.
fn dummy() -> TcpStream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    TcpStream::connect(listener.local_addr().unwrap()).unwrap()
}

/// Plain SMTP submission of one message: the final reply to DATA.
pub fn submit(addr: SocketAddr, from: &str, to: &str, body: &str) -> Reply {
    let mut client = Client::connect(addr);
    assert_eq!(client.reply().code, 220);
    assert_eq!(client.command("EHLO client.test").code, 250);
    let done = client.mail(from, to, body);
    client.quit();
    done
}

/// How a scripted destination server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// A well-behaved server with STARTTLS.
    Tls,
    /// EHLO without STARTTLS (stripped, as an attacker on the path does).
    NoStarttls,
    /// `454 4.7.0 TLS not available` to STARTTLS.
    Refuse454,
    /// `220` to STARTTLS followed at once by a forged reply (response injection, E.31).
    InjectAfter220,
    /// `220` to STARTTLS, then bytes that are no TLS, then close.
    BrokenHandshake,
    /// An EHLO reply line of 10,000 bytes (E.34).
    LongLine,
    /// Accepts and never says a word.
    Silent,
    /// The greeting one byte per write, then as [`Script::Tls`].
    ByteByByte,
    /// Greets with `554` (RFC 5321 §3.1: no service here), then as [`Script::NoStarttls`].
    Refuses554,
}

/// The forged reply [`Script::InjectAfter220`] sends before the handshake.
pub const INJECTED: &str = "250-INJECTED\r\n250 AUTH PLAIN\r\n";
/// What the scripted server's post-TLS EHLO reply says on its first line.
pub const AFTER_TLS: &str = "scripted.test after TLS";

/// A scripted server: each connection's result is every line it received, the lines after
/// the handshake prefixed `tls: `, and `handshake-failed` where it failed.
pub struct Scripted {
    server: Server<Vec<String>>,
    pub addr: SocketAddr,
}

impl Scripted {
    pub fn start(script: Script, pem: &Pem) -> Scripted {
        Scripted::start_on("127.0.0.1:0".parse().unwrap(), script, pem)
    }

    pub fn start_on(addr: SocketAddr, script: Script, pem: &Pem) -> Scripted {
        let config = server_config(pem);
        let server = Server::start_on(addr, move |tcp| serve(script, &config, tcp));
        let addr = server.addr;
        Scripted { server, addr }
    }

    /// The lines of the next connection to end.
    pub fn session(&self) -> Vec<String> {
        self.server.result()
    }
}

/// A plain SMTP server for a listener's backend: a greeting, then 250 to every command (354
/// to DATA) until QUIT. Returns the lines it received.
pub fn plain_backend(stream: TcpStream) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut out = stream.try_clone().unwrap();
    let _ = out.write_all(b"220 backend.d.test ESMTP\r\n");
    let mut seen = Vec::new();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let verb = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        seen.push(line);
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-backend.d.test\r\n250 8BITMIME\r\n",
            "QUIT" => b"221 2.0.0 Bye\r\n",
            "DATA" => b"354 go on\r\n",
            _ => b"250 2.0.0 Ok\r\n",
        };
        if out.write_all(reply).is_err() || verb == "QUIT" {
            break;
        }
    }
    seen
}

/// Whether a session's lines include a transaction command (`MAIL`, `RCPT`, `DATA`, `BDAT`).
pub fn saw_transaction(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let l = l.strip_prefix("tls: ").unwrap_or(l).to_ascii_uppercase();
        ["MAIL", "RCPT", "DATA", "BDAT"]
            .iter()
            .any(|c| l.starts_with(c))
    })
}

fn serve(script: Script, config: &Arc<rustls::ServerConfig>, tcp: TcpStream) -> Vec<String> {
    let _ = tcp.set_nodelay(true);
    let mut wire = Wire::Plain(tcp);
    let mut seen = Vec::new();
    if script == Script::Silent {
        while let Some(line) = wire.line() {
            seen.push(line);
        }
        return seen;
    }
    let greeting: &[u8] = match script {
        Script::Refuses554 => b"554 5.3.2 scripted.test no service\r\n",
        _ => b"220 scripted.test ESMTP\r\n",
    };
    if script == Script::ByteByByte {
        for byte in greeting {
            if wire.write_all(&[*byte]).is_err() {
                return seen;
            }
            // The pace of the scenario, not a wait for anything.
            std::thread::sleep(Duration::from_millis(5));
        }
    } else if wire.write_all(greeting).is_err() {
        return seen;
    }
    while let Some(line) = wire.line() {
        let prefix = if wire.is_tls() { "tls: " } else { "" };
        seen.push(format!("{prefix}{line}"));
        match answer(script, &mut wire, &line) {
            Step::Go => {}
            Step::Close => break,
            Step::Tls => {
                let conn = ServerConnection::new(config.clone()).unwrap();
                let mut tls = StreamOwned::new(conn, wire.tcp());
                let ok = (|| {
                    while tls.conn.is_handshaking() {
                        tls.conn.complete_io(&mut tls.sock)?;
                    }
                    Ok::<_, std::io::Error>(())
                })();
                if ok.is_err() {
                    seen.push("handshake-failed".into());
                    break;
                }
                wire = Wire::Server(Box::new(tls));
            }
        }
    }
    seen
}

enum Step {
    Go,
    Close,
    Tls,
}

fn answer(script: Script, wire: &mut Wire, line: &str) -> Step {
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let reply: String = match verb.as_str() {
        "EHLO" if wire.is_tls() => format!("250-{AFTER_TLS}\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        "EHLO" if script == Script::LongLine => {
            format!("250-{}\r\n250 8BITMIME\r\n", "x".repeat(10_000))
        }
        "EHLO" if matches!(script, Script::NoStarttls | Script::Refuses554) => {
            "250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into()
        }
        "EHLO" => "250-scripted.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n".into(),
        "HELO" => "250 scripted.test\r\n".into(),
        "STARTTLS" => return starttls(script, wire),
        "DATA" => {
            let _ = wire.write_all(b"354 go ahead\r\n");
            while let Some(data) = wire.line() {
                if data == "." {
                    break;
                }
            }
            "250 2.0.0 queued\r\n".into()
        }
        "QUIT" => {
            let _ = wire.write_all(b"221 2.0.0 bye\r\n");
            return Step::Close;
        }
        _ => "250 2.0.0 ok\r\n".into(),
    };
    match wire.write_all(reply.as_bytes()) {
        Ok(()) => Step::Go,
        Err(_) => Step::Close,
    }
}

fn starttls(script: Script, wire: &mut Wire) -> Step {
    let reply: &[u8] = match script {
        Script::Refuse454 => b"454 4.7.0 TLS not available\r\n",
        Script::InjectAfter220 => {
            let mut both = b"220 2.0.0 ready\r\n".to_vec();
            both.extend_from_slice(INJECTED.as_bytes());
            // Both in one segment, as an injector on the path sends them.
            return match wire.write_all(&both) {
                Ok(()) => Step::Tls,
                Err(_) => Step::Close,
            };
        }
        Script::BrokenHandshake => {
            let _ = wire.write_all(b"220 2.0.0 ready\r\n");
            let _ = wire.write_all(b"this is not TLS\r\n");
            return Step::Close;
        }
        _ => b"220 2.0.0 ready\r\n",
    };
    if wire.write_all(reply).is_err() {
        return Step::Close;
    }
    match script {
        Script::Refuse454 => Step::Go,
        _ => Step::Tls,
    }
}

/// Runs `program` with `args`: (exit status success, stdout + stderr).
fn run(program: &str, args: &[String]) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed (apt-get install swaks postfix): {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `swaks --server addr` with `args`: (succeeded, its transcript).
pub fn swaks(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "--server".to_owned(),
        addr.to_string(),
        "--timeout".to_owned(),
        "20".to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    run("swaks", &all)
}

/// `posttls-finger` against `[127.0.0.1]:port` with `args` before the destination.
pub fn posttls_finger(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut all: Vec<String> = ["-t20", "-T20", "-c"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push(format!("[{}]:{}", addr.ip(), addr.port()));
    run("posttls-finger", &all)
}

/// `posttls-finger` with `resolver` as its system resolver, against `destination` (a domain
/// for its MX lookup, or `[host]:port`), with `args` before it.
pub fn posttls_finger_via(
    resolver: &crate::resolver::Resolver,
    destination: &str,
    args: &[&str],
) -> (bool, String) {
    let mut all: Vec<String> = ["-t20", "-T20", "-c"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect();
    all.push(destination.to_owned());
    // Its own main.cf (MAIL_CONFIG), never /etc/postfix's.
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("main.cf"),
        "compatibility_level = 3.6\ninet_protocols = ipv4\n",
    )
    .unwrap();
    resolver.run(
        "env",
        &[
            vec![
                format!("MAIL_CONFIG={}", config.path().display()),
                "posttls-finger".to_owned(),
            ],
            all,
        ]
        .concat(),
    )
}
