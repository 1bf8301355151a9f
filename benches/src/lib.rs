//! See benches/core.rs and gateways/compare.py.

/// The descriptor limit, for the benches that hold many sockets.
pub mod sys {
    #![allow(unsafe_code)]

    /// Raises the soft descriptor limit to the hard one (children inherit it). Returns it.
    pub fn raise_nofile_limit() -> std::io::Result<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the whole call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: `limit` is a valid rlimit, read for the whole call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(limit.rlim_cur)
    }
}
