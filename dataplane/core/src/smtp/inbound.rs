//! Inbound: osgate in front of an MTA without TLS. The backend's dialogue passes through, except
//! that osgate offers and performs STARTTLS itself, and the backend never learns of it.

use super::command::{Verb, verb};
use super::line::{Scan, scan_line};
use super::reply::{ReplyScan, scan_reply};
use super::{Step, TOO_LONG, Then};
use crate::outcome::Reason;

/// `starttls` of an SMTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Starttls {
    /// Offered; a client may go on without it (RFC 3207 §4: a publicly-referenced server "MUST
    /// NOT require the use of the STARTTLS extension").
    Offer,
    /// Mail, credentials and address probes before TLS get `530 5.7.0`.
    Require,
}

const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const MUST_STARTTLS: &[u8] = b"530 5.7.0 Must issue a STARTTLS command first\r\n";
const TLS_ACTIVE: &[u8] = b"503 5.5.1 Error: TLS already active\r\n";
const HELLO_FIRST: &[u8] = b"503 5.5.1 Error: send EHLO or HELO first after STARTTLS\r\n";
const BAD_REPLY: &[u8] =
    b"421 4.3.0 The mail server behind this gateway answered out of protocol\r\n";

/// The session, by what it waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingGreeting,
    AwaitingCommand,
    AwaitingReply(Sent),
    AwaitingHandshake,
    Done,
}

/// The command forwarded, whose reply is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Ehlo,
    Helo,
    Quit,
    Other,
}

/// One inbound SMTP session, up to the relay.
#[derive(Debug)]
pub struct Inbound {
    mode: Starttls,
    state: State,
    /// Read from the client, not yet acted on.
    client: Vec<u8>,
    /// Read from the backend, not yet passed on.
    server: Vec<u8>,
    tls: bool,
    /// After TLS: the client said EHLO/HELO again (RFC 3207 §4.2).
    greeted_in_tls: bool,
    /// A mail transaction began before TLS (allowed by `offer`).
    cleartext_transaction: bool,
    injected: u64,
}

impl Inbound {
    /// A session that first waits for the backend's greeting (the server speaks first).
    pub fn new(mode: Starttls) -> (Self, Step) {
        let session = Self {
            mode,
            state: State::AwaitingGreeting,
            client: Vec::new(),
            server: Vec::new(),
            tls: false,
            greeted_in_tls: false,
            cleartext_transaction: false,
            injected: 0,
        };
        (session, Step::new(Then::ReadServer))
    }

    pub fn on_client(&mut self, bytes: &[u8]) -> Step {
        self.client.extend_from_slice(bytes);
        self.advance()
    }

    pub fn on_server(&mut self, bytes: &[u8]) -> Step {
        self.server.extend_from_slice(bytes);
        self.advance()
    }

    /// The handshake the last [`Then::StartTls`] asked for completed.
    pub fn on_tls_established(&mut self) -> Step {
        self.tls = true;
        self.state = State::AwaitingCommand;
        self.advance()
    }

    /// Bytes the client sent after `STARTTLS` and before its handshake, discarded.
    pub fn injected_bytes(&self) -> u64 {
        self.injected
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The client began a mail transaction without TLS (only `offer` lets it).
    pub fn cleartext_transaction(&self) -> bool {
        self.cleartext_transaction
    }

    fn advance(&mut self) -> Step {
        let mut step = Step::new(Then::ReadClient);
        step.then = loop {
            let next = match self.state {
                State::AwaitingGreeting => self.greeting(&mut step),
                State::AwaitingCommand => self.command(&mut step),
                State::AwaitingReply(sent) => self.reply(sent, &mut step),
                State::AwaitingHandshake => Some(Then::StartTls),
                State::Done => Some(Then::Close(Reason::SmtpProtocolError)),
            };
            if let Some(then) = next {
                break then;
            }
        };
        if step.then == Then::Relay {
            self.state = State::Done;
            step.to_server.append(&mut self.client);
            step.to_client.append(&mut self.server);
        }
        step
    }

    fn greeting(&mut self, step: &mut Step) -> Option<Then> {
        match scan_reply(&self.server) {
            ReplyScan::NeedMore => Some(Then::ReadServer),
            ReplyScan::Malformed => Some(self.bad_reply(step)),
            ReplyScan::Complete(reply, len) => {
                step.to_client.extend(self.server.drain(..len));
                if reply.code != 220 {
                    // The MTA refuses service (RFC 5321 §3.1: 554, or 421): pass that on, end.
                    self.state = State::Done;
                    return Some(Then::Close(Reason::Unreachable));
                }
                self.state = State::AwaitingCommand;
                None
            }
        }
    }

    fn command(&mut self, step: &mut Step) -> Option<Then> {
        let len = match scan_line(&self.client) {
            Scan::NeedMore => return Some(Then::ReadClient),
            Scan::TooLong => {
                step.to_client.extend_from_slice(TOO_LONG);
                self.state = State::Done;
                return Some(Then::Close(Reason::SmtpProtocolError));
            }
            Scan::Line(len) => len,
        };
        let verb = verb(&self.client[..len]);
        if verb == Verb::Starttls && !self.tls {
            // CONFORMANCE E.30: whatever the client sent after STARTTLS was sent before TLS;
            // acting on it after the handshake would let a MITM inject commands.
            self.injected += (self.client.len() - len) as u64;
            self.client.clear();
            step.to_client.extend_from_slice(READY);
            self.state = State::AwaitingHandshake;
            return Some(Then::StartTls);
        }
        let local = match verb {
            Verb::Starttls => Some(TLS_ACTIVE),
            v if !self.tls && self.mode == Starttls::Require && v.needs_tls_when_required() => {
                Some(MUST_STARTTLS)
            }
            v if self.tls && !self.greeted_in_tls && v.needs_hello() => Some(HELLO_FIRST),
            _ => None,
        };
        if let Some(answer) = local {
            self.client.drain(..len);
            step.to_client.extend_from_slice(answer);
            return None;
        }
        if !self.tls && verb.needs_tls_when_required() {
            // `offer`, and the client goes on without TLS: its choice, recorded as cleartext.
            self.cleartext_transaction = true;
            return Some(Then::Relay);
        }
        step.to_server.extend(self.client.drain(..len));
        self.state = State::AwaitingReply(match verb {
            Verb::Ehlo => Sent::Ehlo,
            Verb::Helo => Sent::Helo,
            Verb::Quit => Sent::Quit,
            _ => Sent::Other,
        });
        None
    }

    fn reply(&mut self, sent: Sent, step: &mut Step) -> Option<Then> {
        let (reply, len) = match scan_reply(&self.server) {
            ReplyScan::NeedMore => return Some(Then::ReadServer),
            ReplyScan::Malformed => return Some(self.bad_reply(step)),
            ReplyScan::Complete(reply, len) => (reply, len),
        };
        if sent == Sent::Ehlo && reply.code == 250 {
            // osgate does STARTTLS on this leg: the backend's own offer (if any) is not
            // the client's to take, and after TLS none is offered (RFC 3207 §4.2).
            step.to_client
                .extend(reply.with_starttls(!self.tls).render());
            self.server.drain(..len);
        } else {
            step.to_client.extend(self.server.drain(..len));
        }
        let greeted = matches!(sent, Sent::Ehlo | Sent::Helo) && reply.is_positive();
        match sent {
            _ if greeted && self.tls => {
                self.greeted_in_tls = true;
                Some(Then::Relay)
            }
            Sent::Quit => {
                self.state = State::Done;
                Some(Then::Close(Reason::None))
            }
            _ => {
                self.state = State::AwaitingCommand;
                None
            }
        }
    }

    fn bad_reply(&mut self, step: &mut Step) -> Then {
        step.to_client.extend_from_slice(BAD_REPLY);
        self.state = State::Done;
        Then::Close(Reason::SmtpProtocolError)
    }
}
