//! The I/O drivers: one trait over owned-buffer TCP streams, two implementations.
//!
//! Owned buffers because io_uring needs them: a buffer handed to the kernel stays the kernel's
//! until the operation completes. The same relay code runs over both drivers.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

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
    stream.set_nodelay(true)?;
    stream.into_std()
}
