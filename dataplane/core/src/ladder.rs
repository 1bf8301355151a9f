//! The outbound ladder: from explicit policy, capability evidence and the events of each
//! attempt to the next step (DESIGN.md, "Fallback rules"; RFC 7435 §3). [`crate::plan`] turns
//! what is known before connecting into a [`Plan`]; this module walks it.
//!
//! | what we know before connecting | no TLS / handshake fails | authentication fails | DANE-relevant lookup failed |
//! |---|---|---|---|
//! | nothing (`opportunistic`) | cleartext retry if allowed, reason recorded | stay `encrypted` | refuse |
//! | TLS committed (`encrypt`, ratchet, unusable secure TLSA) | refuse (ratchet: suspected downgrade) | stay `encrypted` | refuse |
//! | authentication expected (`authenticate`, pins, fleet key, usable secure TLSA, TOFU pin) | refuse | **refuse** | refuse |
//!
//! Authentication failure never yields cleartext, and never `encrypted` where authentication
//! was expected. A key the fleet revoked is refused whatever the plan. A raised TLS floor
//! (e.g. TLS 1.3 only) turns a failed handshake into a refusal: the failure may be the floor
//! rejecting the peer's version, and tightening a rule must never lower protection.
//! `cleartext` never tries TLS; `deny` never connects.

use crate::outcome::{Commitment, Level as Achieved, Method, Reason};
use crate::policy::Level;

/// What the ladder is to enforce for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The enforced explicit policy (or the listener's default).
    pub level: Level,
    /// For `opportunistic`: whether a peer without TLS may be retried in cleartext.
    pub allow_cleartext_fallback: bool,
    /// The peer completed TLS before (the ratchet): TLS is now mandatory for it.
    pub ratchet: bool,
    /// Other evidence commits the peer to TLS: a secure TLSA set with no usable record
    /// (RFC 7672 §2.2: TLS is mandatory, authentication impossible).
    pub tls_committed: bool,
    /// Evidence names a key the peer must prove (operator pins, a TOFU pin).
    pub auth_expected: bool,
    /// The TLS floor is above the default (TLS 1.2).
    pub floor_raised: bool,
    /// The DNS phase already refused (RFC 7672 §2.1: a failed lookup is not "no TLSA").
    pub refused: Option<Reason>,
}

impl Plan {
    /// A plan from policy alone, with no evidence.
    pub const fn policy(level: Level, allow_cleartext_fallback: bool) -> Self {
        Self {
            level,
            allow_cleartext_fallback,
            ratchet: false,
            tls_committed: false,
            auth_expected: false,
            floor_raised: false,
            refused: None,
        }
    }

    pub const OPPORTUNISTIC: Self = Self::policy(Level::Opportunistic, true);

    /// Authentication is required: by policy or by evidence.
    pub fn requires_authentication(&self) -> bool {
        self.level == Level::Authenticate || self.auth_expected
    }

    /// TLS is required: by policy, by the ratchet, or because authentication is.
    pub fn requires_tls(&self) -> bool {
        self.requires_authentication()
            || self.level == Level::Encrypt
            || self.ratchet
            || self.tls_committed
    }

    /// What an end below this would betray; explicit `cleartext` and `deny` commit to nothing.
    pub fn commitment(&self) -> Commitment {
        match self.level {
            Level::Cleartext | Level::Deny => Commitment::None,
            _ if self.requires_authentication() => Commitment::Authentication,
            _ if self.requires_tls() => Commitment::Tls,
            _ => Commitment::None,
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
    Relay { achieved: Achieved, reason: Reason },
    /// Close the client connection; not one application byte crosses.
    /// `downgrade_suspected`: a peer remembered as TLS-capable failed to do TLS.
    Refuse {
        reason: Reason,
        downgrade_suspected: bool,
    },
}

impl Step {
    const fn refuse(reason: Reason) -> Self {
        Self::Refuse {
            reason,
            downgrade_suspected: false,
        }
    }
}

/// How a TLS attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsResult {
    /// The TCP connection could not be opened.
    Unreachable,
    /// Non-TLS bytes, EOF or reset in reply to our ClientHello.
    PeerNoTls,
    /// SMTP: the server's EHLO reply lists no STARTTLS, or it refused STARTTLS (RFC 3207). The
    /// same downgrade as [`TlsResult::PeerNoTls`] — what a STARTTLS-stripping attacker makes.
    NoStarttls,
    /// The peer speaks TLS, but the handshake failed (alert, no common parameters, a version
    /// below the floor, a bad handshake signature).
    HandshakeFailed,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The handshake completed; `auth` is the strongest method the peer's key passed, or
    /// why none did ([`crate::auth::authenticate`]).
    Established { auth: Result<Method, Reason> },
}

/// The ladder for one outbound connection: which attempt it waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ladder {
    AwaitingTls(Plan),
    AwaitingCleartext(Reason),
    Done,
}

impl Ladder {
    /// Starts the ladder for `plan`; returns it with the first step.
    pub fn start(plan: Plan) -> (Self, Step) {
        match plan.level {
            Level::Deny => (Self::Done, Step::refuse(Reason::PolicyDeny)),
            Level::Cleartext => (
                Self::AwaitingCleartext(Reason::PolicyCleartext),
                Step::TryCleartext,
            ),
            _ => match plan.refused {
                Some(reason) => (Self::Done, Step::refuse(reason)),
                None => (Self::AwaitingTls(plan), Step::TryTls),
            },
        }
    }

    /// Feeds the result of the TLS attempt.
    pub fn on_tls(self, result: TlsResult) -> (Self, Step) {
        let Self::AwaitingTls(plan) = self else {
            return (Self::Done, Step::refuse(Reason::ValidationFailure));
        };
        let failure = match result {
            TlsResult::Unreachable => return (Self::Done, Step::refuse(Reason::Unreachable)),
            TlsResult::Established { auth } => return (Self::Done, established(plan, auth)),
            TlsResult::PeerNoTls => Reason::PeerNoTls,
            TlsResult::NoStarttls => Reason::StarttlsNotSupported,
            TlsResult::HandshakeFailed => Reason::TlsHandshakeFailed,
            TlsResult::HandshakeTimeout => Reason::HandshakeTimeout,
        };
        let floor_refused = plan.floor_raised && result == TlsResult::HandshakeFailed;
        if plan.requires_tls() || floor_refused {
            let step = Step::Refuse {
                reason: failure,
                downgrade_suspected: plan.ratchet,
            };
            return (Self::Done, step);
        }
        if plan.allow_cleartext_fallback {
            return (Self::AwaitingCleartext(failure), Step::TryCleartext);
        }
        (Self::Done, Step::refuse(failure))
    }

    /// Feeds the result of the cleartext attempt: `connected` or not.
    pub fn on_cleartext(self, connected: bool) -> (Self, Step) {
        let Self::AwaitingCleartext(reason) = self else {
            return (Self::Done, Step::refuse(Reason::ValidationFailure));
        };
        let step = if connected {
            Step::Relay {
                achieved: Achieved::Cleartext,
                reason,
            }
        } else {
            Step::refuse(Reason::Unreachable)
        };
        (Self::Done, step)
    }
}

fn established(plan: Plan, auth: Result<Method, Reason>) -> Step {
    match auth {
        Ok(method) => Step::Relay {
            achieved: Achieved::Authenticated(method),
            reason: Reason::None,
        },
        Err(reason) if plan.requires_authentication() || reason == Reason::PinRevoked => {
            Step::refuse(reason)
        }
        Err(reason) => Step::Relay {
            achieved: Achieved::Encrypted,
            reason,
        },
    }
}

/// Runs a whole ladder against fixed results: what `plan` would do if the TLS attempt ended
/// with `tls` and a cleartext attempt with `cleartext_connects`. Used for report-only rules.
pub fn simulate(plan: Plan, tls: TlsResult, cleartext_connects: bool) -> Step {
    let (mut ladder, mut step) = Ladder::start(plan);
    loop {
        (ladder, step) = match step {
            Step::TryTls => ladder.on_tls(tls),
            Step::TryCleartext => ladder.on_cleartext(cleartext_connects),
            done => return done,
        };
    }
}

#[cfg(test)]
mod tests;
