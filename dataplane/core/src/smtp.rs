//! SMTP with STARTTLS (RFC 3207), sans-IO: the lines, replies and dialogues osgate speaks on
//! either side of a mail session, up to the point where it relays bytes untouched.
//!
//! RFC 3207 §4.2: "Upon completion of the TLS handshake, the SMTP protocol is reset to the
//! initial state (the state in SMTP after a server issues a 220 service ready greeting). The
//! server MUST discard any knowledge obtained from the client, such as the argument to the EHLO
//! command, which was not obtained from the TLS negotiation itself. The client MUST discard any
//! knowledge obtained from the server, such as the list of SMTP service extensions, which was
//! not obtained from the TLS negotiation itself." Both machines here are built around that: what
//! arrived before the handshake (a pipelined command after `STARTTLS`, a line after the `220`)
//! is counted and dropped, never carried across (CONFORMANCE E.30, E.31, E.33).

mod command;
mod deferral;
mod inbound;
mod join;
mod line;
mod outbound;
mod reply;

pub use command::{Verb, verb};
pub use deferral::Deferral;
pub use inbound::{Inbound, Starttls as InboundStarttls};
pub use join::Join;
pub use line::{MAX_LINE, Scan, scan_line};
pub use outbound::{Dialogue, Failure, Progress, Ready};
pub use reply::{MAX_REPLY_LINES, Reply, ReplyScan, scan_reply};

use crate::outcome::Reason;

/// The answer to a line past [`MAX_LINE`], before the session is closed (CONFORMANCE E.34).
const TOO_LONG: &[u8] = b"500 5.5.0 Line too long\r\n";

/// What a dialogue machine wants next, after the bytes of its [`Step`] are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    /// Read from the near side (the client of an inbound listener; the local client outbound).
    ReadClient,
    /// Read from the far side (the backend inbound; the destination outbound).
    ReadServer,
    /// Run the TLS handshake now (after writing this step's bytes).
    StartTls,
    /// Relay bytes untouched from here on; the step's bytes are what was already read.
    Relay,
    /// End the session.
    Close(Reason),
}

/// What a machine asks the driver to do: write these bytes (in this order: to the client, then
/// to the server), then [`Then`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub to_client: Vec<u8>,
    pub to_server: Vec<u8>,
    pub then: Then,
}

impl Step {
    fn new(then: Then) -> Self {
        Self {
            to_client: Vec::new(),
            to_server: Vec::new(),
            then,
        }
    }

    /// A greeting for the client, then wait for its first command.
    fn greeting(greeting: Vec<u8>) -> Self {
        Self {
            to_client: greeting,
            ..Self::new(Then::ReadClient)
        }
    }
}

#[cfg(test)]
mod tests;
