//! The local client joins a destination session osgate opened: it gets the destination's
//! greeting, its EHLO goes to the destination, and the reply comes back without STARTTLS (the
//! local leg is plain by design; the destination leg is already as protected as it gets).

use super::command::{Verb, verb};
use super::line::{Scan, scan_line};
use super::reply::{ReplyScan, scan_reply};
use super::{Step, TOO_LONG, Then};
use crate::outcome::Reason;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    AwaitingReply { ehlo: bool },
    Done,
}

#[derive(Debug)]
pub struct Join {
    state: State,
    client: Vec<u8>,
    server: Vec<u8>,
}

impl Join {
    /// Starts with the destination's greeting for the local client.
    pub fn new(greeting: Vec<u8>) -> (Self, Step) {
        let join = Self {
            state: State::AwaitingHello,
            client: Vec::new(),
            server: Vec::new(),
        };
        let step = Step::greeting(greeting);
        (join, step)
    }

    pub fn on_client(&mut self, bytes: &[u8]) -> Step {
        self.client.extend_from_slice(bytes);
        let mut step = Step::new(Then::ReadServer);
        if self.state != State::AwaitingHello {
            step.then = Then::Close(Reason::SmtpProtocolError);
            return step;
        }
        let len = match scan_line(&self.client) {
            Scan::NeedMore => {
                step.then = Then::ReadClient;
                return step;
            }
            Scan::TooLong => {
                step.to_client.extend_from_slice(TOO_LONG);
                step.then = Then::Close(Reason::SmtpProtocolError);
                return step;
            }
            Scan::Line(len) => len,
        };
        match verb(&self.client[..len]) {
            v @ (Verb::Ehlo | Verb::Helo) => {
                step.to_server.extend(self.client.drain(..len));
                self.state = State::AwaitingReply {
                    ehlo: v == Verb::Ehlo,
                };
            }
            _ => return self.relay(step),
        }
        step
    }

    pub fn on_server(&mut self, bytes: &[u8]) -> Step {
        self.server.extend_from_slice(bytes);
        let mut step = Step::new(Then::ReadServer);
        let State::AwaitingReply { ehlo } = self.state else {
            step.then = Then::Close(Reason::SmtpProtocolError);
            return step;
        };
        match scan_reply(&self.server) {
            ReplyScan::NeedMore => step,
            ReplyScan::Malformed => {
                step.then = Then::Close(Reason::SmtpProtocolError);
                step
            }
            ReplyScan::Complete(reply, len) if ehlo && reply.code == 250 => {
                self.server.drain(..len);
                step.to_client = reply.with_starttls(false).render();
                self.relay(step)
            }
            ReplyScan::Complete(..) => self.relay(step),
        }
    }

    fn relay(&mut self, mut step: Step) -> Step {
        self.state = State::Done;
        step.to_server.append(&mut self.client);
        step.to_client.append(&mut self.server);
        step.then = Then::Relay;
        step
    }
}
