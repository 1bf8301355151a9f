//! Plain TCP peers: servers that stand in for backends and cleartext peers, and clients.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::WAIT;

/// What one side of a transfer saw: byte count and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub len: u64,
    pub sha256: [u8; 32],
}

/// Deterministic pseudo-random bytes (xorshift64*), so each side can be checked end to end.
pub struct Stream {
    state: u64,
    left: u64,
}

impl Stream {
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed | 1,
            left: len,
        }
    }

    /// Fills `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.left as usize);
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        n
    }

    /// The digest of the whole stream, computed without sending it.
    pub fn expected(seed: u64, len: u64) -> Seen {
        let mut stream = Self::new(seed, len);
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = stream.fill(&mut buf);
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Seen {
            len,
            sha256: hasher.finalize().into(),
        }
    }
}

/// Writes the stream `seed`/`len` to `out`, then half-closes it.
pub fn send(out: &mut TcpStream, seed: u64, len: u64) -> std::io::Result<()> {
    let mut stream = Stream::new(seed, len);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = stream.fill(&mut buf);
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.shutdown(Shutdown::Write)
}

/// Reads to EOF, hashing.
pub fn receive(input: &mut TcpStream) -> std::io::Result<Seen> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Seen {
        len,
        sha256: hasher.finalize().into(),
    })
}

/// Sends and receives at once on `stream` (both directions concurrently).
pub fn exchange(stream: TcpStream, seed: u64, len: u64) -> std::io::Result<Seen> {
    stream.set_read_timeout(Some(WAIT))?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || send(&mut writer, seed, len));
    let mut reader = stream;
    let seen = receive(&mut reader);
    sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    seen
}

/// A TCP server on a fresh loopback port; each accepted connection runs `handler` on its own
/// thread, and what handlers return arrives on [`Server::results`].
pub struct Server<T> {
    pub addr: SocketAddr,
    results: Receiver<T>,
    _accept: JoinHandle<()>,
}

impl<T: Send + 'static> Server<T> {
    pub fn start(handler: impl Fn(TcpStream) -> T + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (e.g. to replace another server on the same port).
    pub fn start_on(
        addr: SocketAddr,
        handler: impl Fn(TcpStream) -> T + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, results) = channel();
        let handler = std::sync::Arc::new(handler);
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (tx, handler) = (tx.clone(), handler.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(WAIT));
                    let _ = tx.send(handler(stream));
                });
            }
        });
        Self {
            addr,
            results,
            _accept: accept,
        }
    }

    /// The next connection's result.
    pub fn result(&self) -> T {
        self.results
            .recv_timeout(WAIT)
            .expect("server handler result")
    }

    /// A result if a connection already finished.
    pub fn try_result(&self) -> Option<T> {
        self.results.try_recv().ok()
    }
}

/// Echoes until EOF, then half-closes. Returns the bytes echoed.
pub fn echo(mut stream: TcpStream) -> u64 {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = stream.shutdown(Shutdown::Write);
    total
}

/// Everything received until EOF (or error), as raw bytes.
pub fn record(mut stream: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    all
}

/// Reads until EOF, *then* answers `got N bytes` and closes: only a relay that honours
/// half-close delivers the answer.
pub fn reply_after_eof(mut stream: TcpStream) -> u64 {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let _ = write!(stream, "got {} bytes", all.len());
    let _ = stream.shutdown(Shutdown::Write);
    all.len() as u64
}

/// Reads exactly `n` bytes, answers `got N bytes`, and closes.
pub fn read_then_reply(n: usize) -> impl Fn(TcpStream) -> Vec<u8> + Send + Sync + 'static {
    move |mut stream| {
        let mut got = vec![0; n];
        if stream.read_exact(&mut got).is_err() {
            return Vec::new();
        }
        let _ = write!(stream, "got {n} bytes");
        let _ = stream.shutdown(Shutdown::Both);
        got
    }
}

/// A client: connects to `addr`, sends `payload`, half-closes, and returns everything
/// received until the other side closes (empty when the connection was refused).
pub fn call(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    // A refusing node may close (even reset) before the payload or the FIN goes out.
    let _ = client.write_all(payload);
    let _ = client.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    got
}
