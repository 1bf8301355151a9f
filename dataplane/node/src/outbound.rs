//! Outbound: a plain client of this node, carried to its peer with the best protection the
//! peer supports, as explicit policy, capability evidence and the ladder decide.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::counter;
use osgate_core::auth::{ChainChecks, Evidence, Tofu, authenticate};
use osgate_core::crypto::{check_dane_ta, tls_params};
use osgate_core::dane::{Lookup, Match, match_chain};
use osgate_core::fleet::Fleet;
use osgate_core::ladder::{Ladder, Step, TlsResult};
use osgate_core::outcome::{
    Direction, FleetEvidence, Level as Achieved, Method, Outcome, Reason, TlsParams,
};
use osgate_core::pin::SpkiPin;
use osgate_core::plan::{self, Decision, Defaults, Facts, Local, PinUpdate};
use osgate_core::policy::{Peer, Rule};
use osgate_core::sts::Requirement;
use rustls::ClientConnection;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::Instant;

use crate::config::Host;
use crate::ctx::{self, Active, Node, OutboundListener, Target, WorkerDns};
use crate::io::{Conn, Driver};
use crate::metrics as m;
use crate::store::Known;
use crate::tls::{HandshakeError, Session};
use crate::watchdog::Watchdog;
use crate::{relay, report};

/// A TLS connection to the peer, handshake done.
pub(crate) struct Established<C> {
    pub conn: Rc<C>,
    pub session: Session,
    params: TlsParams,
    handshake: Duration,
    presented: Option<SpkiPin>,
    /// The TLSA record that authenticated the peer, when DANE did.
    tlsa_match: Option<String>,
}

/// What DNS said before connecting.
struct Looked {
    /// The addresses to try, in order (empty: resolve with the system resolver).
    addrs: Vec<SocketAddr>,
    lookup: Lookup,
}

/// Looks up the peer's addresses and TLSA records with DNSSEC, where DANE applies: `[dns]`
/// is configured, the peer is a name, and explicit policy allows TLS. Only I/O: what the
/// answers mean is the core's ([`plan::decide`]).
async fn lookup(
    listener: &OutboundListener,
    target: &Target,
    rule: Option<&Rule>,
    node: &Node,
    dns: Option<&WorkerDns>,
) -> Looked {
    let mut out = Looked {
        addrs: Vec::new(),
        lookup: Lookup::NotConsulted,
    };
    let (Some(dns), Host::Name(host)) = (dns, &target.peer.host) else {
        return out;
    };
    if !plan::consults_dns(rule, defaults(listener, node)) {
        return out;
    }
    let validating = node.dnssec_validating.load(Ordering::Relaxed);
    let explicit = node.dns.as_ref().is_some_and(|d| d.explicit);
    if !validating && !explicit {
        // DANE by default, but the system's resolvers do not validate: names resolve as
        // they would without osgate.
        out.lookup = Lookup::NotValidating;
        return out;
    }
    let addresses = match dns.dns.addresses(host).await {
        Ok(addresses) => addresses,
        Err(failed) => {
            out.lookup = failed;
            return out;
        }
    };
    out.addrs = addresses
        .ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, target.peer.port))
        .collect();
    if !validating || !target.dane {
        out.lookup = Lookup::NotValidating;
        return out;
    }
    out.lookup = dns.dns.dane(host, target.peer.port, &addresses).await;
    if let Some(label) = out.lookup.label() {
        counter!(m::DANE_LOOKUPS_TOTAL, "result" => label).increment(1);
    }
    out
}

fn defaults(listener: &OutboundListener, node: &Node) -> Defaults {
    Defaults {
        level: listener.level,
        allow_cleartext_fallback: listener.allow_cleartext_fallback,
        floor: node.crypto.floor(),
    }
}

/// Serves one accepted client connection to completion.
pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    listener: Arc<OutboundListener>,
    node: Arc<Node>,
    dns: Option<Rc<WorkerDns>>,
) {
    if listener.smtp.is_some() {
        return crate::smtp::outbound::serve::<D>(client, listener, node, dns).await;
    }
    let started = Instant::now();
    let _active = Active::new(Direction::Outbound);
    let client = Rc::new(client);
    // Setup state (policy, evidence, DNS answers) ends here: an idle tunnel keeps only what
    // the relay needs.
    let target = &listener.target;
    let (mut outcome, connected) =
        establish::<D, _>(&listener, target, &node, dns.as_deref(), &Tcp).await;
    if let Some((tls, clear)) = connected {
        relay_to::<D>(&client, tls, clear, &node, started, &mut outcome).await;
    }
    outcome.duration = started.elapsed();
    report::emit(&outcome);
}

/// The connection to the peer the ladder settled on: TLS, or cleartext.
pub(crate) type Connected<C> = (Option<Established<C>>, Option<Rc<C>>);

/// What a protocol does on the TCP connection around the TLS handshake. Plain TCP does
/// nothing; SMTP speaks its dialogue up to STARTTLS, and EHLOs again after it.
pub(crate) trait Starter<D: Driver> {
    /// Before the ClientHello; `Err` ends this attempt.
    async fn before_tls(&self, conn: &Rc<D::Conn>) -> Result<(), TlsResult>;
    /// After the handshake and the key's check, before the connection is taken.
    async fn after_tls(&self, conn: &D::Conn, session: &Session) -> Result<(), TlsResult>;
    /// A cleartext connection to `addr`, ready to relay.
    async fn cleartext(&self, addr: Option<SocketAddr>, node: &Node) -> Option<Rc<D::Conn>>;

    /// What the protocol's own evidence asks of `target` once DNS answered: SMTP's MTA-STS
    /// policy, below DANE.
    fn requirement(&self, _target: &Target, _lookup: &Lookup) -> Requirement {
        Requirement::None
    }
}

/// Any TCP stream.
pub(crate) struct Tcp;

impl<D: Driver> Starter<D> for Tcp {
    async fn before_tls(&self, _: &Rc<D::Conn>) -> Result<(), TlsResult> {
        Ok(())
    }

    async fn after_tls(&self, _: &D::Conn, _: &Session) -> Result<(), TlsResult> {
        Ok(())
    }

    async fn cleartext(&self, addr: Option<SocketAddr>, node: &Node) -> Option<Rc<D::Conn>> {
        connect::<D>(addr, node).await.map(Rc::new)
    }
}

/// Runs policy, evidence and the ladder; returns the outcome so far and, unless refused, the
/// connection to relay over.
pub(crate) async fn establish<D: Driver, S: Starter<D>>(
    listener: &OutboundListener,
    target: &Target,
    node: &Node,
    dns: Option<&WorkerDns>,
    starter: &S,
) -> (Outcome, Option<Connected<D::Conn>>) {
    let now = UnixTime::now().as_secs();
    let peer = policy_peer(target);
    let fleet = node.fleet.load_full();
    let mut selected = fleet.policy.select(&peer);
    if let (Some(domain), None, None) =
        (&target.policy_domain, selected.enforced, selected.reported)
    {
        let port = target.peer.port;
        selected = fleet.policy.select(&Peer {
            host: domain,
            port,
            ip: None,
        });
    }
    let mut found = lookup(listener, target, selected.enforced, node, dns).await;
    // The record's `dane` says what this node's own lookup found, whatever fills in for it.
    let own_dane = found.lookup.label();
    let tls_allowed = plan::consults_dns(selected.enforced, defaults(listener, node));
    let dane = fleet
        .caches
        .dane(&target.peer_key, found.lookup, tls_allowed, now);
    found.lookup = dane.lookup;
    let requirement = starter.requirement(target, &found.lookup);
    // Explicit policy preempts the protocol's evidence (RFC 7435 §3).
    let (enforced, reported) = match &requirement {
        Requirement::Pkix(rule) if !rule.report_only && selected.enforced.is_none() => {
            (Some(rule), selected.reported)
        }
        Requirement::Pkix(rule) if rule.report_only && selected.reported.is_none() => {
            (selected.enforced, Some(rule))
        }
        _ => (selected.enforced, selected.reported),
    };
    let known = match &node.store {
        Some(store) => store.lookup(&target.peer_key, now),
        None => Known {
            operator: Vec::new(),
            tofu: Tofu::Off,
            ratchet: false,
        },
    };
    let facts = Facts {
        rule: enforced,
        defaults: defaults(listener, node),
        lookup: &found.lookup,
        local: Local {
            operator: &known.operator,
            tofu: known.tofu,
            ratchet: known.ratchet,
        },
        fleet: &fleet,
        peer: &target.peer_key,
        tofu_enforce: node.tofu_enforce,
        now,
    };
    let mut decision = plan::decide(&facts);
    if requirement == Requirement::MxMismatch && selected.enforced.is_none() {
        decision.plan.refused = Some(Reason::StsMxMismatch);
    }
    let server_name = server_name(&decision, target);
    if !decision.tlsa.is_empty() {
        let sessions = &node.client_tls.authenticated_sessions;
        sessions.note_tlsa(&server_name, decision.tlsa);
    }
    let mut outcome = Outcome::begin(
        Direction::Outbound,
        listener.listen.clone(),
        target.peer.to_string(),
    );
    outcome.desired = decision.plan.level.as_str();
    outcome.commitment = decision.plan.commitment();
    outcome.policy = policy_id(decision.rule, &fleet);
    outcome.dane = own_dane;
    outcome.fleet = FleetEvidence {
        dane: dane.from_fleet,
        ratchet: facts.ratchet(),
    };
    count_policy(decision.rule, false);
    let addrs = match found.addrs.is_empty() {
        false => found.addrs,
        true => ctx::resolve(&target.peer).await.ok().into_iter().collect(),
    };
    let attempt = Attempt {
        decision: &decision,
        server_name,
        target,
        node,
    };
    let (mut ladder, mut step) = Ladder::start(decision.plan);
    let mut tls: Option<Established<D::Conn>> = None;
    let mut tls_result = None;
    let mut clear: Option<Rc<D::Conn>> = None;
    let connected = loop {
        match step {
            Step::TryTls => {
                let (result, est) = try_addresses::<D, S>(&addrs, &attempt, starter).await;
                tls_result = Some(result);
                (ladder, step) = ladder.on_tls(result);
                tls = est;
            }
            Step::TryCleartext => {
                clear = starter.cleartext(addrs.first().copied(), node).await;
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
                let presented = tls.as_ref().and_then(|e| e.presented);
                outcome.peer_key = presented.map(|p| p.to_string());
                if let (Reason::KeyChanged, Some(key)) = (reason, presented) {
                    remember_refused(node, target, key, now);
                }
                break None;
            }
            Step::Relay { achieved, reason } => {
                outcome.achieved = achieved;
                outcome.reason = reason;
                outcome.tlsa = tls.as_ref().and_then(|e| e.tlsa_match.clone());
                if let Some(est) = &tls {
                    remember(node, target, &decision, achieved, est.presented, now);
                    let starttls = listener.smtp.is_some();
                    crate::observed::saw(&target.peer_key, &est.params, starttls, now);
                }
                break Some((tls.take(), clear.take()));
            }
        }
    };
    if let Requirement::ReportMxMismatch(id) = &requirement {
        outcome.report_only = Some((id.clone(), Achieved::Refused, Reason::StsMxMismatch));
    }
    if let Some(rule) = reported {
        count_policy(Some(rule), true);
        let cleartext_connects = outcome.achieved == Achieved::Cleartext;
        let (achieved, reason) = plan::report_only(&facts, rule, tls_result, cleartext_connects);
        outcome.report_only = Some((rule.id.clone(), achieved, reason));
    }
    (outcome, connected)
}

/// SNI and the name checked: the TLSA base domain when DANE applies (RFC 7672 §3.2.2).
fn server_name(decision: &Decision<'_>, target: &Target) -> ServerName<'static> {
    decision
        .tlsa_base
        .and_then(|b| ServerName::try_from(b.to_owned()).ok())
        .unwrap_or_else(|| target.server_name.clone())
}

pub(crate) async fn relay_to<D: Driver>(
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

/// Updates the capability store after TLS worked: the ratchet always, and the pin as the
/// core says ([`plan::pin_update`]).
fn remember(
    node: &Node,
    target: &Target,
    decision: &Decision<'_>,
    achieved: Achieved,
    presented: Option<SpkiPin>,
    now: u64,
) {
    let Some(store) = &node.store else { return };
    let update = plan::pin_update(decision, achieved, node.tofu_enforce);
    if update == PinUpdate::Learn {
        counter!(m::TOFU_CHECKS_TOTAL, "decision" => "learned").increment(1);
    }
    if let Err(e) = store.record_tls(&target.peer_key, presented, update, now) {
        tracing::error!(target: "osgate::store", error = %e, "cannot persist the capability store");
    }
}

/// Keeps the key a pinned peer was refused for, so `osgate pins show` names old and new.
fn remember_refused(node: &Node, target: &Target, key: SpkiPin, now: u64) {
    let Some(store) = &node.store else { return };
    if let Err(e) = store.record_refused(&target.peer_key, key, now) {
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

fn policy_peer(target: &Target) -> Peer<'_> {
    Peer {
        host: &target.policy_host,
        port: target.peer.port,
        ip: match &target.peer.host {
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

async fn connect<D: Driver>(addr: Option<SocketAddr>, node: &Node) -> Option<D::Conn> {
    D::connect(addr?, node.timeouts.connect).await.ok()
}

/// What every TLS attempt of one connection shares.
struct Attempt<'a> {
    decision: &'a Decision<'a>,
    /// SNI and the name PKIX and DANE-TA check.
    server_name: ServerName<'static>,
    target: &'a Target,
    node: &'a Node,
}

/// TLS to each address in turn while secure TLSA records do not match the key presented
/// (RFC 7672 §2.2: another address of the peer may hold the right key); any other result
/// ends the search. Never more than one attempt per address.
async fn try_addresses<D: Driver, S: Starter<D>>(
    addrs: &[SocketAddr],
    attempt: &Attempt<'_>,
    starter: &S,
) -> (TlsResult, Option<Established<D::Conn>>) {
    let mut tried = 0;
    loop {
        let addr = addrs.get(tried).copied();
        let (result, est) = try_tls::<D, S>(addr, attempt, starter).await;
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
        tracing::info!(target: "osgate::dane", peer = %attempt.target.peer, addr = ?addr, "TLSA records do not match this address's key; trying the next address");
    }
}

/// One TLS attempt: connect, handshake under a deadline, authenticate the key.
async fn try_tls<D: Driver, S: Starter<D>>(
    addr: Option<SocketAddr>,
    attempt: &Attempt<'_>,
    starter: &S,
) -> (TlsResult, Option<Established<D::Conn>>) {
    let (decision, node) = (attempt.decision, attempt.node);
    let started = Instant::now();
    let Some(conn) = connect::<D>(addr, node).await else {
        return (TlsResult::Unreachable, None);
    };
    let conn = Rc::new(conn);
    if let Err(result) = starter.before_tls(&conn).await {
        return (result, None);
    }
    let fleet_node = !decision.evidence().fleet.is_empty();
    let config = node.client_tls.for_peer(
        decision.floor,
        decision.plan.requires_authentication(),
        fleet_node,
    );
    let session = match ClientConnection::new(config, attempt.server_name.clone()) {
        Ok(client) => Session::new(client.into()),
        Err(_) => return (TlsResult::HandshakeFailed, None),
    };
    let dog = Watchdog::start(Instant::now() + node.timeouts.handshake);
    dog.guard(&conn);
    let handshake = session.handshake(&*conn, true).await;
    let fired = dog.fired();
    drop(dog);
    if let Err(e) = &handshake {
        tracing::debug!(target: "osgate::tls", peer = %attempt.target.peer, error = %e, "TLS handshake failed");
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
        attempt,
        matched: Cell::new(None),
    };
    let evidence = decision.evidence();
    let auth = authenticate(decision.methods, &evidence, presented, &checks);
    let tlsa_match = match auth {
        Ok(Method::Dane) => checks.matched.take(),
        _ => None,
    };
    count_tofu(&evidence, auth);
    let taken = auth.is_ok() || !decision.plan.requires_authentication();
    if taken && let Err(result) = starter.after_tls(&conn, &session).await {
        conn.shutdown(std::net::Shutdown::Both);
        return (result, None);
    }
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
    attempt: &'a Attempt<'a>,
    /// The TLSA record `dane()` matched, for the outcome record.
    matched: Cell<Option<String>>,
}

impl ChainChecks for Checks<'_> {
    fn dane(&self) -> Result<(), Reason> {
        let conn = self.session.conn();
        let chain = conn.peer_certificates().unwrap_or_default();
        let (record, checked) = match match_chain(self.attempt.decision.tlsa, chain) {
            Match::EndEntity(record) => (record, Ok(())),
            Match::TrustAnchor(record, anchor) => (record, self.dane_ta(chain, anchor)),
            Match::NoMatch => return Err(Reason::TlsaInvalid),
        };
        self.matched.set(Some(record.to_string()));
        checked
    }

    fn pkix(&self) -> Result<(), Reason> {
        let conn = self.session.conn();
        let chain = conn.peer_certificates().unwrap_or_default();
        let attempt = self.attempt;
        (attempt.node.chain).check(chain, &attempt.server_name, UnixTime::now())
    }
}

impl Checks<'_> {
    /// DANE-TA checks the name: the TLSA base domain, or the original next-hop name before
    /// CNAME expansion (RFC 7672 §3.2.2: "MUST" the former, "SHOULD" also the latter).
    fn dane_ta(&self, chain: &[CertificateDer<'_>], anchor: usize) -> Result<(), Reason> {
        let attempt = self.attempt;
        let crypto = &attempt.node.crypto;
        let now = UnixTime::now();
        let base = check_dane_ta(crypto, chain, anchor, &attempt.server_name, now);
        let original = &attempt.target.server_name;
        match base {
            Err(Reason::CertificateHostMismatch) if *original != attempt.server_name => {
                check_dane_ta(crypto, chain, anchor, original, now)
            }
            other => other,
        }
    }
}
