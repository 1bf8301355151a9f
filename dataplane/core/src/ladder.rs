//! The outbound ladder: from policy and the events of each attempt to the next step.
//!
//! RFC 7435 §3: "the primary goal is to ensure that the communication is at least encrypted
//! when possible … and authenticated when possible". The rows of the fallback table in
//! DESIGN.md that need no capability evidence live here:
//!
//! | policy          | peer offers no TLS            | handshake fails               | chain does not validate |
//! |-----------------|-------------------------------|-------------------------------|-------------------------|
//! | `opportunistic` | cleartext, reason recorded    | cleartext retry if allowed    | stay `encrypted`        |
//! | `encrypt`       | refuse                        | refuse                        | stay `encrypted`        |
//! | `cleartext`     | (TLS is never tried)          | —                             | —                       |
//!
//! Authentication failure never yields cleartext: a failed chain check only ever decides
//! between `authenticated`/`pkix` and `encrypted`.

use crate::outcome::{Level, Method, Reason};

/// Explicit outbound policy for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Best effort: TLS when the peer speaks it, cleartext otherwise (if allowed).
    Opportunistic { allow_cleartext_fallback: bool },
    /// TLS is mandatory; unauthenticated TLS is acceptable.
    Encrypt,
    /// Never try TLS.
    Cleartext,
}

impl Policy {
    pub const OPPORTUNISTIC: Self = Self::Opportunistic {
        allow_cleartext_fallback: true,
    };

    /// The policy's name, as in configs and outcome records (`desired`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opportunistic { .. } => "opportunistic",
            Self::Encrypt => "encrypt",
            Self::Cleartext => "cleartext",
        }
    }
}

/// What the driver must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Open a TCP connection to the peer and run a TLS handshake over it.
    TryTls,
    /// Open a (new) TCP connection to the peer and relay in cleartext.
    TryCleartext,
    /// Relay at this level; `reason` says why it is not better.
    Relay { achieved: Level, reason: Reason },
    /// Close the client connection; not one application byte crosses.
    Refuse(Reason),
}

/// How a TLS attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsResult {
    /// The TCP connection could not be opened.
    Unreachable,
    /// Non-TLS bytes, EOF or reset in reply to our ClientHello.
    PeerNoTls,
    /// The peer speaks TLS, but the handshake failed (alert, no common parameters, bad
    /// handshake signature).
    HandshakeFailed,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The handshake completed. `chain` is the PKIX verdict for the peer's name: `Ok` when
    /// the chain validates, else the reason it does not.
    Established { chain: Result<(), Reason> },
}

/// The ladder for one outbound connection: which attempt it waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ladder {
    AwaitingTls(Policy),
    AwaitingCleartext(Policy, Reason),
    Done,
}

impl Ladder {
    /// Starts the ladder for `policy`; returns it with the first step.
    pub fn start(policy: Policy) -> (Self, Step) {
        match policy {
            Policy::Cleartext => (
                Self::AwaitingCleartext(policy, Reason::PolicyCleartext),
                Step::TryCleartext,
            ),
            _ => (Self::AwaitingTls(policy), Step::TryTls),
        }
    }

    /// Feeds the result of the TLS attempt.
    pub fn on_tls(self, result: TlsResult) -> (Self, Step) {
        let Self::AwaitingTls(policy) = self else {
            return (Self::Done, Step::Refuse(Reason::ValidationFailure));
        };
        let fallback_reason = match result {
            TlsResult::Unreachable => return (Self::Done, Step::Refuse(Reason::Unreachable)),
            TlsResult::Established { chain } => return (Self::Done, established(chain)),
            TlsResult::PeerNoTls => Reason::PeerNoTls,
            TlsResult::HandshakeFailed => Reason::TlsHandshakeFailed,
            TlsResult::HandshakeTimeout => Reason::HandshakeTimeout,
        };
        match policy {
            Policy::Opportunistic {
                allow_cleartext_fallback: true,
            } => (
                Self::AwaitingCleartext(policy, fallback_reason),
                Step::TryCleartext,
            ),
            _ => (Self::Done, Step::Refuse(fallback_reason)),
        }
    }

    /// Feeds the result of the cleartext attempt: `connected` or not.
    pub fn on_cleartext(self, connected: bool) -> (Self, Step) {
        let Self::AwaitingCleartext(_, reason) = self else {
            return (Self::Done, Step::Refuse(Reason::ValidationFailure));
        };
        let step = if connected {
            Step::Relay {
                achieved: Level::Cleartext,
                reason,
            }
        } else {
            Step::Refuse(Reason::Unreachable)
        };
        (Self::Done, step)
    }
}

fn established(chain: Result<(), Reason>) -> Step {
    match chain {
        Ok(()) => Step::Relay {
            achieved: Level::Authenticated(Method::Pkix),
            reason: Reason::None,
        },
        Err(reason) => Step::Relay {
            achieved: Level::Encrypted,
            reason,
        },
    }
}

#[cfg(test)]
mod tests;
