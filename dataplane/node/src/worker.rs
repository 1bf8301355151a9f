//! Worker threads: one event loop per core, each with its own listening sockets, steered by
//! the supervisor's commands (listen, update, close, drain, cut).
//!
//! A connection takes the listener's settings and the node state current at accept and keeps
//! them to its end, so a reload changes new connections only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::sync::mpsc;

use crate::ctx::{InboundListener, Node, OutboundListener, WorkerDns};
use crate::io::Driver;
use crate::io::epoll::Epoll;
use crate::io::uring::Uring;
use crate::metrics as m;
use crate::{inbound, outbound};
use osgate_core::caps::Refusal;

/// A listener's identity across reloads: direction, address as configured, and its ordinal
/// among listeners configured with that address (so `:0` listeners keep their sockets).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ListenerKey {
    pub outbound: bool,
    pub listen: std::net::SocketAddr,
    pub ordinal: usize,
}

/// What a listener serves.
#[derive(Clone, Debug)]
pub(crate) enum Service {
    Outbound(Arc<OutboundListener>),
    Inbound(Arc<InboundListener>),
}

/// The supervisor's orders to a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Accept on a new socket.
    Listen {
        key: ListenerKey,
        socket: std::net::TcpListener,
        service: Service,
        node: Arc<Node>,
    },
    /// New settings for an existing socket's next connections.
    Update {
        key: ListenerKey,
        service: Service,
        node: Arc<Node>,
    },
    /// Stop accepting on a socket and close it; its connections go on. Answered once the
    /// socket no longer listens.
    Close(ListenerKey, Done),
    /// Close every listening socket (the start of a drain); answered likewise.
    Drain(Done),
    /// Cut every connection still open (the end of a drain): their records say `drained`.
    Cut,
}

/// A worker's answer that it did what it was told.
pub(crate) type Done = std::sync::mpsc::Sender<()>;

/// Which driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverKind {
    Uring,
    Epoll,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => Uring::NAME,
            Self::Epoll => Epoll::NAME,
        }
    }
}

/// A running worker: its command channel.
#[derive(Debug)]
pub(crate) struct Worker {
    pub commands: mpsc::UnboundedSender<Command>,
}

/// Starts `count` workers and waits until each is ready (or says why it is not). A worker
/// that fails later reports on `failed`.
pub(crate) fn start(
    kind: DriverKind,
    count: usize,
    node: &Arc<Node>,
    failed: mpsc::UnboundedSender<io::Error>,
) -> io::Result<Vec<Worker>> {
    let (init, inits) = std::sync::mpsc::channel();
    let workers = (0..count)
        .map(|index| {
            let (commands, orders) = mpsc::unbounded_channel();
            let node = node.clone();
            let failed = failed.clone();
            let init = Init {
                report: init.clone(),
                done: Cell::new(false),
            };
            std::thread::Builder::new()
                .name(format!("osgate-{}-{index}", kind.name()))
                .spawn(move || {
                    let result = match kind {
                        DriverKind::Uring => run_uring(node, orders, &init),
                        DriverKind::Epoll => run_epoll(node, orders, &init),
                    };
                    if let Err(e) = result {
                        match init.done.get() {
                            true => drop(failed.send(e)),
                            false => drop(init.report.send(Err(e))),
                        }
                    }
                })?;
            Ok(Worker { commands })
        })
        .collect::<io::Result<Vec<_>>>()?;
    for _ in 0..count {
        inits
            .recv()
            .map_err(|_| io::Error::other("a worker thread ended before it started"))??;
    }
    Ok(workers)
}

/// A worker's start, reported once.
struct Init {
    report: std::sync::mpsc::Sender<io::Result<()>>,
    done: Cell<bool>,
}

impl Init {
    fn ready(&self) {
        self.done.set(true);
        let _ = self.report.send(Ok(()));
    }
}

type Orders = mpsc::UnboundedReceiver<Command>;

fn run_uring(node: Arc<Node>, orders: Orders, init: &Init) -> io::Result<()> {
    let mut ring = tokio_uring::uring_builder();
    // Completions are reaped by this thread alone, when it next enters the kernel: no
    // inter-processor interrupt per completion.
    ring.setup_coop_taskrun().setup_single_issuer();
    tokio_uring::builder()
        .entries(1024)
        .uring_builder(&ring)
        .start(serve::<Uring>(node, orders, init))
}

fn run_epoll(node: Arc<Node>, orders: Orders, init: &Init) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, serve::<Epoll>(node, orders, init))
}

/// What a listener's next connection gets.
struct Current {
    service: Service,
    node: Arc<Node>,
    dns: Option<Rc<WorkerDns>>,
}

/// A listening socket of this worker.
struct Listening {
    current: Rc<RefCell<Current>>,
    fd: RawFd,
    stopped: Rc<Cell<bool>>,
}

impl Listening {
    /// Stops its accept loop: a shut-down listening socket completes the pending accept
    /// (never drop an in-flight io_uring accept), and the loop then closes the socket.
    fn stop(&self) {
        self.stopped.set(true);
        let _ = crate::sys::sock_ref(self.fd, |s| s.shutdown(std::net::Shutdown::Read));
    }
}

async fn serve<D: Driver>(node: Arc<Node>, mut orders: Orders, init: &Init) -> io::Result<()> {
    node.crypto.warm_up_thread().map_err(io::Error::other)?;
    let mut resolvers = Resolvers::default();
    resolvers.get(&node).await?;
    init.ready();
    let mut listening: HashMap<ListenerKey, Listening> = HashMap::new();
    while let Some(command) = orders.recv().await {
        match command {
            Command::Listen {
                key,
                socket,
                service,
                node,
            } => {
                let Some(dns) = resolvers.reloaded(&node).await else {
                    continue;
                };
                let fd = socket.as_raw_fd();
                let current = Rc::new(RefCell::new(Current { service, node, dns }));
                let stopped = Rc::new(Cell::new(false));
                let socket = D::listener(socket)?;
                tokio::task::spawn_local(accept_loop::<D>(
                    socket,
                    current.clone(),
                    stopped.clone(),
                ));
                if let Some(old) = listening.insert(
                    key,
                    Listening {
                        current,
                        fd,
                        stopped,
                    },
                ) {
                    old.stop();
                }
            }
            Command::Update { key, service, node } => {
                let Some(dns) = resolvers.reloaded(&node).await else {
                    continue;
                };
                if let Some(l) = listening.get(&key) {
                    *l.current.borrow_mut() = Current { service, node, dns };
                }
            }
            Command::Close(key, done) => {
                if let Some(l) = listening.remove(&key) {
                    l.stop();
                }
                let _ = done.send(());
            }
            Command::Drain(done) => {
                for (_, l) in listening.drain() {
                    l.stop();
                }
                let _ = done.send(());
            }
            Command::Cut => crate::watchdog::cut_all(),
        }
    }
    Ok(())
}

/// This worker's resolvers, one per node state (hickory's connections stay on this
/// worker's runtime); a reload that keeps `[dns]` keeps the resolver and its cache.
#[derive(Default)]
struct Resolvers {
    last: Option<(Option<crate::config::DnsConfig>, Option<Rc<WorkerDns>>)>,
}

impl Resolvers {
    async fn get(&mut self, node: &Node) -> io::Result<Option<Rc<WorkerDns>>> {
        if let Some((config, dns)) = &self.last
            && *config == node.dns
        {
            return Ok(dns.clone());
        }
        let dns = worker_dns(node).await?.map(Rc::new);
        self.last = Some((node.dns.clone(), dns.clone()));
        Ok(dns)
    }

    /// [`Self::get`] after a start: a resolver that cannot be built (the supervisor built
    /// one before committing the reload, so this is rare) keeps the listener as it was —
    /// never a listener whose `[dns]` quietly lost its resolver.
    async fn reloaded(&mut self, node: &Node) -> Option<Option<Rc<WorkerDns>>> {
        match self.get(node).await {
            Ok(dns) => Some(dns),
            Err(e) => {
                tracing::error!(target: "osgate::dns", error = %e, "this worker cannot build the reloaded resolver; its listeners keep their previous settings");
                None
            }
        }
    }
}

/// Builds a resolver for `node`'s `[dns]`.
async fn worker_dns(node: &Node) -> io::Result<Option<WorkerDns>> {
    let Some(config) = &node.dns else {
        return Ok(None);
    };
    match crate::dns::Dns::new(config) {
        Ok(dns) => Ok(Some(WorkerDns { dns })),
        // DANE by default needs the system's resolvers; without them it is simply off.
        Err(e) if !config.explicit => {
            tracing::debug!(target: "osgate::dns", error = e, "no resolver for DANE by default");
            Ok(None)
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Accepts until stopped. On errors such as descriptor exhaustion it backs off (without
/// spinning) and logs at most once per backoff step. A connection over a cap is closed at once.
async fn accept_loop<D: Driver>(
    socket: D::Listener,
    current: Rc<RefCell<Current>>,
    stopped: Rc<Cell<bool>>,
) {
    let mut backoff = Duration::ZERO;
    let mut streak = FailureStreak::default();
    while !stopped.get() {
        match D::accept(&socket).await {
            Ok((conn, peer)) => {
                backoff = Duration::ZERO;
                streak.ended();
                let (service, node, dns) = {
                    let c = current.borrow();
                    (c.service.clone(), c.node.clone(), c.dns.clone())
                };
                let slot = match node.caps.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        refuse(conn, refusal);
                        continue;
                    }
                };
                tokio::task::spawn_local(async move {
                    match service {
                        Service::Outbound(listener) => {
                            outbound::serve::<D>(conn, listener, node, dns).await
                        }
                        Service::Inbound(listener) => {
                            inbound::serve::<D>(conn, peer.to_string(), listener, node).await
                        }
                    }
                    drop(slot);
                });
            }
            Err(_) if stopped.get() => break,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                counter!(m::ACCEPT_ERRORS_TOTAL, "kind" => accept_error_kind(&e)).increment(1);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                streak.failed(&e);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// How often a streak of accept failures is logged again, with its count.
const FAILURES_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Accept failures in a row (descriptor exhaustion lasts): the first is logged, then one
/// line per [`FAILURES_LOGGED_EVERY`] with the count, then the recovery.
#[derive(Default)]
struct FailureStreak {
    failures: u64,
    unlogged: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl FailureStreak {
    fn failed(&mut self, e: &io::Error) {
        self.failures += 1;
        let now = tokio::time::Instant::now();
        match self.logged_at {
            None => {
                tracing::warn!(error = %e, "accept failed; backing off");
                self.logged_at = Some(now);
            }
            Some(at) if now - at >= FAILURES_LOGGED_EVERY => {
                let since_last = self.unlogged + 1;
                tracing::warn!(error = %e, failures = self.failures, since_last, "accept still failing; backing off");
                (self.logged_at, self.unlogged) = (Some(now), 0);
            }
            Some(_) => self.unlogged += 1,
        }
    }

    fn ended(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accept works again");
        }
        *self = Self::default();
    }
}

/// Closes a connection over a cap (no outcome record: under a flood that would be one log
/// line per attempt; the counter says it).
fn refuse<C>(conn: C, refusal: Refusal) {
    counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => refusal.as_str()).increment(1);
    drop(conn);
}

fn accept_error_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => "descriptors",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "memory",
        _ => "other",
    }
}
