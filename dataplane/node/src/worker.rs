//! Worker threads: one event loop per core, each with its own listening sockets.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::task::JoinSet;

use crate::ctx::{InboundListener, Node, OutboundListener};
use crate::io::Driver;
use crate::io::epoll::Epoll;
use crate::io::uring::Uring;
use crate::metrics as m;
use crate::{inbound, outbound};
use osgate_core::caps::{Caps, Refusal};

/// The sockets and settings one worker serves.
#[derive(Debug)]
pub(crate) struct WorkerPlan {
    pub node: Arc<Node>,
    pub outbound: Vec<(std::net::TcpListener, Arc<OutboundListener>)>,
    pub inbound: Vec<(std::net::TcpListener, Arc<InboundListener>)>,
}

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

/// Runs `plans` on one thread each; returns when a worker fails to start.
pub(crate) fn run(kind: DriverKind, plans: Vec<WorkerPlan>) -> io::Result<()> {
    let mut threads = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let thread = std::thread::Builder::new()
            .name(format!("osgate-{}-{index}", kind.name()))
            .spawn(move || match kind {
                DriverKind::Uring => run_uring(plan),
                DriverKind::Epoll => run_epoll(plan),
            })?;
        threads.push(thread);
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => return Err(io::Error::other("a worker thread panicked")),
        }
    }
    Ok(())
}

fn run_uring(plan: WorkerPlan) -> io::Result<()> {
    let mut ring = tokio_uring::uring_builder();
    // Completions are reaped by this thread alone, when it next enters the kernel: no
    // inter-processor interrupt per completion.
    ring.setup_coop_taskrun().setup_single_issuer();
    tokio_uring::builder()
        .entries(1024)
        .uring_builder(&ring)
        .start(serve::<Uring>(plan))
}

fn run_epoll(plan: WorkerPlan) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, serve::<Epoll>(plan))
}

async fn serve<D: Driver>(plan: WorkerPlan) -> io::Result<()> {
    plan.node
        .crypto
        .warm_up_thread()
        .map_err(io::Error::other)?;
    let dns = worker_dns(&plan.node).await?.map(std::rc::Rc::new);
    let mut loops = JoinSet::new();
    for (socket, listener) in plan.outbound {
        let socket = D::listener(socket)?;
        let node = plan.node.clone();
        let dns = dns.clone();
        let caps = plan.node.caps.clone();
        loops.spawn_local(accept_loop::<D, _>(socket, caps, move |conn, _peer| {
            outbound::serve::<D>(conn, listener.clone(), node.clone(), dns.clone())
        }));
    }
    for (socket, listener) in plan.inbound {
        let socket = D::listener(socket)?;
        let node = plan.node.clone();
        let caps = plan.node.caps.clone();
        loops.spawn_local(accept_loop::<D, _>(socket, caps, move |conn, peer| {
            inbound::serve::<D>(conn, peer.to_string(), listener.clone(), node.clone())
        }));
    }
    while loops.join_next().await.is_some() {}
    Ok(())
}

/// Builds this worker's resolver (hickory's connections stay on this worker's runtime).
async fn worker_dns(node: &crate::ctx::Node) -> io::Result<Option<crate::ctx::WorkerDns>> {
    let Some(config) = &node.dns else {
        return Ok(None);
    };
    match crate::dns::Dns::new(config) {
        Ok(dns) => Ok(Some(crate::ctx::WorkerDns { dns })),
        // DANE by default needs the system's resolvers; without them it is simply off.
        Err(e) if !config.explicit => {
            tracing::debug!(target: "osgate::dns", error = e, "no resolver for DANE by default");
            Ok(None)
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Accepts forever. On errors such as descriptor exhaustion it backs off (without spinning)
/// and logs at most once per backoff step. A connection over a cap is closed at once.
async fn accept_loop<D, F>(
    socket: D::Listener,
    caps: Arc<Caps>,
    serve: impl Fn(D::Conn, std::net::SocketAddr) -> F,
) where
    D: Driver,
    F: Future<Output = ()> + 'static,
{
    let mut backoff = Duration::ZERO;
    loop {
        match D::accept(&socket).await {
            Ok((conn, peer)) => {
                backoff = Duration::ZERO;
                let slot = match caps.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        refuse(conn, refusal);
                        continue;
                    }
                };
                let connection = serve(conn, peer);
                tokio::task::spawn_local(async move {
                    connection.await;
                    drop(slot);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                counter!(m::ACCEPT_ERRORS_TOTAL, "kind" => accept_error_kind(&e)).increment(1);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
            }
        }
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
