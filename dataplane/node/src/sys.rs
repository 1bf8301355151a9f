//! The only module with `unsafe`: borrowing raw descriptors that tokio-uring owns, and the
//! descriptor limit.
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

/// Raises the soft descriptor limit to the hard one and logs both.
///
/// Each tunnel holds two descriptors, so the usual soft default of 1024 would cap a node near
/// 500 connections whatever `LimitNOFILE=` or the container allows; the hard limit is the one
/// the operator set. Failure is logged, not fatal: the node still runs at the soft limit.
pub fn raise_nofile() {
    match raise_nofile_to_hard() {
        Ok((from, to, hard)) => tracing::info!(
            target: "osgate::node",
            soft = to,
            hard,
            raised_from = from,
            "descriptor limit (RLIMIT_NOFILE)"
        ),
        Err(e) => tracing::warn!(
            target: "osgate::node",
            error = %e,
            "cannot raise the descriptor limit (RLIMIT_NOFILE) to the hard limit"
        ),
    }
}

/// Returns (soft limit before, soft limit now, hard limit).
fn raise_nofile_to_hard() -> std::io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    // An unlimited hard limit still cannot be exceeded by a descriptor number: fs.nr_open caps it.
    let target = match limit.rlim_max {
        libc::RLIM_INFINITY => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20),
        hard => hard,
    };
    if limit.rlim_cur < target {
        limit.rlim_cur = target;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur, limit.rlim_max))
}
