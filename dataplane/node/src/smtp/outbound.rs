//! An SMTP listener for a local MTA's plain relay: osgate carries each session to the
//! destination (a smarthost, or the mail domain's MX hosts) with the ladder's protection, and
//! gives the local client a 4xx when the destination must be encrypted and cannot be.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use osgate_core::dane::{Lookup, TlsaSet};
use osgate_core::ladder::TlsResult;
use osgate_core::outcome::{Direction, Level, Outcome, Protocol, Reason, SmtpFacts, Starttls};
use osgate_core::smtp::{Deferral, Dialogue, Failure, Join, Progress, Then};
use osgate_core::sts::{self, Requirement, StsLookup};
use osgate_core::tlsrpt::{self, PolicyRef, PolicyType, SessionResult, Verdict};
use rustls_pki_types::UnixTime;
use tokio::time::Instant;

use super::{Ended, Leg, Sides};
use crate::config::{Host, HostPort, OutboundSmtp};
use crate::ctx::{Active, Node, OutboundListener, Target, WorkerDns};
use crate::io::{Conn, Driver};
use crate::outbound::{Connected, Starter, establish, relay_to};
use crate::report;
use crate::tls::Session;
use crate::tlsrpt::Recorder;
use crate::watchdog::Watchdog;

/// MX hosts tried per session, like Postfix's `smtp_mx_address_limit`.
const MAX_MX_HOSTS: usize = 5;

pub(crate) async fn serve<D: Driver>(
    client: D::Conn,
    listener: Arc<OutboundListener>,
    node: Arc<Node>,
    dns: Option<Rc<WorkerDns>>,
) {
    let Some(smtp) = &listener.smtp else { return };
    let started = Instant::now();
    let _active = Active::new(Direction::Outbound);
    let client = Rc::new(client);
    let destination = listener.target.peer.to_string();
    let targets = match smtp.by_mx {
        true => mx_targets(&listener, &node, dns.as_deref()).await,
        false => Ok(vec![listener.target.clone()]),
    };
    let domain = listener.target.policy_host.as_str();
    let sts = match (smtp.mta_sts, dns.as_deref()) {
        (true, Some(dns)) => {
            let fleet = node.fleet.load_full();
            let shared = fleet.caches.sts.get(domain);
            let now = UnixTime::now().as_secs();
            node.sts.policy(&dns.dns, domain, now, shared).await
        }
        _ => StsLookup::NoPolicy,
    };
    let policy = Policy { domain, sts: &sts };
    report_discovery(policy, &node.tlsrpt);
    let mut refused = match targets {
        Ok(targets) => {
            let mut last = None;
            for target in targets {
                let starter = SmtpStarter::<D>::new(smtp, policy);
                let (outcome, connected) =
                    establish::<D, _>(&listener, &target, &node, dns.as_deref(), &starter).await;
                let mut outcome = starter.describe(outcome, &target, smtp.by_mx);
                starter.report(&outcome, &target, &node.tlsrpt);
                let Some(connected) = connected else {
                    tracing::info!(target: "osgate::smtp", peer = %target.peer, reason = outcome.reason.as_str(), "next hop refused for this session");
                    let deny = outcome.reason == Reason::PolicyDeny;
                    last = Some(outcome);
                    if deny {
                        break;
                    }
                    continue;
                };
                let greeting = starter.take_greeting();
                join::<D>(
                    &client,
                    connected,
                    greeting,
                    smtp,
                    &node,
                    started,
                    &mut outcome,
                )
                .await;
                outcome.duration = started.elapsed();
                report::emit(&outcome);
                return;
            }
            last.unwrap_or_else(|| unresolved(&listener, Reason::Unreachable))
        }
        Err(reason) => unresolved(&listener, reason),
    };
    defer(&client, smtp, &destination, refused.reason, &node).await;
    refused.duration = started.elapsed();
    report::emit(&refused);
}

/// The record of a session whose destination could not even be named (the MX lookup failed).
fn unresolved(listener: &OutboundListener, reason: Reason) -> Outcome {
    let peer = listener.target.peer.to_string();
    let mut outcome = Outcome::begin(Direction::Outbound, listener.listen.clone(), peer);
    outcome.protocol = Protocol::Smtp;
    outcome.reason = reason;
    outcome.smtp = Some(Box::default());
    outcome
}

/// The next hops of a mail domain: its MX hosts, DANE only where the MX RRset is secure.
async fn mx_targets(
    listener: &OutboundListener,
    node: &Node,
    dns: Option<&WorkerDns>,
) -> Result<Vec<Target>, Reason> {
    let (Some(dns), Host::Name(domain)) = (dns, &listener.target.peer.host) else {
        return Err(Reason::DnsLookupFailed);
    };
    let validating = node.dnssec_validating.load(Ordering::Relaxed);
    let mx = dns
        .dns
        .mx(domain, validating)
        .await
        .map_err(|failed| match failed {
            Lookup::Failed { bogus: true } => Reason::DnssecInvalid,
            _ => Reason::DnsLookupFailed,
        })?;
    let port = listener.target.peer.port;
    let targets: Vec<Target> = mx
        .hosts
        .into_iter()
        .take(MAX_MX_HOSTS)
        .filter_map(|host| {
            let mut target = Target::new(HostPort {
                host: Host::Name(host),
                port,
            })?;
            target.dane = mx.secure;
            target.policy_domain = Some(domain.clone());
            Some(target)
        })
        .collect();
    match targets.is_empty() {
        // RFC 7505's null MX, or only names that are not host names.
        true => Err(Reason::Unreachable),
        false => Ok(targets),
    }
}

/// The destination domain's MTA-STS policy (RFC 8461), for each of its MX hosts.
#[derive(Clone, Copy)]
struct Policy<'a> {
    domain: &'a str,
    sts: &'a StsLookup,
}

impl Policy<'_> {
    /// How outcome records name it.
    fn evidence(&self) -> Option<String> {
        match self.sts {
            StsLookup::NoPolicy => None,
            StsLookup::Policy(policy, _) => Some(sts::evidence(self.domain, policy)),
            StsLookup::Failed(reason) => Some(format!("{}:{}", self.domain, reason.as_str())),
        }
    }
}

/// The SMTP dialogue around each TLS attempt of one next hop.
struct SmtpStarter<'a, D: Driver> {
    smtp: &'a OutboundSmtp,
    policy: Policy<'a>,
    state: RefCell<Attempt<D::Conn>>,
}

struct Attempt<C> {
    dialogue: Option<Dialogue>,
    greeting: Vec<u8>,
    starttls: Starttls,
    injected: u64,
    /// A connection greeted without STARTTLS: the cleartext attempt, if the ladder makes one.
    spare: Option<Rc<C>>,
    /// What the dialogue broke on, more precise than the ladder's `unreachable`.
    failure: Option<Reason>,
    /// The usable TLSA records of the host (presentation format, sorted): DANE applied.
    tlsa: Vec<String>,
    /// (sending, receiving) addresses of the last connection made.
    addrs: Option<(IpAddr, IpAddr)>,
}

impl<'a, D: Driver> SmtpStarter<'a, D> {
    fn new(smtp: &'a OutboundSmtp, policy: Policy<'a>) -> Self {
        Self {
            smtp,
            policy,
            state: RefCell::new(Attempt {
                dialogue: None,
                greeting: Vec::new(),
                starttls: Starttls::Unknown,
                injected: 0,
                spare: None,
                failure: None,
                tlsa: Vec::new(),
                addrs: None,
            }),
        }
    }

    /// Counts this attempt for TLS-RPT (RFC 8460 §4.2): a policy-compliant TLS session, or a
    /// failure the report names; neither for ends that say nothing of TLS (unreachable, …).
    fn report(&self, outcome: &Outcome, target: &Target, tlsrpt: &Recorder) {
        let failure = match tlsrpt::verdict(outcome.reason, outcome.carried_tls()) {
            Verdict::NotCounted => return,
            Verdict::Success => None,
            Verdict::Failure(result) => Some(result),
        };
        let state = self.state.borrow();
        let policy = match (self.policy.sts, state.tlsa.is_empty()) {
            (_, false) => PolicyRef::tlsa(state.tlsa.iter().cloned()),
            (StsLookup::Policy(policy, _), true) if policy.mode != sts::Mode::None => {
                PolicyRef::sts(policy)
            }
            _ => PolicyRef::none_found(),
        };
        tlsrpt.record(SessionResult {
            policy_domain: self.policy.domain.to_owned(),
            policy,
            mx_host: Some(target.policy_host.clone()),
            receiving_ip: state.addrs.map(|(_, receiving)| receiving),
            sending_ip: state.addrs.map(|(sending, _)| sending),
            failure,
            at: UnixTime::now().as_secs(),
        });
    }

    fn take_greeting(&self) -> Vec<u8> {
        std::mem::take(&mut self.state.borrow_mut().greeting)
    }

    /// The ladder's record, in SMTP's words.
    fn describe(&self, mut outcome: Outcome, target: &Target, by_mx: bool) -> Outcome {
        let state = self.state.borrow();
        if let (Reason::Unreachable, Some(failure)) = (outcome.reason, state.failure) {
            outcome.reason = failure;
        }
        outcome.protocol = Protocol::Smtp;
        outcome.smtp = Some(Box::new(SmtpFacts {
            starttls: state.starttls,
            mx: by_mx.then(|| target.policy_host.clone()),
            sts: self.policy.evidence(),
            injected_bytes: state.injected,
        }));
        outcome
    }

    /// Runs the dialogue over `leg` until it needs TLS or is done.
    async fn converse(
        &self,
        dialogue: &mut Dialogue,
        mut progress: Progress,
        leg: Leg<'_, D::Conn>,
    ) -> Progress {
        let mut wait = self.smtp.timeouts.greeting;
        loop {
            let Progress::Read(bytes) = progress else {
                return progress;
            };
            if leg.write(&bytes).await.is_err() {
                return Progress::Failed(Failure::Protocol);
            }
            let read = leg.read(Instant::now() + wait).await;
            wait = self.smtp.timeouts.command;
            progress = match read {
                Ok(bytes) => dialogue.on_server(&bytes),
                Err(_) => return Progress::Failed(Failure::Protocol),
            };
        }
    }

    fn note(&self, dialogue: &Dialogue, failure: Option<Reason>) {
        let mut state = self.state.borrow_mut();
        state.starttls = dialogue.starttls();
        state.injected += dialogue.injected_bytes();
        if failure.is_some() {
            state.failure = failure;
        }
    }
}

impl<D: Driver> Starter<D> for SmtpStarter<'_, D> {
    fn requirement(&self, target: &Target, lookup: &Lookup) -> Requirement {
        let tlsa = match lookup {
            Lookup::Records {
                set: TlsaSet::Usable(records),
                ..
            } => records.iter().map(|r| r.presentation()).collect(),
            _ => Vec::new(),
        };
        let dane = !tlsa.is_empty();
        self.state.borrow_mut().tlsa = tlsa;
        let host = &target.policy_host;
        sts::requirement(self.policy.sts, self.policy.domain, host, dane)
    }

    async fn before_tls(&self, conn: &Rc<D::Conn>) -> Result<(), TlsResult> {
        self.state.borrow_mut().addrs = addresses(&**conn);
        let (mut dialogue, progress) = Dialogue::new(&self.smtp.helo, true);
        let progress = self
            .converse(&mut dialogue, progress, Leg::Plain(&**conn))
            .await;
        match progress {
            Progress::StartTls => {
                self.note(&dialogue, None);
                self.state.borrow_mut().dialogue = Some(dialogue);
                Ok(())
            }
            Progress::Ready(ready) => {
                self.note(&dialogue, None);
                let mut state = self.state.borrow_mut();
                state.greeting = ready.greeting;
                state.spare = Some(conn.clone());
                Err(TlsResult::NoStarttls)
            }
            Progress::Failed(failure) => {
                let reason = match failure {
                    Failure::Refused(_) => Reason::Unreachable,
                    Failure::Protocol => Reason::SmtpProtocolError,
                };
                self.note(&dialogue, Some(reason));
                Err(TlsResult::Unreachable)
            }
            Progress::Read(_) => Err(TlsResult::Unreachable),
        }
    }

    async fn after_tls(&self, conn: &D::Conn, session: &Session) -> Result<(), TlsResult> {
        let Some(mut dialogue) = self.state.borrow_mut().dialogue.take() else {
            return Err(TlsResult::HandshakeFailed);
        };
        let progress = dialogue.on_tls_established();
        let progress = self
            .converse(&mut dialogue, progress, Leg::Tls(conn, session))
            .await;
        match progress {
            Progress::Ready(ready) if ready.tls => {
                let mut state = self.state.borrow_mut();
                state.greeting = ready.greeting;
                state.starttls = ready.starttls;
                Ok(())
            }
            _ => {
                self.note(&dialogue, Some(Reason::SmtpProtocolError));
                Err(TlsResult::HandshakeFailed)
            }
        }
    }

    async fn cleartext(&self, addr: Option<SocketAddr>, node: &Node) -> Option<Rc<D::Conn>> {
        if let Some(spare) = self.state.borrow_mut().spare.take() {
            return Some(spare);
        }
        let conn = super::connect::<D>(addr?, node).await?;
        self.state.borrow_mut().addrs = addresses(&*conn);
        let (mut dialogue, progress) = Dialogue::new(&self.smtp.helo, false);
        let progress = self
            .converse(&mut dialogue, progress, Leg::Plain(&*conn))
            .await;
        self.note(&dialogue, None);
        match progress {
            Progress::Ready(ready) => {
                self.state.borrow_mut().greeting = ready.greeting;
                Some(conn)
            }
            _ => None,
        }
    }
}

/// (local, peer) addresses of a connected socket.
fn addresses<C: Conn>(conn: &C) -> Option<(IpAddr, IpAddr)> {
    crate::sys::sock_ref(conn.raw_fd(), |s| {
        let local = s.local_addr().ok()?.as_socket()?.ip();
        let peer = s.peer_addr().ok()?.as_socket()?.ip();
        Some((local, peer))
    })
}

/// A domain whose policy could not be had: RFC 8460 §4.3.2 reports the discovery failure.
fn report_discovery(policy: Policy<'_>, tlsrpt: &Recorder) {
    let StsLookup::Failed(reason) = policy.sts else {
        return;
    };
    tlsrpt.record(SessionResult {
        policy_domain: policy.domain.to_owned(),
        policy: PolicyRef {
            policy_type: PolicyType::Sts,
            strings: Vec::new(),
            mx_hosts: Vec::new(),
        },
        mx_host: None,
        receiving_ip: None,
        sending_ip: None,
        failure: tlsrpt::result_type(*reason),
        at: UnixTime::now().as_secs(),
    });
}

/// Hands the destination session to the local client, then relays.
async fn join<D: Driver>(
    client: &Rc<D::Conn>,
    (tls, clear): Connected<D::Conn>,
    greeting: Vec<u8>,
    smtp: &OutboundSmtp,
    node: &Node,
    started: Instant,
    outcome: &mut Outcome,
) {
    let (mut up, mut down) = (0u64, 0u64);
    let joined = {
        let server = match (&tls, &clear) {
            (Some(est), _) => Leg::Tls(&*est.conn, &est.session),
            (None, Some(conn)) => Leg::Plain(&**conn),
            (None, None) => return,
        };
        let sides = Sides {
            client: Leg::Plain(&**client),
            server,
        };
        let (mut join, mut step) = Join::new(greeting);
        loop {
            match sides.write(&step).await {
                Ok((to_client, to_server)) => {
                    down += to_client as u64;
                    up += to_server as u64;
                }
                Err(_) => break false,
            }
            let deadline = Instant::now() + smtp.timeouts.command;
            step = match step.then {
                Then::ReadClient => match sides.client.read(deadline).await {
                    Ok(bytes) => join.on_client(&bytes),
                    Err(_) => break false,
                },
                Then::ReadServer => match sides.server.read(deadline).await {
                    Ok(bytes) => join.on_server(&bytes),
                    Err(_) => break false,
                },
                Then::Relay => break true,
                Then::StartTls | Then::Close(_) => break false,
            };
        }
    };
    if !joined {
        outcome.reason = match outcome.reason {
            Reason::None => Reason::ClientClosed,
            reason => reason,
        };
        outcome.achieved = Level::Refused;
        return;
    }
    relay_to::<D>(client, tls, clear, node, started, outcome).await;
    outcome.bytes_up += up;
    outcome.bytes_down += down;
}

/// Answers the local client as a server that defers every message (CONFORMANCE E.32).
async fn defer<C: Conn>(
    client: &Rc<C>,
    smtp: &OutboundSmtp,
    destination: &str,
    why: Reason,
    node: &Node,
) {
    let dog = Watchdog::start(Instant::now() + smtp.timeouts.command * 2);
    dog.guard(client);
    let leg = Leg::Plain(&**client);
    let (mut deferral, mut step) = Deferral::new(&smtp.helo, destination, why);
    loop {
        if leg.write(&step.to_client).await.is_err() || step.then != Then::ReadClient {
            break;
        }
        let wait = smtp.timeouts.command.min(node.timeouts.idle);
        dog.set_deadline(Instant::now() + wait + Duration::from_secs(2));
        match leg.read(Instant::now() + wait).await {
            Ok(bytes) => step = deferral.on_client(&bytes),
            Err(Ended::Timeout | Ended::Closed) => break,
        }
    }
}
