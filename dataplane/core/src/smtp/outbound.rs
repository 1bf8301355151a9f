//! Outbound: osgate as the SMTP client of the destination, from its greeting to a session it
//! can hand to the local client — over TLS when STARTTLS worked, else in cleartext for the
//! ladder to accept or refuse.

use super::reply::{Reply, ReplyScan, scan_reply};
use crate::outcome::Starttls;

/// What the destination's dialogue ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Write these bytes to the destination (maybe none), then read from it.
    Read(Vec<u8>),
    /// Run the TLS handshake now; then call [`Dialogue::on_tls_established`].
    StartTls,
    /// The session is ready for the local client.
    Ready(Ready),
    Failed(Failure),
}

/// A destination session that has been greeted (and, over TLS, greeted again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The destination's greeting, for the local client.
    pub greeting: Vec<u8>,
    /// Established over TLS; else the destination did not do STARTTLS (see `starttls`).
    pub tls: bool,
    pub starttls: Starttls,
}

/// Why the destination cannot carry a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It greeted with something other than 220 (RFC 5321 §3.1: it refuses service).
    Refused(Reply),
    /// A reply that is not SMTP, or an EHLO over TLS that failed.
    Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingGreeting,
    AwaitingEhlo,
    AwaitingHelo,
    AwaitingStarttls,
    AwaitingHandshake,
    AwaitingTlsEhlo,
    Done,
}

/// osgate's dialogue with one destination.
#[derive(Debug)]
pub struct Dialogue {
    helo: String,
    want_tls: bool,
    state: State,
    /// Read from the destination, not yet acted on.
    buf: Vec<u8>,
    greeting: Vec<u8>,
    starttls: Starttls,
    injected: u64,
}

impl Dialogue {
    /// A dialogue that EHLOs as `helo` and does STARTTLS if offered and `want_tls`.
    pub fn new(helo: &str, want_tls: bool) -> (Self, Progress) {
        let dialogue = Self {
            helo: helo.to_owned(),
            want_tls,
            state: State::AwaitingGreeting,
            buf: Vec::new(),
            greeting: Vec::new(),
            starttls: Starttls::Unknown,
            injected: 0,
        };
        (dialogue, Progress::Read(Vec::new()))
    }

    pub fn on_server(&mut self, bytes: &[u8]) -> Progress {
        self.buf.extend_from_slice(bytes);
        let (reply, len) = match scan_reply(&self.buf) {
            ReplyScan::NeedMore => return Progress::Read(Vec::new()),
            ReplyScan::Malformed => return self.fail(Failure::Protocol),
            ReplyScan::Complete(reply, len) => (reply, len),
        };
        let raw: Vec<u8> = self.buf.drain(..len).collect();
        match self.state {
            State::AwaitingGreeting if reply.code == 220 => {
                self.greeting = raw;
                self.state = State::AwaitingEhlo;
                Progress::Read(self.hello("EHLO"))
            }
            State::AwaitingGreeting => self.fail(Failure::Refused(reply)),
            State::AwaitingEhlo if reply.code == 250 => self.after_ehlo(&reply),
            // RFC 5321 §3.2: a server that does not know EHLO gets HELO — and has no STARTTLS.
            State::AwaitingEhlo if (500..600).contains(&reply.code) => {
                self.state = State::AwaitingHelo;
                Progress::Read(self.hello("HELO"))
            }
            State::AwaitingHelo if reply.code == 250 => {
                self.starttls = Starttls::NotOffered;
                self.ready(false)
            }
            State::AwaitingStarttls if reply.code == 220 => {
                // CONFORMANCE E.31: lines after the 220 came before TLS; a MITM wrote them.
                self.injected += self.buf.len() as u64;
                self.buf.clear();
                self.state = State::AwaitingHandshake;
                Progress::StartTls
            }
            State::AwaitingStarttls => {
                // 454 and the like: the session goes on in cleartext, if the ladder allows.
                self.starttls = Starttls::Refused;
                self.ready(false)
            }
            State::AwaitingTlsEhlo if reply.code == 250 => self.ready(true),
            _ => self.fail(Failure::Protocol),
        }
    }

    /// The handshake completed: EHLO again, and forget everything said before (RFC 3207 §4.2).
    pub fn on_tls_established(&mut self) -> Progress {
        if self.state != State::AwaitingHandshake {
            return self.fail(Failure::Protocol);
        }
        self.buf.clear();
        self.starttls = Starttls::Used;
        self.state = State::AwaitingTlsEhlo;
        Progress::Read(self.hello("EHLO"))
    }

    /// Bytes the destination sent after its `220` to STARTTLS, discarded.
    pub fn injected_bytes(&self) -> u64 {
        self.injected
    }

    pub fn starttls(&self) -> Starttls {
        self.starttls
    }

    fn after_ehlo(&mut self, reply: &Reply) -> Progress {
        if !reply.lists(b"STARTTLS") {
            self.starttls = Starttls::NotOffered;
            return self.ready(false);
        }
        self.starttls = Starttls::Offered;
        if !self.want_tls {
            return self.ready(false);
        }
        self.state = State::AwaitingStarttls;
        Progress::Read(b"STARTTLS\r\n".to_vec())
    }

    fn hello(&self, verb: &str) -> Vec<u8> {
        format!("{verb} {}\r\n", self.helo).into_bytes()
    }

    fn ready(&mut self, tls: bool) -> Progress {
        self.state = State::Done;
        Progress::Ready(Ready {
            greeting: std::mem::take(&mut self.greeting),
            tls,
            starttls: self.starttls,
        })
    }

    fn fail(&mut self, failure: Failure) -> Progress {
        self.state = State::Done;
        Progress::Failed(failure)
    }
}
