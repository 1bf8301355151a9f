//! The io_uring driver: tokio-uring, one ring per worker thread.
//!
//! tokio-uring 0.5 semantics to respect: dropping an in-flight read does not cancel it (the
//! kernel completes it later and the bytes are lost), so reads are never raced against timers;
//! deadlines close the socket instead ([`crate::watchdog`]). The one cancel-safe wait,
//! [`Conn::readable`], uses tokio's readiness reactor that tokio-uring runs underneath.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;

use super::{Conn, Driver, buffers};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Uring;

pub(crate) struct UringConn(pub tokio_uring::net::TcpStream);

impl std::fmt::Debug for UringConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UringConn({})", self.0.as_raw_fd())
    }
}

impl Driver for Uring {
    type Conn = UringConn;
    type Listener = tokio_uring::net::TcpListener;
    const NAME: &'static str = "uring";

    fn listener(socket: std::net::TcpListener) -> io::Result<Self::Listener> {
        socket.set_nonblocking(false)?;
        Ok(tokio_uring::net::TcpListener::from_std(socket))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(UringConn, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        super::tune_fd(stream.as_raw_fd())?;
        Ok((UringConn(stream), peer))
    }

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<UringConn> {
        let std = super::connect_std(addr, timeout).await?;
        std.set_nonblocking(false)?;
        Ok(UringConn(tokio_uring::net::TcpStream::from_std(std)))
    }
}

/// Whether this kernel (and sandbox) lets us create an io_uring.
pub fn available() -> Result<(), io::Error> {
    io_uring::IoUring::new(8).map(drop)
}

impl Conn for UringConn {
    async fn read(&self, want: usize) -> (io::Result<usize>, Vec<u8>) {
        let buf = buffers::take(want);
        let len = want.min(buf.len());
        let (result, slice) = self.0.read(buf.slice(..len)).await;
        (result, slice.into_inner())
    }

    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let (result, slice) = self.0.write_all(buf.slice(..len)).await;
        (result, slice.into_inner())
    }

    async fn readable(&self) -> io::Result<()> {
        crate::sys::wait_readable(self.raw_fd()).await
    }

    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::recv_nowait(self.raw_fd(), buf)
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
