//! Inbound: peek at the client's first bytes, terminate TLS or relay cleartext as the
//! listener allows, and carry the stream to the backend.

use std::rc::Rc;
use std::sync::Arc;

use metrics::counter;
use osgate_core::clients::Authenticated;
use osgate_core::crypto::tls_params;
use osgate_core::detect::{Detection, MAX_PEEK, Malformed, classify_client_hello};
use osgate_core::outcome::{Commitment, Direction, Level, Outcome, Reason};
use osgate_core::pin::SpkiPin;
use rustls::ServerConnection;
use tokio::time::{Instant, timeout_at};

use crate::ctx::{self, Active, InboundListener, Node};
use crate::io::{Conn, Driver, buffers};
use crate::metrics as m;
use crate::tls::Session;
use crate::watchdog::Watchdog;
use crate::{relay, report};

/// What the client's first bytes were.
enum Peeked {
    Tls(Vec<u8>),
    Cleartext(Vec<u8>),
    /// Nothing arrived before the deadline (a server-speaks-first protocol, or a stalled client).
    Silent,
    /// Part of a TLS header, then nothing until the deadline.
    Stalled,
    Closed,
    Reject(Malformed),
}

/// Serves one accepted client connection to completion.
pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    peer: String,
    listener: Arc<InboundListener>,
    node: Arc<Node>,
) {
    if let Some(smtp) = listener.smtp {
        return crate::smtp::inbound::serve::<D>(client, peer, listener, node, smtp).await;
    }
    let started = Instant::now();
    let _active = Active::new(Direction::Inbound);
    let client = Rc::new(client);
    let mut outcome = new_outcome(&listener, peer);
    let dog = Watchdog::start(started + node.timeouts.peek + node.timeouts.handshake);
    dog.guard(&client);
    let fleet = node.fleet.load_full();
    let clients = fleet
        .inbound_clients(&listener.listen)
        .unwrap_or(&listener.clients);
    let cleartext_allowed = listener.cleartext_allowed && clients.admits_cleartext();
    match peek(&*client, started + node.timeouts.peek).await {
        Peeked::Tls(first) => {
            let who = ClientCheck {
                clients,
                fleet: &fleet,
            };
            terminate::<D>(&client, first, &listener, &node, &dog, who, &mut outcome).await
        }
        // The listener would take it, but only fleet nodes or pinned clients are served.
        Peeked::Cleartext(_) | Peeked::Silent
            if listener.cleartext_allowed && !cleartext_allowed =>
        {
            outcome.reason = Reason::ClientNotAuthorized;
        }
        Peeked::Cleartext(first) if listener.cleartext_allowed => {
            outcome.reason = Reason::ClientNoTls;
            cleartext::<D>(&client, first, &listener, &node, &dog, &mut outcome).await;
        }
        Peeked::Silent if listener.cleartext_allowed => {
            outcome.reason = Reason::ClientSilent;
            cleartext::<D>(&client, Vec::new(), &listener, &node, &dog, &mut outcome).await;
        }
        Peeked::Cleartext(_) => outcome.reason = Reason::CleartextDenied,
        Peeked::Silent | Peeked::Stalled => outcome.reason = Reason::ClientSilent,
        Peeked::Closed => outcome.reason = Reason::ClientClosed,
        Peeked::Reject(kind) => {
            counter!(m::DETECT_REJECTED_TOTAL, "kind" => kind.as_str()).increment(1);
            outcome.reason = Reason::MalformedClientHello;
        }
    }
    drop(dog);
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

/// The record of an inbound connection, before anything happened.
pub(crate) fn new_outcome(listener: &InboundListener, peer: String) -> Outcome {
    let mut outcome = Outcome::begin(Direction::Inbound, listener.listen.clone(), peer);
    outcome.desired = listener.desired();
    if !listener.cleartext_allowed {
        outcome.commitment = Commitment::Tls;
    }
    outcome
}

/// Reads the first bytes until the classifier decides or the deadline passes. Waits are
/// readiness waits (cancel-safe); reads never block, so the deadline holds on both drivers.
async fn peek<C: Conn>(client: &C, deadline: Instant) -> Peeked {
    let mut first = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        match timeout_at(deadline, client.readable()).await {
            Err(_) if first.is_empty() => return Peeked::Silent,
            Err(_) => return Peeked::Stalled,
            Ok(Err(_)) => return Peeked::Closed,
            Ok(Ok(())) => {}
        }
        match client.try_read_now(&mut chunk) {
            Ok(0) => return Peeked::Closed,
            Ok(n) => first.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Peeked::Closed,
        }
        match classify_client_hello(&first) {
            Detection::NeedMore if first.len() < MAX_PEEK => {}
            Detection::NeedMore => return Peeked::Reject(Malformed::RecordLength),
            Detection::Tls => return Peeked::Tls(first),
            Detection::Cleartext => return Peeked::Cleartext(first),
            Detection::Reject(kind) => return Peeked::Reject(kind),
        }
    }
}

/// Who a listener serves, and the fleet whose node keys `fleet` in it means.
struct ClientCheck<'a> {
    clients: &'a osgate_core::clients::Clients,
    fleet: &'a osgate_core::fleet::Fleet,
}

impl ClientCheck<'_> {
    /// What the client's certificate proves, or why it is not served.
    fn admit(&self, session: &Session) -> Result<Option<Authenticated>, Reason> {
        let conn = session.conn();
        let presented = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(SpkiPin::of_certificate);
        let node = presented.and_then(|key| self.fleet.node_named(&key));
        osgate_core::clients::admit(self.clients, presented, node)
    }
}

async fn terminate<D: Driver>(
    client: &Rc<D::Conn>,
    first: Vec<u8>,
    listener: &InboundListener,
    node: &Node,
    dog: &Watchdog,
    clients: ClientCheck<'_>,
    outcome: &mut Outcome,
) {
    let handshake_started = Instant::now();
    dog.set_deadline(handshake_started + node.timeouts.handshake);
    let Ok(server) = ServerConnection::new(listener.server_tls.clone()) else {
        outcome.reason = Reason::TlsHandshakeFailed;
        return;
    };
    let session = Session::new(server.into());
    let handshake = match session.feed_handshake(&first) {
        Ok(()) => session.handshake(&**client, false).await.map_err(|e| {
            tracing::debug!(target: "osgate::tls", error = %e, "inbound TLS handshake failed");
        }),
        Err(_) => {
            let _ = session.flush(&**client, crate::tls::ALERT).await;
            Err(())
        }
    };
    if handshake.is_err() {
        outcome.reason = if dog.fired() {
            Reason::HandshakeTimeout
        } else {
            Reason::TlsHandshakeFailed
        };
        return;
    }
    outcome.handshake = Some(handshake_started.elapsed());
    outcome.tls = Some(tls_params(&session.conn()));
    // Before the backend is dialled: a client not served never reaches it.
    let achieved = match clients.admit(&session) {
        Ok(Some(client)) => {
            outcome.client = Some(client.who);
            Level::Authenticated(client.method)
        }
        Ok(None) => Level::Encrypted,
        Err(reason) => {
            outcome.reason = reason;
            return;
        }
    };
    let Some(backend) = connect_backend::<D>(listener, node).await else {
        outcome.reason = Reason::Unreachable;
        return;
    };
    outcome.achieved = achieved;
    dog.guard(&backend);
    dog.track_idle(node.timeouts.idle);
    let (close, moved) = relay::tls(&backend, client, &session, dog).await;
    outcome.close = close;
    outcome.bytes_up = moved.backward;
    outcome.bytes_down = moved.forward;
}

async fn cleartext<D: Driver>(
    client: &Rc<D::Conn>,
    first: Vec<u8>,
    listener: &InboundListener,
    node: &Node,
    dog: &Watchdog,
    outcome: &mut Outcome,
) {
    let Some(backend) = connect_backend::<D>(listener, node).await else {
        outcome.reason = Reason::Unreachable;
        return;
    };
    if !first.is_empty() {
        let len = first.len();
        let (result, buf) = backend.write_all(first, len).await;
        buffers::give(buf);
        if result.is_err() {
            outcome.reason = Reason::Unreachable;
            return;
        }
        outcome.bytes_up = len as u64;
    }
    outcome.achieved = Level::Cleartext;
    dog.guard(&backend);
    dog.track_idle(node.timeouts.idle);
    let (close, moved) = relay::plain(client, &backend, dog).await;
    outcome.close = close;
    outcome.bytes_up += moved.forward;
    outcome.bytes_down = moved.backward;
}

pub(crate) async fn connect_backend<D: Driver>(
    listener: &InboundListener,
    node: &Node,
) -> Option<Rc<D::Conn>> {
    let addr = ctx::resolve(&listener.backend).await.ok()?;
    D::connect(addr, node.timeouts.connect)
        .await
        .ok()
        .map(Rc::new)
}
