//! Harness for osgate's end-to-end suites: real osgate processes, real OpenSSL peers, plain
//! TCP servers and clients, all on loopback ports chosen at run time.
//!
//! Synchronisation is by events, never by sleeping: a node is ready when it logs that it
//! started; an outcome is waited for on the node's JSON log stream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

pub mod certs;
pub mod controlplane;
pub mod dns;
pub mod faulty_dns;
pub mod hostile_cp;
pub mod kube;
pub mod node;
pub mod openssl;
pub mod peers;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod records;
pub mod resolver;
pub mod smtp;
pub mod sockets;
pub mod tlsrpt;

pub use node::{Io, Node};

use std::time::Duration;

/// The longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds, for state that changes without a log line to wait on
/// (another process's database, a metric); fails the test after [`WAIT`].
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "not true after {WAIT:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a scenario once per I/O driver: `drivers!(name => scenario_fn);`
#[macro_export]
macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name($crate::Io::Uring) })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name($crate::Io::Epoll) })*
        }
    };
}
