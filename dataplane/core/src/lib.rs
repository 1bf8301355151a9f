//! The sans-IO core of the osgate dataplane.
//!
//! Everything here is a plain function or state machine over bytes and values: no sockets, no
//! runtime, no clock reads. The node's I/O drivers are thin pumps around it, which is what makes
//! the RFC 7435 fallback rules testable exhaustively.

#![forbid(unsafe_code)]

pub mod auth;
pub mod caches;
pub mod caps;
pub mod clients;
pub mod crypto;
pub mod dane;
pub mod detect;
pub mod fleet;
pub mod ladder;
pub mod outcome;
pub mod pin;
pub mod plan;
pub mod policy;
pub mod smtp;
pub mod sts;
pub mod tlsrpt;

#[cfg(test)]
mod test_pki;
