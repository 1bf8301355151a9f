//! The I/O drivers: one trait over owned-buffer TCP streams, two implementations.
//!
//! Owned buffers because io_uring needs them: a buffer handed to the kernel stays the kernel's
//! until the operation completes. The same relay code runs over both drivers.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

pub mod buffers;
pub mod epoll;
pub mod uring;

/// A connected TCP stream, used from one thread.
///
/// `read` and `write_all` may be in flight at the same time (one each), from two futures.
pub(crate) trait Conn: 'static {
    /// Reads up to `want` bytes. Returns the count (0 at EOF) and the buffer holding them;
    /// give the buffer back with [`buffers::give`].
    async fn read(&self, want: usize) -> (io::Result<usize>, Vec<u8>);

    /// Writes `buf[..len]` completely and hands the buffer back.
    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>);

    /// Resolves when data (or EOF) can be read. Safe to cancel: nothing is consumed.
    async fn readable(&self) -> io::Result<()>;

    /// Reads what is there without waiting (`WouldBlock` if nothing is).
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize>;

    fn raw_fd(&self) -> RawFd;

    fn shutdown(&self, how: Shutdown) {
        // ENOTCONN after the peer went away is expected and harmless.
        let _ = crate::sys::sock_ref(self.raw_fd(), |s| s.shutdown(how));
    }

    /// Makes the eventual close send RST instead of FIN: the far side sees an abort.
    fn abort_on_close(&self) {
        let _ = crate::sys::sock_ref(self.raw_fd(), |s| s.set_linger(Some(Duration::ZERO)));
    }
}

/// An I/O driver: how to accept and open connections.
pub(crate) trait Driver: Copy + 'static {
    type Conn: Conn;
    type Listener: 'static;
    const NAME: &'static str;

    fn listener(socket: std::net::TcpListener) -> io::Result<Self::Listener>;

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Conn, SocketAddr)>;

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self::Conn>;
}

/// Opens a TCP connection with tokio (cancel-safe under a timeout on both drivers).
async fn connect_std(addr: SocketAddr, timeout: Duration) -> io::Result<std::net::TcpStream> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let stream = stream.into_std()?;
    tune(SockRef::from(&stream))?;
    Ok(stream)
}

/// Keepalive on both legs (CONFORMANCE F.38): a peer that vanishes without FIN or RST (power
/// loss, a dropped NAT or firewall mapping) is noticed after 60 s of silence plus 6 unanswered
/// probes 10 s apart — 2 minutes — and its connection torn down, instead of holding two
/// descriptors until the idle timeout (or forever, while the other side keeps talking). The
/// probes also keep middlebox mappings of idle tunnels alive. The kernel defaults (2 h idle,
/// 9 × 75 s) are far too slow for a gateway.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Options every relayed TCP socket gets, accepted or connected: no Nagle delay (records
/// are written whole), and keepalive.
fn tune(socket: SockRef<'_>) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)
}

/// [`tune`] for a socket held by a driver's stream type.
fn tune_fd(fd: RawFd) -> io::Result<()> {
    crate::sys::sock_ref(fd, tune)
}
