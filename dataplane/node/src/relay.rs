//! Relaying: both directions at once, half-close honoured, no unbounded buffering.
//!
//! Each direction is one pump: read a buffer, (en|de)crypt, write it, repeat — so at most one
//! buffer per direction is in flight and a slow reader backpressures the writer through TCP.
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
    if dog.fired() {
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

async fn copy<S: Conn, D: Conn>(src: &S, dst: &D, dog: &Watchdog) -> (End, u64) {
    let mut sizer = ReadSizer::default();
    let mut moved = 0u64;
    loop {
        let (result, buf) = read_sized(src, &mut sizer).await;
        let n = match result {
            Ok(0) => {
                buffers::give(buf);
                dst.shutdown(Shutdown::Write);
                return (End::Clean, moved);
            }
            Ok(n) => n,
            Err(_) => {
                buffers::give(buf);
                return (reset(src, dst), moved);
            }
        };
        dog.touch();
        let (result, buf) = dst.write_all(buf, n).await;
        buffers::give(buf);
        if result.is_err() {
            return (reset(src, dst), moved);
        }
        moved += n as u64;
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
    loop {
        let (result, buf) = read_sized(plain, &mut sizer).await;
        let n = match result {
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
        if encrypted.is_err() || session.flush(tls, records_len(n)).await.is_err() {
            return (reset(plain, tls), moved);
        }
        moved += n as u64;
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
    match write_decrypted(session, plain, &[], &mut moved).await {
        Ok(Drained::Open) => {}
        Ok(Drained::CloseNotify) => return finish_clean(plain, moved),
        Err(_) => return (reset(tls, plain), moved),
    }
    loop {
        let (result, buf) = read_sized(tls, &mut sizer).await;
        let n = match result {
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
        let drained = write_decrypted(session, plain, &buf[..n], &mut moved).await;
        buffers::give(buf);
        match drained {
            Ok(Drained::Open) => {}
            Ok(Drained::CloseNotify) => return finish_clean(plain, moved),
            Err(_) => {
                let _ = session.flush(tls, ALERT).await;
                return (reset(tls, plain), moved);
            }
        }
        // Post-handshake messages (KeyUpdate, tickets) may need an answer.
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

/// Decrypts `ciphertext` and writes the plaintext to `plain` in large writes.
async fn write_decrypted<P: Conn>(
    session: &Session,
    plain: &P,
    mut ciphertext: &[u8],
    moved: &mut u64,
) -> io::Result<Drained> {
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
        let out_len = out.len();
        if filled > 0 {
            let (result, buf) = plain.write_all(out, filled).await;
            buffers::give(buf);
            result?;
            *moved += filled as u64;
        } else {
            buffers::give(out);
        }
        if state == Drained::CloseNotify || ciphertext.is_empty() && filled < out_len {
            return Ok(state);
        }
    }
}
