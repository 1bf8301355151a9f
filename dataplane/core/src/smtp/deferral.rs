//! The local client of a destination that must be encrypted and cannot be: osgate answers as a
//! server that defers every message (`451 4.7.5`), so the client's queue keeps it and retries
//! (CONFORMANCE E.32) — and not one of its bytes reaches the destination.

use super::command::{Verb, verb};
use super::line::{Scan, scan_line};
use super::{Step, TOO_LONG, Then};
use crate::outcome::Reason;

/// Commands answered before osgate hangs up with `421`: enough for any client to reach MAIL.
const MAX_COMMANDS: usize = 20;

#[derive(Debug)]
pub struct Deferral {
    helo: String,
    /// `451 4.7.5 …` with the reason, CRLF-terminated.
    deferred: Vec<u8>,
    client: Vec<u8>,
    commands: usize,
}

/// The 4xx, with the RFC 3463 code of the failure: the queue retries whatever it is, and the
/// text says honestly which it was.
fn deferred(destination: &str, why: Reason) -> String {
    let label = why.as_str();
    match why {
        Reason::Unreachable | Reason::SmtpProtocolError => {
            format!("451 4.4.1 {destination} cannot be reached now ({label}); try again later\r\n")
        }
        Reason::DnsLookupFailed => {
            format!(
                "451 4.4.3 the MX lookup for {destination} failed ({label}); try again later\r\n"
            )
        }
        Reason::PolicyDeny => {
            format!("451 4.7.1 local policy does not allow mail to {destination} ({label})\r\n")
        }
        _ => format!(
            "451 4.7.5 TLS to {destination} is required and failed ({label}); try again later\r\n"
        ),
    }
}

impl Deferral {
    /// `why` is the reason label of the refusal (no CR or LF in it).
    pub fn new(helo: &str, destination: &str, why: Reason) -> (Self, Step) {
        let deferral = Self {
            helo: helo.to_owned(),
            deferred: deferred(destination, why).into_bytes(),
            client: Vec::new(),
            commands: 0,
        };
        let greeting = format!("220 {helo} ESMTP osgate\r\n").into_bytes();
        let step = Step::greeting(greeting);
        (deferral, step)
    }

    pub fn on_client(&mut self, bytes: &[u8]) -> Step {
        self.client.extend_from_slice(bytes);
        let mut step = Step::new(Then::ReadClient);
        loop {
            let len = match scan_line(&self.client) {
                Scan::NeedMore => return step,
                Scan::TooLong => {
                    step.to_client.extend_from_slice(TOO_LONG);
                    step.then = Then::Close(Reason::SmtpProtocolError);
                    return step;
                }
                Scan::Line(len) => len,
            };
            let verb = verb(&self.client[..len]);
            self.client.drain(..len);
            self.commands += 1;
            let answer = match verb {
                Verb::Ehlo | Verb::Helo => format!("250 {}\r\n", self.helo).into_bytes(),
                Verb::Rset | Verb::Noop => b"250 2.0.0 Ok\r\n".to_vec(),
                Verb::Quit => {
                    step.to_client.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    step.then = Then::Close(Reason::None);
                    return step;
                }
                _ => self.deferred.clone(),
            };
            step.to_client.extend(answer);
            if self.commands >= MAX_COMMANDS {
                step.to_client
                    .extend_from_slice(b"421 4.7.0 Too many commands\r\n");
                step.then = Then::Close(Reason::None);
                return step;
            }
        }
    }
}
