//! SMTP listeners: the I/O around the core's STARTTLS dialogues ([`osgate_core::smtp`]).

pub(crate) mod inbound;
pub(crate) mod outbound;

use std::io;
use std::rc::Rc;

use osgate_core::smtp::Step;
use tokio::time::{Instant, timeout_at};

use crate::io::buffers::{self, LARGE, SMALL};
use crate::io::{Conn, Driver};
use crate::tls::{Drained, Session, records_len};

/// One side of a dialogue: plain, or inside the TLS session over it.
pub(crate) enum Leg<'a, C> {
    Plain(&'a C),
    Tls(&'a C, &'a Session),
}

/// Why a read produced nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Nothing before the deadline.
    Timeout,
    /// EOF, a reset, close_notify, or bad TLS.
    Closed,
}

/// The dialogue's two sides, as a core [`Step`] names them.
pub(crate) struct Sides<'a, C> {
    pub client: Leg<'a, C>,
    pub server: Leg<'a, C>,
}

impl<C: Conn> Sides<'_, C> {
    /// Writes a step's bytes: to the client, then to the server. Returns the byte counts.
    pub async fn write(&self, step: &Step) -> Result<(usize, usize), Ended> {
        self.client.write(&step.to_client).await?;
        self.server.write(&step.to_server).await?;
        Ok((step.to_client.len(), step.to_server.len()))
    }
}

impl<C: Conn> Leg<'_, C> {
    /// Plaintext that arrives before `deadline`, at least one byte.
    pub async fn read(&self, deadline: Instant) -> Result<Vec<u8>, Ended> {
        match self {
            Self::Plain(conn) => read_some(*conn, deadline).await,
            Self::Tls(conn, session) => read_tls(*conn, session, deadline).await,
        }
    }

    pub async fn write(&self, bytes: &[u8]) -> Result<(), Ended> {
        if bytes.is_empty() {
            return Ok(());
        }
        let written = match self {
            Self::Plain(conn) => write_plain(*conn, bytes).await,
            Self::Tls(conn, session) => match session.encrypt(bytes) {
                Ok(()) => session.flush(*conn, records_len(bytes.len())).await,
                Err(e) => Err(e),
            },
        };
        written.map_err(|_| Ended::Closed)
    }
}

/// Readiness waits, then a read that does not block: cancel-safe under the deadline on both
/// drivers (an io_uring read in flight cannot be abandoned with its buffer).
async fn read_some<C: Conn>(conn: &C, deadline: Instant) -> Result<Vec<u8>, Ended> {
    let mut chunk = [0u8; 4096];
    loop {
        match timeout_at(deadline, conn.readable()).await {
            Err(_) => return Err(Ended::Timeout),
            Ok(Err(_)) => return Err(Ended::Closed),
            Ok(Ok(())) => {}
        }
        match conn.try_read_now(&mut chunk) {
            Ok(0) => return Err(Ended::Closed),
            Ok(n) => return Ok(chunk[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Ended::Closed),
        }
    }
}

async fn read_tls<C: Conn>(
    conn: &C,
    session: &Session,
    deadline: Instant,
) -> Result<Vec<u8>, Ended> {
    loop {
        let mut out = vec![0u8; SMALL * 4];
        let mut filled = 0;
        let drained = session.drain(&mut out, &mut filled);
        if filled > 0 {
            out.truncate(filled);
            return Ok(out);
        }
        if !matches!(drained, Ok(Drained::Open)) {
            return Err(Ended::Closed);
        }
        let ciphertext = read_some(conn, deadline).await?;
        let mut rest = ciphertext.as_slice();
        while !rest.is_empty() {
            match session.decrypt(rest) {
                Ok(used) if used > 0 => rest = &rest[used..],
                _ => {
                    let _ = session.flush(conn, crate::tls::ALERT).await;
                    return Err(Ended::Closed);
                }
            }
        }
        // Post-handshake messages (KeyUpdate) may want an answer.
        if session.wants_write() && session.flush(conn, SMALL).await.is_err() {
            return Err(Ended::Closed);
        }
    }
}

async fn write_plain<C: Conn>(conn: &C, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = bytes.len().min(LARGE);
        let mut buf = buffers::take(n);
        buf[..n].copy_from_slice(&bytes[..n]);
        let (result, buf) = conn.write_all(buf, n).await;
        buffers::give(buf);
        result?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Opens a plain connection (for a backend or a next hop).
pub(crate) async fn connect<D: Driver>(
    addr: std::net::SocketAddr,
    node: &crate::ctx::Node,
) -> Option<Rc<D::Conn>> {
    D::connect(addr, node.timeouts.connect)
        .await
        .ok()
        .map(Rc::new)
}
