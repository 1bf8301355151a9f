//! The one module that drives rustls connections over a [`Conn`] (rustls' buffered API with
//! owned buffers). Handshake here; record pumps in [`crate::relay`] go through [`Session`].

use std::cell::RefCell;
use std::io::{self, Read, Write};

use osgate_core::detect::{Detection, classify_server_flight};
use rustls::Connection;

use crate::io::buffers::{self, LARGE};
use crate::io::{Conn, buffers::ReadSizer};

/// Buffer size for handshake reads and writes: a post-quantum ClientHello or a server's
/// first flight fits; bigger flights take a few more reads.
const HANDSHAKE_IO: usize = 4 * 1024;
/// Enough for alerts and close_notify.
pub(crate) const ALERT: usize = 64;

/// Bytes of TLS records that carry `plaintext` bytes: 5 header + 1 type + 16 tag per record.
pub(crate) fn records_len(plaintext: usize) -> usize {
    plaintext + (plaintext / (16 * 1024) + 1) * 22
}

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The peer answered our ClientHello with bytes that are not TLS.
    #[error("the peer does not speak TLS")]
    NotTls,
    /// EOF or reset before the peer sent a single byte.
    #[error("the peer closed before answering")]
    ClosedEarly,
    /// The peer speaks TLS, but the handshake failed.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// EOF or a socket error after the peer started speaking TLS.
    #[error("I/O: {0}")]
    Io(io::Error),
}

/// A rustls connection shared by the two record pumps of one relay.
pub(crate) struct Session {
    conn: RefCell<Connection>,
    /// Serialises writes to the TLS socket: both pumps may have records to send.
    writing: tokio::sync::Mutex<()>,
}

/// The result of draining decrypted bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// More may come.
    Open,
    /// The peer sent close_notify: its write side is closed cleanly.
    CloseNotify,
}

impl Session {
    pub fn new(mut conn: Connection) -> Self {
        // Reads are bounded by the caller (one buffer at a time), so rustls need not bound its
        // own queues; this keeps one flush per read instead of one per 64 KiB.
        conn.set_buffer_limit(None);
        Self {
            conn: RefCell::new(conn),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn conn(&self) -> std::cell::Ref<'_, Connection> {
        self.conn.borrow()
    }

    /// Runs the handshake to completion. `inspect_first_flight` (client side) classifies the
    /// peer's first bytes to tell a TLS server from a peer that does not speak TLS.
    pub async fn handshake<C: Conn>(
        &self,
        tcp: &C,
        inspect_first_flight: bool,
    ) -> Result<(), HandshakeError> {
        let mut received_any = false;
        loop {
            self.flush(tcp, HANDSHAKE_IO)
                .await
                .map_err(HandshakeError::Io)?;
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            let (result, buf) = tcp.read(HANDSHAKE_IO).await;
            let n = match result {
                Ok(n) if n > 0 => n,
                Ok(_) if !received_any => return Err(HandshakeError::ClosedEarly),
                Err(_) if !received_any => return Err(HandshakeError::ClosedEarly),
                Ok(_) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
                Err(e) => return Err(HandshakeError::Io(e)),
            };
            if inspect_first_flight && !received_any {
                if let Detection::Cleartext | Detection::Reject(_) =
                    classify_server_flight(&buf[..n])
                {
                    buffers::give(buf);
                    return Err(HandshakeError::NotTls);
                }
            }
            received_any = true;
            let fed = self.feed_handshake(&buf[..n]);
            buffers::give(buf);
            if let Err(e) = fed {
                // Best effort: tell the peer why (the alert rustls queued).
                let _ = self.flush(tcp, ALERT).await;
                return Err(HandshakeError::Tls(e));
            }
        }
    }

    /// Feeds bytes that arrived before the handshake started (an inbound peek).
    pub fn feed_handshake(&self, mut data: &[u8]) -> Result<(), rustls::Error> {
        let mut conn = self.conn.borrow_mut();
        while !data.is_empty() {
            conn.read_tls(&mut data)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            conn.process_new_packets()?;
        }
        Ok(())
    }

    /// Writes every queued TLS record to `tcp`, several records per write. `size_hint` is
    /// about how many bytes are queued: buffers stay small for small flushes, which matters
    /// on io_uring, where a buffer is held until the kernel completes the write.
    pub async fn flush<C: Conn>(&self, tcp: &C, size_hint: usize) -> io::Result<()> {
        let _writing = self.writing.lock().await;
        loop {
            let mut buf = buffers::take(size_hint.min(LARGE * 2));
            let capacity = buf.len();
            let len = {
                let mut conn = self.conn.borrow_mut();
                let mut cursor: &mut [u8] = &mut buf;
                while conn.wants_write() && !cursor.is_empty() {
                    conn.write_tls(&mut cursor)?;
                }
                capacity - cursor.len()
            };
            if len == 0 {
                buffers::give(buf);
                return Ok(());
            }
            let (result, buf) = tcp.write_all(buf, len).await;
            buffers::give(buf);
            result?;
        }
    }

    /// Encrypts `plaintext` into queued records (sent by the next [`Session::flush`]).
    pub fn encrypt(&self, plaintext: &[u8]) -> io::Result<()> {
        self.conn.borrow_mut().writer().write_all(plaintext)
    }

    pub fn send_close_notify(&self) {
        self.conn.borrow_mut().send_close_notify();
    }

    pub fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Feeds ciphertext; call [`Session::drain`] after each call until it returns all of it.
    /// Returns how many bytes of `data` were consumed.
    pub fn decrypt(&self, data: &[u8]) -> Result<usize, rustls::Error> {
        let mut conn = self.conn.borrow_mut();
        let mut reader = data;
        conn.read_tls(&mut reader)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        conn.process_new_packets()?;
        Ok(data.len() - reader.len())
    }

    /// Tells rustls the TCP stream ended.
    pub fn eof(&self) {
        let mut empty: &[u8] = &[];
        let mut conn = self.conn.borrow_mut();
        let _ = conn.read_tls(&mut empty);
        let _ = conn.process_new_packets();
    }

    /// Moves decrypted bytes into `out[*filled..]`.
    pub fn drain(&self, out: &mut [u8], filled: &mut usize) -> io::Result<Drained> {
        let mut conn = self.conn.borrow_mut();
        while *filled < out.len() {
            match conn.reader().read(&mut out[*filled..]) {
                Ok(0) => return Ok(Drained::CloseNotify),
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Drained::Open)
    }
}

/// Reads the ciphertext side with an adaptive size (shared by relay pumps).
pub(crate) async fn read_sized<C: Conn>(
    tcp: &C,
    sizer: &mut ReadSizer,
) -> (io::Result<usize>, Vec<u8>) {
    let (result, buf) = tcp.read(sizer.next()).await;
    if let Ok(n) = result {
        sizer.record(n);
    }
    (result, buf)
}
