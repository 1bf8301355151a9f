//! Relaying: both directions at once, half-close honoured, no unbounded buffering.
//!
//! Each direction is one pump: read a buffer, (en|de)crypt it, and write it *while* reading
//! the next one — at most one read and one write per direction are in flight, so a slow reader
//! backpressures the writer through TCP, and on io_uring the next read does not wait for the
//! previous write's completion.
//! A FIN on one side becomes a FIN (cleartext) or close_notify + FIN (TLS) on the other, and
//! the other direction keeps flowing until it ends too (RFC 8446 §6.1).

use std::io;
use std::net::Shutdown;
use std::rc::Rc;

use osgate_core::outcome::Close;

use crate::io::Conn;
use crate::io::buffers::{self, LARGE, ReadSizer};
use crate::tls::{ALERT, Drained, Session, read_sized, records_len};
use crate::watchdog::Watchdog;

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source finished cleanly (FIN, or close_notify then FIN).
    Clean,
    /// The TLS source closed without close_notify.
    Truncated,
    /// A socket or TLS error.
    Reset,
}

/// Bytes relayed in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Moved {
    /// From the plain side (or the first side) towards the other.
    pub forward: u64,
    pub backward: u64,
}

fn close_of(a: End, b: End, dog: &Watchdog) -> Close {
    if dog.cut() {
        Close::Drained
    } else if dog.fired() {
        Close::IdleTimeout
    } else if a == End::Truncated || b == End::Truncated {
        Close::Truncated
    } else if a == End::Reset || b == End::Reset {
        Close::Reset
    } else {
        Close::Clean
    }
}

/// Cleartext both ways between `a` and `b`.
pub(crate) async fn plain<A: Conn, B: Conn>(
    a: &Rc<A>,
    b: &Rc<B>,
    dog: &Watchdog,
) -> (Close, Moved) {
    let ((end_ab, forward), (end_ba, backward)) =
        tokio::join!(copy(&**a, &**b, dog), copy(&**b, &**a, dog));
    (close_of(end_ab, end_ba, dog), Moved { forward, backward })
}

/// A buffer waiting to be written: `(buffer, length)`.
type Pending = Option<(Vec<u8>, usize)>;

/// Writes `pending` (if any) while reading the next buffer from `src`.
async fn write_while_reading<S: Conn, D: Conn>(
    src: &S,
    dst: &D,
    sizer: &mut ReadSizer,
    pending: Pending,
) -> (io::Result<usize>, Vec<u8>, io::Result<usize>) {
    match pending {
        Some((buf, len)) => {
            // The write gives its buffer back as soon as it completes: the read may then wait
            // for hours, and an idle connection must not hold the buffer meanwhile.
            let write = async {
                let (written, buf) = dst.write_all(buf, len).await;
                buffers::give(buf);
                written
            };
            let (written, (read, read_buf)) = tokio::join!(write, read_sized(src, sizer));
            (read, read_buf, written.map(|()| len))
        }
        None => {
            let (read, read_buf) = read_sized(src, sizer).await;
            (read, read_buf, Ok(0))
        }
    }
}

async fn copy<S: Conn, D: Conn>(src: &S, dst: &D, dog: &Watchdog) -> (End, u64) {
    let mut sizer = ReadSizer::default();
    let mut moved = 0u64;
    let mut pending = None;
    loop {
        let (read, buf, written) = write_while_reading(src, dst, &mut sizer, pending.take()).await;
        match written {
            Ok(n) => moved += n as u64,
            Err(_) => {
                buffers::give(buf);
                return (reset(src, dst), moved);
            }
        }
        match read {
            Ok(0) => {
                buffers::give(buf);
                dst.shutdown(Shutdown::Write);
                return (End::Clean, moved);
            }
            Ok(n) => {
                dog.touch();
                pending = Some((buf, n));
            }
            Err(_) => {
                buffers::give(buf);
                return (reset(src, dst), moved);
            }
        }
    }
}

/// Ends both sides as an abort: the pending reads of the other pump complete (shutdown of
/// the read side sends nothing), and the final close sends RST, never a FIN that would pass
/// for a clean end.
fn reset<S: Conn, D: Conn>(src: &S, dst: &D) -> End {
    src.abort_on_close();
    dst.abort_on_close();
    src.shutdown(Shutdown::Read);
    dst.shutdown(Shutdown::Read);
    End::Reset
}

/// Plaintext on `plain`, TLS records of `session` on `tls`.
/// `Moved::forward` counts plain → TLS bytes, `backward` TLS → plain.
pub(crate) async fn tls<P: Conn, T: Conn>(
    plain: &Rc<P>,
    tls: &Rc<T>,
    session: &Session,
    dog: &Watchdog,
) -> (Close, Moved) {
    let ((end_up, forward), (end_down, backward)) = tokio::join!(
        encrypt_pump(&**plain, &**tls, session, dog),
        decrypt_pump(&**tls, &**plain, session, dog)
    );
    (close_of(end_up, end_down, dog), Moved { forward, backward })
}

async fn encrypt_pump<P: Conn, T: Conn>(
    plain: &P,
    tls: &T,
    session: &Session,
    dog: &Watchdog,
) -> (End, u64) {
    let mut sizer = ReadSizer::default();
    let mut moved = 0u64;
    // Plaintext bytes encrypted into rustls' queue and not yet written.
    let mut queued = 0usize;
    loop {
        let (flushed, (read, buf)) = if queued > 0 {
            tokio::join!(
                session.flush(tls, records_len(queued)),
                read_sized(plain, &mut sizer)
            )
        } else {
            (Ok(()), read_sized(plain, &mut sizer).await)
        };
        if flushed.is_err() {
            buffers::give(buf);
            return (reset(plain, tls), moved);
        }
        moved += queued as u64;
        let n = match read {
            Ok(0) => {
                buffers::give(buf);
                session.send_close_notify();
                let _ = session.flush(tls, ALERT).await;
                tls.shutdown(Shutdown::Write);
                return (End::Clean, moved);
            }
            Ok(n) => n,
            Err(_) => {
                buffers::give(buf);
                return (reset(plain, tls), moved);
            }
        };
        dog.touch();
        let encrypted = session.encrypt(&buf[..n]);
        buffers::give(buf);
        if encrypted.is_err() {
            return (reset(plain, tls), moved);
        }
        queued = n;
    }
}

async fn decrypt_pump<T: Conn, P: Conn>(
    tls: &T,
    plain: &P,
    session: &Session,
    dog: &Watchdog,
) -> (End, u64) {
    let mut sizer = ReadSizer::default();
    let mut moved = 0u64;
    // Records that arrived with the handshake's last flight are already decrypted.
    let mut pending = match decrypt(session, plain, &[], &mut moved).await {
        Ok(Decrypted::More(pending)) => pending,
        Ok(Decrypted::CloseNotify) => return finish_clean(plain, moved),
        Err(_) => return (reset(tls, plain), moved),
    };
    loop {
        let (read, buf, written) =
            write_while_reading(tls, plain, &mut sizer, pending.take()).await;
        match written {
            Ok(n) => moved += n as u64,
            Err(_) => {
                buffers::give(buf);
                return (reset(tls, plain), moved);
            }
        }
        let n = match read {
            Ok(0) => {
                buffers::give(buf);
                return truncated(session, tls, plain, moved);
            }
            Ok(n) => n,
            Err(_) => {
                buffers::give(buf);
                return (reset(tls, plain), moved);
            }
        };
        dog.touch();
        let decrypted = decrypt(session, plain, &buf[..n], &mut moved).await;
        buffers::give(buf);
        match decrypted {
            Ok(Decrypted::More(next)) => pending = next,
            Ok(Decrypted::CloseNotify) => return finish_clean(plain, moved),
            Err(_) => {
                let _ = session.flush(tls, ALERT).await;
                return (reset(tls, plain), moved);
            }
        }
        // Post-handshake messages (KeyUpdate) may need an answer.
        if session.wants_write() && session.flush(tls, buffers::SMALL).await.is_err() {
            return (reset(tls, plain), moved);
        }
    }
}

fn finish_clean<P: Conn>(plain: &P, moved: u64) -> (End, u64) {
    plain.shutdown(Shutdown::Write);
    (End::Clean, moved)
}

/// TCP EOF on the TLS side without close_notify: the plain side must see an abort, not a
/// clean end, or a truncation attack would pass as a complete message.
fn truncated<T: Conn, P: Conn>(session: &Session, tls: &T, plain: &P, moved: u64) -> (End, u64) {
    session.eof();
    reset(tls, plain);
    (End::Truncated, moved)
}

/// What decrypting one read produced.
enum Decrypted {
    /// Plaintext to write next (overlapped with the next read), if any.
    More(Pending),
    /// The peer sent close_notify; everything before it has been written.
    CloseNotify,
}

/// Decrypts `ciphertext`. Plaintext that does not fit one buffer is written here; the last
/// buffer is returned for the caller to write while it reads on.
async fn decrypt<P: Conn>(
    session: &Session,
    plain: &P,
    mut ciphertext: &[u8],
    moved: &mut u64,
) -> io::Result<Decrypted> {
    loop {
        // Plaintext is never longer than the ciphertext it came from.
        let mut out = buffers::take(ciphertext.len().clamp(buffers::SMALL, LARGE));
        let mut filled = 0;
        let state = loop {
            let state = session.drain(&mut out, &mut filled)?;
            if state == Drained::CloseNotify || filled == out.len() || ciphertext.is_empty() {
                break state;
            }
            let used = session.decrypt(ciphertext).map_err(io::Error::other)?;
            if used == 0 {
                return Err(io::Error::other("TLS input after close_notify"));
            }
            ciphertext = &ciphertext[used..];
        };
        let drained_all = ciphertext.is_empty() && filled < out.len();
        if state == Drained::Open && drained_all {
            let pending = (filled > 0).then_some((out, filled));
            return Ok(Decrypted::More(pending));
        }
        let (result, buf) = plain.write_all(out, filled).await;
        buffers::give(buf);
        result?;
        *moved += filled as u64;
        if state == Drained::CloseNotify {
            return Ok(Decrypted::CloseNotify);
        }
    }
}
