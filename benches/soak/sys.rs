//! The only `unsafe` of the bench: libc calls without a safe std equivalent.
#![allow(unsafe_code)]

/// Makes `command`'s process get SIGKILL when this one dies (also by a signal), so an
/// interrupted soak leaves no nodes behind. Spawn from the main thread: the signal follows
/// the thread that spawned.
pub fn die_with_parent(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches only the child's own state; the
    // closure allocates nothing.
    unsafe {
        command.pre_exec(
            || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        )
    }
}
