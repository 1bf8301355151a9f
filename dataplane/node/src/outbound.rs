//! Outbound: a plain client of this node, carried to its peer with the best protection the
//! peer supports, as explicit policy, capability evidence and the ladder decide.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::counter;
use osgate_core::auth::{ChainChecks, Evidence, Methods, Tofu, authenticate};
use osgate_core::crypto::{TlsFloor, check_dane_ta, tls_params};
use osgate_core::dane::{Match, Tlsa, TlsaSet, match_chain};
use osgate_core::fleet::Fleet;
use osgate_core::ladder::{Ladder, Plan, Step, TlsResult, simulate};
use osgate_core::outcome::{
    Close, Direction, Level as Achieved, Method, Outcome, Reason, TlsParams,
};
use osgate_core::pin::SpkiPin;
use osgate_core::policy::{Level, Peer, Rule};
use rustls::ClientConnection;
use rustls_pki_types::{ServerName, UnixTime};
use tokio::time::Instant;

use crate::config::Host;
use crate::ctx::{self, Active, Node, OutboundListener, WorkerDns};
use crate::dns::Dane;
use crate::io::{Conn, Driver};
use crate::metrics as m;
use crate::store::PinUpdate;
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
    /// The TLSA record that authenticated the peer, when DANE did.
    tlsa_match: Option<String>,
}

/// Everything decided before connecting: the enforced rule's plan and evidence.
struct Decision<'a> {
    rule: Option<&'a Rule>,
    plan: Plan,
    methods: Methods<'a>,
    evidence: Evidence<'a>,
    floor: TlsFloor,
    /// SNI and the name checked: the TLSA base domain when DANE applies (RFC 7672 §3.2.2).
    server_name: ServerName<'static>,
    /// The usable TLSA records, when DANE applies.
    tlsa: &'a [Tlsa],
}

fn decide<'a>(
    rule: Option<&'a Rule>,
    listener: &'a OutboundListener,
    node: &Node,
    fleet: &'a Fleet,
    now: u64,
    dane: Option<&'a Dane>,
) -> Decision<'a> {
    let (level, fallback) = match rule {
        Some(r) => (r.level, r.allow_cleartext_fallback),
        None => (listener.level, listener.allow_cleartext_fallback),
    };
    let methods = match rule {
        Some(r) if r.level == Level::Authenticate => Methods::Only(&r.methods),
        _ => Methods::All,
    };
    let peer = listener.peer_key.as_str();
    let (tofu, ratchet) = match &node.store {
        Some(store) => store.lookup(peer, now),
        None => (Tofu::Off, false),
    };
    let tofu = if node.tofu_enforce { tofu } else { Tofu::Off };
    let tofu = fleet.tofu(peer, tofu);
    let (tlsa, base, tls_committed): (&[Tlsa], Option<&str>, bool) = match dane {
        Some(Dane::Records {
            set: TlsaSet::Usable(records),
            base,
        }) => (records.as_slice(), Some(base.as_str()), false),
        Some(Dane::Records {
            set: TlsaSet::Unusable,
            ..
        }) => (&[], None, true),
        _ => (&[], None, false),
    };
    let rule_pins = rule.map_or(&[][..], |r| r.pins.as_slice());
    let evidence = Evidence {
        pins: match rule_pins.is_empty() {
            true => fleet.approved(peer),
            false => rule_pins,
        },
        fleet: fleet.node_keys(peer),
        dane: !tlsa.is_empty(),
        tofu,
    };
    let plan = Plan {
        level,
        allow_cleartext_fallback: fallback,
        ratchet,
        tls_committed,
        auth_expected: evidence.expects_authentication(methods),
    };
    let floor = rule.map_or(TlsFloor::Tls12, |r| r.min_tls);
    let server_name = base
        .and_then(|b| ServerName::try_from(b.to_owned()).ok())
        .unwrap_or_else(|| listener.server_name.clone());
    Decision {
        rule,
        plan,
        methods,
        evidence,
        floor,
        server_name,
        tlsa,
    }
}

/// What DNS said before connecting.
struct Lookup {
    /// The addresses to try, in order (empty: resolve with the system resolver).
    addrs: Vec<SocketAddr>,
    dane: Option<Dane>,
    /// A DANE-relevant lookup failed: refuse (never read as "no TLSA").
    refuse: Option<Reason>,
}

/// Looks up the peer's addresses and TLSA records with DNSSEC, where DANE applies: `[dns]`
/// is configured, the peer is a name, and explicit policy allows TLS.
async fn lookup(
    listener: &OutboundListener,
    rule: Option<&Rule>,
    node: &Node,
    dns: Option<&WorkerDns>,
) -> Lookup {
    let mut out = Lookup {
        addrs: Vec::new(),
        dane: None,
        refuse: None,
    };
    let level = rule.map_or(listener.level, |r| r.level);
    let (Some(dns), Host::Name(host)) = (dns, &listener.peer.host) else {
        return out;
    };
    if matches!(level, Level::Cleartext | Level::Deny) {
        return out;
    }
    let requires_dane =
        rule.is_some_and(|r| r.level == Level::Authenticate && r.methods == [Method::Dane]);
    let validating = node.dnssec_validating.load(Ordering::Relaxed);
    let explicit = node.dns.as_ref().is_some_and(|d| d.explicit);
    if !validating && !explicit {
        // DANE by default, but the system's resolvers do not validate: names resolve as
        // they would without osgate, and only peers that require DANE are refused.
        out.refuse = requires_dane.then_some(Reason::DaneRequired);
        return out;
    }
    let addresses = match dns.dns.addresses(host).await {
        Ok(addresses) => addresses,
        Err(failed) => {
            out.refuse = Some(refusal(&failed));
            out.dane = Some(failed);
            return out;
        }
    };
    out.addrs = addresses
        .ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, listener.peer.port))
        .collect();
    if !validating {
        out.refuse = requires_dane.then_some(Reason::DaneRequired);
        return out;
    }
    let dane = dns.dns.dane(host, listener.peer.port, &addresses).await;
    counter!(m::DANE_LOOKUPS_TOTAL, "result" => dane.label()).increment(1);
    if let Dane::Failed { .. } = dane {
        out.refuse = Some(refusal(&dane));
    }
    out.dane = Some(dane);
    out
}

fn refusal(failed: &Dane) -> Reason {
    match failed {
        Dane::Failed { bogus: true } => Reason::DnssecInvalid,
        _ => Reason::DnsLookupFailed,
    }
}

/// Serves one accepted client connection to completion.
pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    listener: Arc<OutboundListener>,
    node: Arc<Node>,
    dns: Option<Rc<WorkerDns>>,
) {
    let started = Instant::now();
    let _active = Active::new(Direction::Outbound);
    let client = Rc::new(client);
    // Setup state (policy, evidence, DNS answers) ends here: an idle tunnel keeps only what
    // the relay needs.
    let (mut outcome, connected) = establish::<D>(&listener, &node, dns.as_deref()).await;
    if let Some((tls, clear)) = connected {
        relay_to::<D>(&client, tls, clear, &node, started, &mut outcome).await;
    }
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

/// The connection to the peer the ladder settled on: TLS, or cleartext.
type Connected<C> = (Option<Established<C>>, Option<Rc<C>>);

/// Runs policy, evidence and the ladder; returns the outcome so far and, unless refused, the
/// connection to relay over.
async fn establish<D: Driver>(
    listener: &OutboundListener,
    node: &Node,
    dns: Option<&WorkerDns>,
) -> (Outcome, Option<Connected<D::Conn>>) {
    let now = UnixTime::now().as_secs();
    let peer = policy_peer(listener);
    let fleet = node.fleet.load_full();
    let selected = fleet.policy.select(&peer);
    let found = lookup(listener, selected.enforced, node, dns).await;
    let decision = decide(
        selected.enforced,
        listener,
        node,
        &fleet,
        now,
        found.dane.as_ref(),
    );
    if !decision.tlsa.is_empty() {
        let sessions = &node.client_tls.authenticated_sessions;
        sessions.note_tlsa(&decision.server_name, decision.tlsa);
    }
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
        policy: policy_id(decision.rule, &fleet),
        peer_key: None,
        downgrade_suspected: false,
        dane: found.dane.as_ref().map(Dane::label),
        tlsa: None,
        report_only: None,
    };
    count_policy(decision.rule, false);
    let addrs = match found.addrs.is_empty() {
        false => found.addrs,
        true => ctx::resolve(&listener.peer)
            .await
            .ok()
            .into_iter()
            .collect(),
    };
    let addr = addrs.first().copied();
    let (mut ladder, mut step) = match found.refuse {
        Some(reason) => (
            Ladder::Done,
            Step::Refuse {
                reason,
                downgrade_suspected: false,
            },
        ),
        None => Ladder::start(decision.plan),
    };
    let mut tls: Option<Established<D::Conn>> = None;
    let mut tls_result = None;
    let mut clear: Option<Rc<D::Conn>> = None;
    let connected = loop {
        match step {
            Step::TryTls => {
                let (result, est) = try_addresses::<D>(&addrs, &decision, listener, node).await;
                tls_result = Some(result);
                (ladder, step) = ladder.on_tls(result);
                tls = est;
            }
            Step::TryCleartext => {
                clear = connect::<D>(addr, node).await.map(Rc::new);
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
                break None;
            }
            Step::Relay { achieved, reason } => {
                outcome.achieved = achieved;
                outcome.reason = reason;
                outcome.tlsa = tls.as_ref().and_then(|e| e.tlsa_match.clone());
                if let Some(est) = &tls {
                    remember(node, listener, &decision, achieved, est.presented, now);
                }
                break Some((tls.take(), clear.take()));
            }
        }
    };
    if let Some(rule) = selected.reported {
        let cleartext_connects = outcome.achieved == Achieved::Cleartext;
        outcome.report_only = Some(report_only(
            rule,
            listener,
            node,
            &fleet,
            now,
            tls_result,
            cleartext_connects,
        ));
    }
    (outcome, connected)
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
    let update = match (learn, achieved) {
        (true, _) => PinUpdate::Learn,
        (false, Achieved::Authenticated(Method::Dane)) if node.tofu_enforce => {
            PinUpdate::VouchedByDane
        }
        _ => PinUpdate::Keep,
    };
    if let Err(e) = store.record_tls(&listener.peer_key, presented, update, now) {
        tracing::error!(target: "osgate::store", error = %e, "cannot persist the capability store");
    }
}

/// The rule as outcome records name it; control-plane rules with their revision.
fn policy_id(rule: Option<&Rule>, fleet: &Fleet) -> String {
    match rule {
        None => "listener".to_owned(),
        Some(r) if r.id.starts_with("cp:") => format!("{}@{}", r.id, fleet.revision),
        Some(r) => r.id.clone(),
    }
}

fn policy_peer(listener: &OutboundListener) -> Peer<'_> {
    Peer {
        host: &listener.policy_host,
        port: listener.peer.port,
        ip: match &listener.peer.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        },
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
    fleet: &Fleet,
    now: u64,
    tls: Option<TlsResult>,
    cleartext_connects: bool,
) -> (String, Achieved, Reason) {
    count_policy(Some(rule), true);
    let decision = decide(Some(rule), listener, node, fleet, now, None);
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
/// TLS to each address in turn while secure TLSA records do not match the key presented
/// (RFC 7672 §2.2: another address of the peer may hold the right key); any other result
/// ends the search. Never more than one attempt per address.
async fn try_addresses<D: Driver>(
    addrs: &[SocketAddr],
    decision: &Decision<'_>,
    listener: &OutboundListener,
    node: &Node,
) -> (TlsResult, Option<Established<D::Conn>>) {
    let mut tried = 0;
    loop {
        let addr = addrs.get(tried).copied();
        let (result, est) = try_tls::<D>(addr, decision, listener, node).await;
        tried += 1;
        let mismatch = matches!(
            result,
            TlsResult::Established {
                auth: Err(Reason::TlsaInvalid)
            }
        );
        if !mismatch || tried >= addrs.len() {
            return (result, est);
        }
        tracing::info!(target: "osgate::dane", peer = %listener.peer, addr = ?addr, "TLSA records do not match this address's key; trying the next address");
    }
}

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
    let session = match ClientConnection::new(config, decision.server_name.clone()) {
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
    let checks = Checks {
        session: &session,
        decision,
        node,
        matched: Cell::new(None),
    };
    let auth = authenticate(decision.methods, &decision.evidence, presented, &checks);
    let tlsa_match = match auth {
        Ok(Method::Dane) => checks.matched.take(),
        _ => None,
    };
    count_tofu(&decision.evidence, auth);
    let params = tls_params(&session.conn());
    let established = Established {
        conn,
        session,
        params,
        handshake: started.elapsed(),
        presented,
        tlsa_match,
    };
    (TlsResult::Established { auth }, Some(established))
}

fn count_tofu(evidence: &Evidence<'_>, auth: Result<Method, Reason>) {
    let decision = match (evidence.tofu, auth) {
        (_, Ok(Method::Tofu)) => "match",
        (_, Err(Reason::KeyChanged)) => "key-changed",
        (Tofu::StoreUnavailable, _) => "store-unavailable",
        _ => return,
    };
    counter!(m::TOFU_CHECKS_TOTAL, "decision" => decision).increment(1);
}

/// The chain checks of one established session.
struct Checks<'a> {
    session: &'a Session,
    decision: &'a Decision<'a>,
    node: &'a Node,
    /// The TLSA record `dane()` matched, for the outcome record.
    matched: Cell<Option<String>>,
}

impl ChainChecks for Checks<'_> {
    fn dane(&self) -> Result<(), Reason> {
        let conn = self.session.conn();
        let chain = conn.peer_certificates().unwrap_or_default();
        let (record, checked) = match match_chain(self.decision.tlsa, chain) {
            Match::EndEntity(record) => (record, Ok(())),
            Match::TrustAnchor(record, anchor) => (
                record,
                check_dane_ta(
                    &self.node.crypto,
                    chain,
                    anchor,
                    &self.decision.server_name,
                    UnixTime::now(),
                ),
            ),
            Match::NoMatch => return Err(Reason::TlsaInvalid),
        };
        self.matched.set(Some(record.to_string()));
        checked
    }

    fn pkix(&self) -> Result<(), Reason> {
        let conn = self.session.conn();
        let chain = conn.peer_certificates().unwrap_or_default();
        self.node
            .chain
            .check(chain, &self.decision.server_name, UnixTime::now())
    }
}
