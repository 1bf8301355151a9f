//! An SMTP listener in front of a TLS-less MTA: the backend's dialogue, with STARTTLS done by
//! osgate and the listener's key (the one its TLSA record names).

use std::rc::Rc;
use std::sync::Arc;

use osgate_core::crypto::tls_params;
use osgate_core::outcome::{Direction, Level, Outcome, Protocol, Reason, SmtpFacts, Starttls};
use osgate_core::smtp::{Inbound, InboundStarttls, Then};
use rustls::ServerConnection;
use tokio::time::Instant;

use super::{Ended, Leg, Sides};
use crate::config::InboundSmtp;
use crate::ctx::{Active, InboundListener, Node};
use crate::inbound::{connect_backend, new_outcome};
use crate::io::{Conn, Driver};
use crate::tls::Session;
use crate::watchdog::Watchdog;
use crate::{relay, report};

/// RFC 5321 §3.8: a server that must close "SHOULD" say 421 first, so the client retries.
const UNAVAILABLE: &[u8] = b"421 4.3.2 Service not available, closing transmission channel\r\n";
const TIMEOUT: &[u8] = b"421 4.4.2 Error: timeout exceeded\r\n";

/// A little beyond each read's own deadline: the watchdog is the backstop for writes to a
/// peer that stopped reading, and for the drain.
const BACKSTOP: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    peer: String,
    listener: Arc<InboundListener>,
    node: Arc<Node>,
    smtp: InboundSmtp,
) {
    let started = Instant::now();
    let _active = Active::new(Direction::Inbound);
    let client = Rc::new(client);
    let mut outcome = new_outcome(&listener, peer);
    outcome.protocol = Protocol::Smtp;
    let mut facts = SmtpFacts {
        starttls: Starttls::Offered,
        ..SmtpFacts::default()
    };
    let dog = Watchdog::start(started + node.timeouts.connect + BACKSTOP);
    dog.guard(&client);
    match connect_backend::<D>(&listener, &node).await {
        None => {
            let _ = Leg::Plain(&*client).write(UNAVAILABLE).await;
            outcome.reason = Reason::Unreachable;
        }
        Some(backend) => {
            dog.guard(&backend);
            let session = Dialogue {
                client: &client,
                backend: &backend,
                listener: &listener,
                node: &node,
                smtp,
                dog: &dog,
            };
            session.run(&mut outcome, &mut facts).await;
        }
    }
    drop(dog);
    outcome.smtp = Some(Box::new(facts));
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

struct Dialogue<'a, C> {
    client: &'a Rc<C>,
    backend: &'a Rc<C>,
    listener: &'a InboundListener,
    node: &'a Node,
    smtp: InboundSmtp,
    dog: &'a Watchdog,
}

/// How the dialogue ended.
enum End {
    Relay,
    Closed(Reason),
}

impl<C: Conn> Dialogue<'_, C> {
    async fn run(&self, outcome: &mut Outcome, facts: &mut SmtpFacts) {
        let (mut machine, mut step) = Inbound::new(self.smtp.starttls);
        let mut tls: Option<Session> = None;
        let mut greeted = false;
        let end = loop {
            let sides = Sides {
                client: leg(self.client, tls.as_ref()),
                server: Leg::Plain(&**self.backend),
            };
            match sides.write(&step).await {
                Ok((down, up)) => {
                    outcome.bytes_down += down as u64;
                    outcome.bytes_up += up as u64;
                }
                Err(_) => break End::Closed(Reason::ClientClosed),
            }
            step = match step.then {
                Then::ReadServer => {
                    let wait = match greeted {
                        true => self.smtp.timeouts.command,
                        false => self.smtp.timeouts.greeting,
                    };
                    greeted = true;
                    match self.read(&sides.server, wait).await {
                        Ok(bytes) => machine.on_server(&bytes),
                        Err(ended) => {
                            let _ = sides.client.write(UNAVAILABLE).await;
                            break End::Closed(match ended {
                                Ended::Timeout => Reason::SmtpProtocolError,
                                Ended::Closed => Reason::Unreachable,
                            });
                        }
                    }
                }
                Then::ReadClient => {
                    match self.read(&sides.client, self.smtp.timeouts.command).await {
                        Ok(bytes) => machine.on_client(&bytes),
                        Err(Ended::Timeout) => {
                            let _ = sides.client.write(TIMEOUT).await;
                            break End::Closed(Reason::ClientSilent);
                        }
                        Err(Ended::Closed) => break End::Closed(Reason::ClientClosed),
                    }
                }
                Then::StartTls => {
                    facts.starttls = Starttls::Used;
                    match self.handshake(outcome).await {
                        Ok(session) => {
                            tls = Some(session);
                            machine.on_tls_established()
                        }
                        Err(reason) => break End::Closed(reason),
                    }
                }
                Then::Relay => break End::Relay,
                Then::Close(reason) => break End::Closed(reason),
            };
        };
        facts.injected_bytes = machine.injected_bytes();
        self.finish(end, tls, &machine, outcome).await;
    }

    async fn read(&self, leg: &Leg<'_, C>, wait: std::time::Duration) -> Result<Vec<u8>, Ended> {
        let deadline = Instant::now() + wait;
        self.dog.set_deadline(deadline + BACKSTOP);
        leg.read(deadline).await
    }

    async fn handshake(&self, outcome: &mut Outcome) -> Result<Session, Reason> {
        let started = Instant::now();
        self.dog
            .set_deadline(started + self.node.timeouts.handshake);
        let server = ServerConnection::new(self.listener.server_tls.clone())
            .map_err(|_| Reason::TlsHandshakeFailed)?;
        let session = Session::new(server.into());
        if let Err(e) = session.handshake(&**self.client, false).await {
            tracing::debug!(target: "osgate::tls", error = %e, "inbound STARTTLS handshake failed");
            return Err(match self.dog.fired() {
                true => Reason::HandshakeTimeout,
                false => Reason::TlsHandshakeFailed,
            });
        }
        outcome.handshake = Some(started.elapsed());
        outcome.tls = Some(tls_params(&session.conn()));
        Ok(session)
    }

    /// Relays, and says what the session got: TLS is `encrypted` (the client is not
    /// authenticated); a transaction without TLS is `cleartext`; a session that ended before
    /// either carried no mail and is `refused`.
    async fn finish(
        &self,
        end: End,
        tls: Option<Session>,
        machine: &Inbound,
        outcome: &mut Outcome,
    ) {
        let reason = match end {
            End::Closed(reason) => reason,
            End::Relay => {
                self.dog.track_idle(self.node.timeouts.idle);
                let (close, up, down) = match &tls {
                    Some(session) => {
                        let (close, moved) =
                            relay::tls(self.backend, self.client, session, self.dog).await;
                        (close, moved.backward, moved.forward)
                    }
                    None => {
                        let (close, moved) =
                            relay::plain(self.client, self.backend, self.dog).await;
                        (close, moved.forward, moved.backward)
                    }
                };
                outcome.close = close;
                outcome.bytes_up += up;
                outcome.bytes_down += down;
                Reason::None
            }
        };
        (outcome.achieved, outcome.reason) = match (&tls, machine.cleartext_transaction()) {
            (Some(_), _) => (Level::Encrypted, reason),
            (None, true) => (Level::Cleartext, Reason::ClientNoTls),
            // QUIT before TLS: under `offer` the client chose a cleartext session (that sent
            // no mail); under `require` the listener refused it any.
            (None, false) if reason == Reason::None => match self.smtp.starttls {
                InboundStarttls::Offer => (Level::Cleartext, Reason::ClientNoTls),
                InboundStarttls::Require => (Level::Refused, Reason::CleartextDenied),
            },
            (None, false) => (Level::Refused, reason),
        };
    }
}

fn leg<'a, C>(conn: &'a Rc<C>, tls: Option<&'a Session>) -> Leg<'a, C> {
    match tls {
        Some(session) => Leg::Tls(&**conn, session),
        None => Leg::Plain(&**conn),
    }
}
