//! Outbound: a plain client of this node, carried to its peer with the best protection the
//! peer supports, as explicit policy, capability evidence and the ladder decide.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use osgate_core::auth::{Evidence, Methods, Tofu, authenticate};
use osgate_core::crypto::{TlsFloor, tls_params};
use osgate_core::ladder::{Ladder, Plan, Step, TlsResult, simulate};
use osgate_core::outcome::{Close, Direction, Level as Achieved, Outcome, Reason, TlsParams};
use osgate_core::pin::SpkiPin;
use osgate_core::policy::{Level, Peer, Rule};
use rustls::ClientConnection;
use rustls_pki_types::UnixTime;
use tokio::time::Instant;

use crate::config::Host;
use crate::ctx::{self, Active, Node, OutboundListener};
use crate::io::{Conn, Driver};
use crate::metrics as m;
use crate::tls::{HandshakeError, Session};
use crate::watchdog::Watchdog;
use crate::{relay, report};

/// A TLS connection to the peer, handshake done.
struct Established<C> {
    conn: Rc<C>,
    session: Session,
    params: TlsParams,
    handshake: Duration,
    presented: Option<SpkiPin>,
}

/// Everything decided before connecting: the enforced rule's plan and evidence.
struct Decision<'a> {
    rule: Option<&'a Rule>,
    plan: Plan,
    methods: Methods<'a>,
    evidence: Evidence<'a>,
    floor: TlsFloor,
}

fn decide<'a>(
    rule: Option<&'a Rule>,
    listener: &OutboundListener,
    node: &Node,
    now: u64,
) -> Decision<'a> {
    let (level, fallback) = match rule {
        Some(r) => (r.level, r.allow_cleartext_fallback),
        None => (listener.level, listener.allow_cleartext_fallback),
    };
    let methods = match rule {
        Some(r) if r.level == Level::Authenticate => Methods::Only(&r.methods),
        _ => Methods::All,
    };
    let tofu = match &node.store {
        Some(store) if node.tofu_enforce => store.tofu(&listener.peer_key),
        _ => Tofu::Off,
    };
    let evidence = Evidence {
        pins: rule.map_or(&[], |r| r.pins.as_slice()),
        tofu,
    };
    let ratchet = node
        .store
        .as_ref()
        .is_some_and(|s| s.ratchet(&listener.peer_key, now));
    let plan = Plan {
        level,
        allow_cleartext_fallback: fallback,
        ratchet,
        auth_expected: evidence.expects_authentication(methods),
    };
    let floor = rule.map_or(TlsFloor::Tls12, |r| r.min_tls);
    Decision {
        rule,
        plan,
        methods,
        evidence,
        floor,
    }
}

/// Serves one accepted client connection to completion.
pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    listener: Arc<OutboundListener>,
    node: Arc<Node>,
) {
    let started = Instant::now();
    let now = UnixTime::now().as_secs();
    let _active = Active::new(Direction::Outbound);
    let client = Rc::new(client);
    let peer = policy_peer(&listener);
    let selected = node.policy.select(&peer);
    let decision = decide(selected.enforced, &listener, &node, now);
    let mut outcome = Outcome {
        direction: Direction::Outbound,
        listener: listener.listen.clone(),
        peer: listener.peer.to_string(),
        desired: decision.plan.level.as_str(),
        achieved: Achieved::Refused,
        reason: Reason::None,
        tls: None,
        close: Close::NotRelayed,
        bytes_up: 0,
        bytes_down: 0,
        handshake: None,
        duration: Duration::ZERO,
        policy: decision
            .rule
            .map_or_else(|| "listener".to_owned(), |r| r.id.clone()),
        peer_key: None,
        downgrade_suspected: false,
        report_only: None,
    };
    count_policy(decision.rule, false);
    let addr = ctx::resolve(&listener.peer).await.ok();
    let (mut ladder, mut step) = Ladder::start(decision.plan);
    let mut tls: Option<Established<D::Conn>> = None;
    let mut tls_result = None;
    let mut clear: Option<Rc<D::Conn>> = None;
    loop {
        match step {
            Step::TryTls => {
                let (result, est) = try_tls::<D>(addr, &decision, &listener, &node).await;
                tls_result = Some(result);
                (ladder, step) = ladder.on_tls(result);
                tls = est;
            }
            Step::TryCleartext => {
                clear = connect::<D>(addr, &node).await.map(Rc::new);
                (ladder, step) = ladder.on_cleartext(clear.is_some());
            }
            Step::Refuse {
                reason,
                downgrade_suspected,
            } => {
                outcome.reason = reason;
                outcome.downgrade_suspected = downgrade_suspected;
                if downgrade_suspected {
                    counter!(m::DOWNGRADE_SUSPECTED_TOTAL).increment(1);
                }
                outcome.peer_key = tls
                    .as_ref()
                    .and_then(|e| e.presented)
                    .map(|p| p.to_string());
                break;
            }
            Step::Relay { achieved, reason } => {
                outcome.achieved = achieved;
                outcome.reason = reason;
                if let Some(est) = &tls {
                    remember(&node, &listener, &decision, achieved, est.presented, now);
                }
                relay_to::<D>(
                    &client,
                    tls.take(),
                    clear.take(),
                    &node,
                    started,
                    &mut outcome,
                )
                .await;
                break;
            }
        }
    }
    if let Some(rule) = selected.reported {
        outcome.report_only = Some(report_only(
            rule,
            &listener,
            &node,
            now,
            tls_result,
            clear_ok(&outcome),
        ));
    }
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

/// Whether a cleartext connection to the peer worked (for simulating report-only rules).
fn clear_ok(outcome: &Outcome) -> bool {
    outcome.achieved == Achieved::Cleartext
}

async fn relay_to<D: Driver>(
    client: &Rc<D::Conn>,
    tls: Option<Established<D::Conn>>,
    clear: Option<Rc<D::Conn>>,
    node: &Node,
    started: Instant,
    outcome: &mut Outcome,
) {
    let dog = Watchdog::start(started);
    dog.guard(client);
    dog.track_idle(node.timeouts.idle);
    let (close, moved) = match (tls, clear) {
        (Some(est), _) => {
            outcome.tls = Some(est.params);
            outcome.handshake = Some(est.handshake);
            outcome.peer_key = est.presented.map(|p| p.to_string());
            dog.guard(&est.conn);
            relay::tls(client, &est.conn, &est.session, &dog).await
        }
        (None, Some(peer)) => {
            dog.guard(&peer);
            relay::plain(client, &peer, &dog).await
        }
        (None, None) => return,
    };
    outcome.close = close;
    outcome.bytes_up = moved.forward;
    outcome.bytes_down = moved.backward;
}

/// Updates the capability store after TLS worked: the ratchet always, a TOFU pin when
/// nothing stronger authenticated the peer and it has no pin yet.
fn remember(
    node: &Node,
    listener: &OutboundListener,
    decision: &Decision<'_>,
    achieved: Achieved,
    presented: Option<SpkiPin>,
    now: u64,
) {
    let Some(store) = &node.store else { return };
    let learn = node.tofu_enforce
        && decision.evidence.tofu == Tofu::Unknown
        && achieved == Achieved::Encrypted;
    if learn {
        counter!(m::TOFU_CHECKS_TOTAL, "decision" => "learned").increment(1);
    }
    if let Err(e) = store.record_tls(&listener.peer_key, presented, learn, now) {
        tracing::error!(target: "osgate::store", error = %e, "cannot persist the capability store");
    }
}

fn policy_peer(listener: &OutboundListener) -> Peer<'_> {
    let ip = match &listener.peer.host {
        Host::Ip(ip) => Some(*ip),
        Host::Name(_) => None,
    };
    let host = listener
        .peer_key
        .rsplit_once(':')
        .map_or(listener.peer_key.as_str(), |(h, _)| {
            h.trim_start_matches('[').trim_end_matches(']')
        });
    Peer {
        host,
        port: listener.peer.port,
        ip,
    }
}

fn count_policy(rule: Option<&Rule>, report_only: bool) {
    if let Some(rule) = rule {
        let report_only = if report_only { "true" } else { "false" };
        counter!(m::POLICY_DECISIONS_TOTAL, "level" => rule.level.as_str(), "report_only" => report_only)
            .increment(1);
    }
}

/// What `rule` would have done with the same peer behaviour: never changes the wire.
fn report_only(
    rule: &Rule,
    listener: &OutboundListener,
    node: &Node,
    now: u64,
    tls: Option<TlsResult>,
    cleartext_connects: bool,
) -> (String, Achieved, Reason) {
    count_policy(Some(rule), true);
    let decision = decide(Some(rule), listener, node, now);
    // Without an observed TLS attempt, the best guess is that TLS would have been offered
    // and the peer would have refused it.
    let tls = tls.unwrap_or(TlsResult::PeerNoTls);
    let (achieved, reason) = match simulate(decision.plan, tls, cleartext_connects) {
        Step::Relay { achieved, reason } => (achieved, reason),
        Step::Refuse { reason, .. } => (Achieved::Refused, reason),
        Step::TryTls | Step::TryCleartext => (Achieved::Refused, Reason::ValidationFailure),
    };
    (rule.id.clone(), achieved, reason)
}

async fn connect<D: Driver>(addr: Option<SocketAddr>, node: &Node) -> Option<D::Conn> {
    D::connect(addr?, node.timeouts.connect).await.ok()
}

/// One TLS attempt: connect, handshake under a deadline, authenticate the key.
async fn try_tls<D: Driver>(
    addr: Option<SocketAddr>,
    decision: &Decision<'_>,
    listener: &OutboundListener,
    node: &Node,
) -> (TlsResult, Option<Established<D::Conn>>) {
    let started = Instant::now();
    let Some(conn) = connect::<D>(addr, node).await else {
        return (TlsResult::Unreachable, None);
    };
    let conn = Rc::new(conn);
    let config = node
        .client_tls
        .get(decision.floor, decision.plan.requires_authentication());
    let session = match ClientConnection::new(config, listener.server_name.clone()) {
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
        Ok(()) => None,
        Err(_) if fired => Some(TlsResult::HandshakeTimeout),
        Err(HandshakeError::NotTls | HandshakeError::ClosedEarly) => Some(TlsResult::PeerNoTls),
        Err(HandshakeError::Tls(_) | HandshakeError::Io(_)) => Some(TlsResult::HandshakeFailed),
    };
    if let Some(failure) = result {
        conn.shutdown(std::net::Shutdown::Both);
        return (failure, None);
    }
    let presented = session
        .conn()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(SpkiPin::of_certificate);
    let auth = authenticate(decision.methods, &decision.evidence, presented, || {
        check_chain(&session, listener, node)
    });
    count_tofu(&decision.evidence, auth);
    let params = tls_params(&session.conn());
    let established = Established {
        conn,
        session,
        params,
        handshake: started.elapsed(),
        presented,
    };
    (TlsResult::Established { auth }, Some(established))
}

fn count_tofu(evidence: &Evidence<'_>, auth: Result<osgate_core::outcome::Method, Reason>) {
    let decision = match (evidence.tofu, auth) {
        (_, Ok(osgate_core::outcome::Method::Tofu)) => "match",
        (_, Err(Reason::KeyChanged)) => "key-changed",
        (Tofu::StoreUnavailable, _) => "store-unavailable",
        _ => return,
    };
    counter!(m::TOFU_CHECKS_TOTAL, "decision" => decision).increment(1);
}

fn check_chain(session: &Session, listener: &OutboundListener, node: &Node) -> Result<(), Reason> {
    let conn = session.conn();
    let chain = conn.peer_certificates().unwrap_or_default();
    node.chain
        .check(chain, &listener.server_name, UnixTime::now())
}
