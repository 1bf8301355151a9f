//! The epoll driver: tokio's reactor, one current-thread runtime per worker.
//!
//! Reads wait for readiness first and take a buffer only when data is there, so an idle
//! connection holds none.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::{Conn, Driver, buffers};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoll;

#[derive(Debug)]
pub(crate) struct EpollConn(pub tokio::net::TcpStream);

impl Driver for Epoll {
    type Conn = EpollConn;
    type Listener = tokio::net::TcpListener;
    const NAME: &'static str = "epoll";

    fn listener(socket: std::net::TcpListener) -> io::Result<Self::Listener> {
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(EpollConn, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        super::tune_fd(stream.as_raw_fd())?;
        Ok((EpollConn(stream), peer))
    }

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<EpollConn> {
        let std = super::connect_std(addr, timeout).await?;
        Ok(EpollConn(tokio::net::TcpStream::from_std(std)?))
    }
}

impl Conn for EpollConn {
    async fn read(&self, want: usize) -> (io::Result<usize>, Vec<u8>) {
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), Vec::new());
            }
            let mut buf = buffers::take(want);
            let len = want.min(buf.len());
            match self.0.try_read(&mut buf[..len]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => buffers::give(buf),
                result => return (result, buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let mut done = 0;
        while done < len {
            if let Err(e) = self.0.writable().await {
                return (Err(e), buf);
            }
            match self.0.try_write(&buf[done..len]) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    async fn readable(&self) -> io::Result<()> {
        self.0.readable().await
    }

    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
