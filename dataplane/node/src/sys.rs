//! The only module with `unsafe`: borrowing raw descriptors that tokio-uring owns.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// Runs `f` with a [`SockRef`] for `fd`.
///
/// Callers pass the descriptor of a stream they hold a reference to for the whole call, so the
/// descriptor stays open while `f` runs.
pub fn sock_ref<T>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: `fd` is open for the duration of this call (see above), and the BorrowedFd does
    // not outlive it: it is dropped when `f` returns.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    f(SockRef::from(&borrowed))
}

/// `recv(2)` with `MSG_DONTWAIT`: what is buffered now, or `WouldBlock`.
pub fn recv_nowait(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the whole call, and
    // recv writes at most that many bytes into it.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n.unsigned_abs())
}

/// A descriptor registered with tokio's reactor without owning it.
struct Borrowed(RawFd);

impl std::os::fd::AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Waits until `fd` is readable, through tokio's readiness reactor. Cancel-safe.
///
/// Callers hold the stream that owns `fd` borrowed across the whole await.
pub async fn wait_readable(fd: RawFd) -> std::io::Result<()> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: `fd` stays open and refers to the same socket until the AsyncFd is dropped at
    // the end of this function, because the caller's borrow of its owner spans the await.
    let registered = unsafe { AsyncFd::register_with_interest(Borrowed(fd), Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let _ready = registered.readable().await?;
    Ok(())
}
