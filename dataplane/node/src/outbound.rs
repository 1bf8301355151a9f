//! Outbound: a plain client of this node, carried to its peer with the best protection the
//! peer supports, as the ladder decides.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use osgate_core::crypto::tls_params;
use osgate_core::ladder::{Ladder, Step, TlsResult};
use osgate_core::outcome::{Close, Direction, Level, Outcome, Reason, TlsParams};
use rustls::ClientConnection;
use rustls_pki_types::UnixTime;
use tokio::time::Instant;

use crate::ctx::{self, Active, Node, OutboundListener};
use crate::io::{Conn, Driver};
use crate::tls::{HandshakeError, Session};
use crate::watchdog::Watchdog;
use crate::{relay, report};

/// A TLS connection to the peer, handshake done.
struct Established<C> {
    conn: Rc<C>,
    session: Session,
    params: TlsParams,
    handshake: Duration,
}

/// Serves one accepted client connection to completion.
pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    listener: Arc<OutboundListener>,
    node: Arc<Node>,
) {
    let started = Instant::now();
    let _active = Active::new(Direction::Outbound);
    let client = Rc::new(client);
    let mut outcome = Outcome {
        direction: Direction::Outbound,
        listener: listener.listen.clone(),
        peer: listener.peer.to_string(),
        desired: listener.policy.as_str(),
        achieved: Level::Refused,
        reason: Reason::None,
        tls: None,
        close: Close::NotRelayed,
        bytes_up: 0,
        bytes_down: 0,
        handshake: None,
        duration: Duration::ZERO,
    };
    let addr = ctx::resolve(&listener.peer).await.ok();
    let (mut ladder, mut step) = Ladder::start(listener.policy);
    let mut tls: Option<Established<D::Conn>> = None;
    let mut clear: Option<Rc<D::Conn>> = None;
    loop {
        match step {
            Step::TryTls => {
                let result = try_tls::<D>(addr, &listener, &node).await;
                (ladder, step) = ladder.on_tls(result.0);
                tls = result.1;
            }
            Step::TryCleartext => {
                clear = connect::<D>(addr, &node).await.map(Rc::new);
                (ladder, step) = ladder.on_cleartext(clear.is_some());
            }
            Step::Refuse(reason) => {
                outcome.reason = reason;
                break;
            }
            Step::Relay { achieved, reason } => {
                outcome.achieved = achieved;
                outcome.reason = reason;
                let dog = Watchdog::start(started);
                dog.guard(&client);
                dog.track_idle(node.timeouts.idle);
                let (close, moved) = match (tls.take(), clear.take()) {
                    (Some(est), _) => {
                        outcome.tls = Some(est.params);
                        outcome.handshake = Some(est.handshake);
                        dog.guard(&est.conn);
                        relay::tls(&client, &est.conn, &est.session, &dog).await
                    }
                    (None, Some(peer)) => {
                        dog.guard(&peer);
                        relay::plain(&client, &peer, &dog).await
                    }
                    (None, None) => break,
                };
                outcome.close = close;
                outcome.bytes_up = moved.forward;
                outcome.bytes_down = moved.backward;
                break;
            }
        }
    }
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

async fn connect<D: Driver>(addr: Option<SocketAddr>, node: &Node) -> Option<D::Conn> {
    D::connect(addr?, node.timeouts.connect).await.ok()
}

/// One TLS attempt: connect, handshake under a deadline, check the chain.
async fn try_tls<D: Driver>(
    addr: Option<SocketAddr>,
    listener: &OutboundListener,
    node: &Node,
) -> (TlsResult, Option<Established<D::Conn>>) {
    let started = Instant::now();
    let Some(conn) = connect::<D>(addr, node).await else {
        return (TlsResult::Unreachable, None);
    };
    let conn = Rc::new(conn);
    let session = match ClientConnection::new(node.client_tls.clone(), listener.server_name.clone())
    {
        Ok(client) => Session::new(client.into()),
        Err(_) => return (TlsResult::HandshakeFailed, None),
    };
    let dog = Watchdog::start(Instant::now() + node.timeouts.handshake);
    dog.guard(&conn);
    let handshake = session.handshake(&*conn, true).await;
    let fired = dog.fired();
    drop(dog);
    if let Err(e) = &handshake {
        tracing::debug!(target: "osgate::tls", peer = %listener.peer, error = %e, "TLS handshake failed");
    }
    let result = match handshake {
        Ok(()) => TlsResult::Established {
            chain: check_chain(&session, listener, node),
        },
        Err(_) if fired => TlsResult::HandshakeTimeout,
        Err(HandshakeError::NotTls | HandshakeError::ClosedEarly) => TlsResult::PeerNoTls,
        Err(HandshakeError::Tls(_) | HandshakeError::Io(_)) => TlsResult::HandshakeFailed,
    };
    if !matches!(result, TlsResult::Established { .. }) {
        conn.shutdown(std::net::Shutdown::Both);
        return (result, None);
    }
    let params = tls_params(&session.conn());
    let established = Established {
        conn,
        session,
        params,
        handshake: started.elapsed(),
    };
    (result, Some(established))
}

fn check_chain(session: &Session, listener: &OutboundListener, node: &Node) -> Result<(), Reason> {
    let conn = session.conn();
    let chain = conn.peer_certificates().unwrap_or_default();
    node.chain
        .check(chain, &listener.server_name, UnixTime::now())
}
