//! Starting a node: choose the driver, build TLS state, bind listeners, start the workers,
//! then hand over to the supervisor. The builders here serve the start and every reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use metrics::gauge;
use osgate_core::crypto::{ChainVerifier, CryptoError, CryptoPolicy, SessionCache, TlsFloor};
use osgate_core::fleet::Fleet;
use rustls::RootCertStore;

use crate::config::{Config, IoChoice};
use crate::ctx::{ClientConfigs, InboundListener, Node, OutboundListener, Target};
use crate::health::Health;
use crate::listener::BindError;
use crate::metrics as m;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::worker::{self, DriverKind, ListenerKey, Service};

/// Why a node could not start, or a reload was refused (config problems are caught
/// earlier, by [`Config::load`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("io = \"uring\" was configured, but io_uring is unavailable here: {0}")]
    UringUnavailable(std::io::Error),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("TLS setup failed for {what}: {source}")]
    Tls { what: String, source: CryptoError },
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error("worker: {0}")]
    Worker(#[from] std::io::Error),
    #[error("{0}")]
    Sts(String),
}

/// What every node state shares, across reloads.
#[derive(Debug)]
pub(crate) struct Carried {
    pub fleet: Arc<ArcSwap<Fleet>>,
    pub caps: Arc<osgate_core::caps::Caps>,
    pub tlsrpt: Arc<crate::tlsrpt::Recorder>,
}

/// Runs the node until it is stopped (SIGTERM or SIGINT: drained).
pub fn run(path: PathBuf, config: Config) -> Result<(), StartError> {
    crate::sys::raise_nofile();
    let supervisor_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // First, so that a SIGHUP from now on reloads instead of killing the process.
    let signals = supervisor_runtime.block_on(async { crate::supervisor::Signals::new() })?;
    let driver = choose_driver(config.node.io)?;
    let health = Arc::new(Health::default());
    let ready = health.clone();
    crate::metrics::install(config.node.metrics_listen, move || ready.ready())
        .map_err(StartError::Metrics)?;
    gauge!(m::IO_DRIVER_INFO, "driver" => driver.name()).set(1.0);
    let workers = match config.node.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    *health.state.lock().unwrap_or_else(|e| e.into_inner()) = prepare_state(&config).err();
    let carried = Carried {
        fleet: Arc::new(ArcSwap::from_pointee(Fleet::new(
            0,
            config.policy.clone(),
            [],
            &[],
        ))),
        caps: osgate_core::caps::Caps::new(config.node.caps),
        tlsrpt: crate::tlsrpt::Recorder::open(
            crate::tlsrpt::Recorder::folder(&config.node.state_dir),
            crate::tlsrpt::KEEP_DAYS,
            crate::tlsrpt::unix_now(),
        ),
    };
    carried.tlsrpt.start_flusher(crate::tlsrpt::FLUSH_EVERY)?;
    let tlsrpt = carried.tlsrpt.clone();
    let node = build_node(&config, &carried, None)?;
    let listeners = services(&config, &node)?;
    let bound = crate::supervisor::bind_all(listeners, workers)?;
    let (failed, failures) = tokio::sync::mpsc::unbounded_channel();
    let pool = worker::start(driver, workers, &node, failed)?;
    let controlplane = start_controlplane(&config, &node)?;
    let supervisor = Supervisor::new(crate::supervisor::Parts {
        path,
        config,
        node,
        carried,
        workers: pool,
        controlplane,
        health,
        signals,
    });
    let result = supervisor_runtime.block_on(supervisor.run(bound, failures));
    // The counts of the last seconds, before the process ends.
    tlsrpt.flush(crate::tlsrpt::unix_now());
    result
}

/// Starts the control-plane client, if configured.
pub(crate) fn start_controlplane(
    config: &Config,
    node: &Arc<Node>,
) -> Result<Option<crate::controlplane::Running>, StartError> {
    let Some(cp) = config.controlplane.clone() else {
        return Ok(None);
    };
    let running =
        crate::controlplane::start(cp, node.clone(), config.policy.clone(), peers(config))?;
    Ok(Some(running))
}

/// The peers this node serves, as it tells the control plane.
pub(crate) fn peers(config: &Config) -> Vec<String> {
    config
        .outbound
        .iter()
        .map(|o| o.peer.to_string().to_ascii_lowercase())
        .collect()
}

/// `auto` prefers io_uring and says in one line which driver runs, and why.
fn choose_driver(io: IoChoice) -> Result<DriverKind, StartError> {
    let probe = crate::io::uring::available();
    match (io, probe) {
        (IoChoice::Epoll, _) => Ok(DriverKind::Epoll),
        (IoChoice::Uring, Ok(())) => Ok(DriverKind::Uring),
        (IoChoice::Uring, Err(e)) => Err(StartError::UringUnavailable(e)),
        (IoChoice::Auto, Ok(())) => {
            tracing::info!(target: "osgate::node", driver = "uring", "io = auto: io_uring is available; using it");
            Ok(DriverKind::Uring)
        }
        (IoChoice::Auto, Err(e)) => {
            tracing::info!(target: "osgate::node", driver = "epoll", error = %e, "io = auto: io_uring is unavailable; using epoll");
            Ok(DriverKind::Epoll)
        }
    }
}

/// The node state for `config`. A reload passes the state it replaces: an unchanged
/// `[tofu]` keeps its store, an unchanged `[dns]` its validation verdict.
pub(crate) fn build_node(
    config: &Config,
    carried: &Carried,
    previous: Option<(&Config, &Node)>,
) -> Result<Arc<Node>, StartError> {
    let crypto = CryptoPolicy::new(&config.node.tls_groups, TlsFloor::Tls12)
        .map_err(|source| StartError::Tls {
            what: "node.tls_groups".into(),
            source,
        })?
        .with_resumption(config.node.tls_resumption);
    let chain = ChainVerifier::new(roots(config), &crypto);
    let store = match previous {
        Some((old, node)) if old.tofu == config.tofu => node.store.clone(),
        _ => open_store(config),
    };
    let dnssec_validating = match previous {
        Some((old, node)) if old.dns == config.dns => node.dnssec_validating.clone(),
        _ => validation(config)?,
    };
    Ok(Arc::new(Node {
        crypto: crypto.clone(),
        timeouts: config.node.timeouts,
        client_tls: client_configs(config)?,
        sts: sts(config, &crypto, &chain, previous)?,
        chain,
        fleet: carried.fleet.clone(),
        store,
        tofu_enforce: config.tofu.as_ref().is_some_and(|t| t.enforce),
        dns: config.dns.clone(),
        dnssec_validating,
        caps: carried.caps.clone(),
        tlsrpt: carried.tlsrpt.clone(),
    }))
}

/// The PKIX roots: `[node] ca_bundle`, or the system's.
pub(crate) fn roots(config: &Config) -> RootCertStore {
    match &config.node.ca_bundle {
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            roots
        }
        None => ChainVerifier::system_roots(),
    }
}

/// MTA-STS; its policy cache carries over a reload that keeps the roots and the state folder.
fn sts(
    config: &Config,
    crypto: &CryptoPolicy,
    chain: &ChainVerifier,
    previous: Option<(&Config, &Node)>,
) -> Result<Arc<crate::sts::Sts>, StartError> {
    match previous {
        Some((old, node))
            if old.node.ca_bundle == config.node.ca_bundle
                && old.node.tls_groups == config.node.tls_groups
                && old.node.state_dir == config.node.state_dir
                && old.smtp.mta_sts_port == config.smtp.mta_sts_port =>
        {
            Ok(node.sts.clone())
        }
        _ => crate::sts::Sts::new(crypto, chain.clone(), &config.node.state_dir)
            .map(|sts| Arc::new(sts.with_port(config.smtp.mta_sts_port)))
            .map_err(StartError::Sts),
    }
}

/// Every listener of `config`, keyed across reloads, with the label its logs use.
pub(crate) fn services(
    config: &Config,
    node: &Node,
) -> Result<Vec<(ListenerKey, Service, String)>, StartError> {
    let mut out = Vec::new();
    let mut ordinals = std::collections::HashMap::new();
    let mut key = |outbound: bool, listen: std::net::SocketAddr| {
        let ordinal = ordinals.entry((outbound, listen)).or_insert(0usize);
        *ordinal += 1;
        ListenerKey {
            outbound,
            listen,
            ordinal: *ordinal,
        }
    };
    for (i, outbound) in config.outbound.iter().enumerate() {
        let service = Service::Outbound(Arc::new(outbound_listener(outbound)?));
        out.push((
            key(true, outbound.listen),
            service,
            format!("outbound[{i}]"),
        ));
    }
    for (i, inbound) in config.inbound.iter().enumerate() {
        let identity = inbound.identity.clone();
        let server_tls = node
            .crypto
            .server(identity.chain, identity.key)
            .map_err(|source| StartError::Tls {
                what: format!("inbound[{i}] ({})", inbound.listen),
                source,
            })?;
        let service = Service::Inbound(Arc::new(InboundListener {
            listen: inbound.listen.to_string(),
            backend: inbound.backend.clone(),
            server_tls,
            cleartext_allowed: inbound.cleartext_allowed,
            clients: inbound.clients.clone(),
            smtp: inbound.smtp,
        }));
        out.push((key(false, inbound.listen), service, format!("inbound[{i}]")));
    }
    Ok(out)
}

fn outbound_listener(outbound: &crate::config::Outbound) -> Result<OutboundListener, StartError> {
    let target = Target::new(outbound.peer.clone()).ok_or_else(|| StartError::Tls {
        what: format!("peer name {}", outbound.peer),
        source: CryptoError::Rustls(rustls::Error::General("invalid DNS name".into())),
    })?;
    Ok(OutboundListener {
        listen: outbound.listen.to_string(),
        target,
        level: outbound.level,
        allow_cleartext_fallback: outbound.allow_cleartext_fallback,
        smtp: outbound.smtp.clone(),
    })
}

fn client_configs(config: &Config) -> Result<ClientConfigs, StartError> {
    let sessions = SessionCache::new(256);
    let make = |floor, sessions: Option<Arc<SessionCache>>| {
        CryptoPolicy::new(&config.node.tls_groups, floor)
            .and_then(|p| {
                p.with_resumption(config.node.tls_resumption)
                    .unauthenticated_client_with(sessions)
            })
            .map_err(|source| StartError::Tls {
                what: "outbound client".into(),
                source,
            })
    };
    let required = || Some(sessions.clone());
    Ok(ClientConfigs {
        by_class: [
            [
                make(TlsFloor::Tls12, None)?,
                make(TlsFloor::Tls12, required())?,
            ],
            [
                make(TlsFloor::Tls13, None)?,
                make(TlsFloor::Tls13, required())?,
            ],
        ],
        authenticated_sessions: sessions.clone(),
        fleet: fleet_clients(config)?,
    })
}

/// The configs for connections to fleet nodes: they present the node key the control plane
/// registered (`[controlplane] certificate`), so the node at the other end records this one
/// as `authenticated`/`fleet`. None without a control plane.
fn fleet_clients(config: &Config) -> Result<Option<[Arc<rustls::ClientConfig>; 2]>, StartError> {
    let Some(cp) = &config.controlplane else {
        return Ok(None);
    };
    let sessions = SessionCache::new(256);
    let make = |floor| {
        CryptoPolicy::new(&config.node.tls_groups, floor)
            .and_then(|p| {
                p.with_resumption(config.node.tls_resumption).fleet_client(
                    sessions.clone(),
                    cp.chain.clone(),
                    cp.key.clone_key(),
                )
            })
            .map_err(|source| StartError::Tls {
                what: "controlplane.certificate (presented to fleet nodes)".into(),
                source,
            })
    };
    Ok(Some([make(TlsFloor::Tls12)?, make(TlsFloor::Tls13)?]))
}

/// Creates the state folder if needed and checks that it can be written (readiness says
/// why when it cannot), then records a first start.
pub(crate) fn prepare_state(config: &Config) -> Result<(), String> {
    let dir = &config.node.state_dir;
    // A probe, not data: no fsync (the store and the last-known-good sync their own writes).
    let probe = dir.join(".write-test");
    let usable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok\n"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("the state folder {} cannot be written: {e}", dir.display()));
    match &usable {
        Ok(()) => first_start(config),
        Err(e) => {
            tracing::error!(target: "osgate::node", error = e, "state folder unusable: pins learned now are lost, and the pin store may be unreadable");
        }
    }
    usable
}

/// The first-start marker in the state folder.
const FIRST_START_MARKER: &str = ".initialized";

/// A first start creates the default pin store and the marker. With the marker, a missing
/// store is a lost store, not a first start, and stays an error — never "verification off"
/// (CONFORMANCE D.26).
fn first_start(config: &Config) {
    let marker = config.node.state_dir.join(FIRST_START_MARKER);
    if marker.exists() || legacy_marker(config).is_some_and(|m| m.exists()) {
        return;
    }
    // The default store is made even while `[tofu]` is off: turned on later (by a reload or
    // a restart), TOFU finds an empty store, not a "lost" one.
    let store = config.node.state_dir.join(crate::config::DEFAULT_PIN_STORE);
    let created = match store.exists() {
        true => Ok(()),
        false => crate::store::Contents::default()
            .save(&store)
            .map_err(|e| e.to_string()),
    };
    let note = format!("first started by osgate {}\n", env!("CARGO_PKG_VERSION"));
    let marked = created.and_then(|()| {
        crate::durable::write_atomic(&marker, note.as_bytes()).map_err(|e| e.to_string())
    });
    match marked {
        Ok(()) => {
            tracing::info!(target: "osgate::node", state_dir = %config.node.state_dir.display(), "first start: created the pin store (TOFU and the ratchet are on by default)")
        }
        Err(e) => {
            tracing::error!(target: "osgate::node", state_dir = %config.node.state_dir.display(), error = e, "cannot create the pin store or the first-start marker")
        }
    }
}

/// The marker of osgate 0.1 before `state_dir`: `.<folder>.created` beside the folder.
fn legacy_marker(config: &Config) -> Option<PathBuf> {
    let dir: &Path = &config.node.state_dir;
    let name = dir.file_name()?.to_string_lossy();
    Some(dir.with_file_name(format!(".{name}.created")))
}

/// Opens the capability store; an unusable one is loud, and makes TOFU refuse (never
/// "verification off").
fn open_store(config: &Config) -> Option<Arc<Store>> {
    let tofu = config.tofu.as_ref()?;
    let (store, error) = Store::open(tofu.store.clone(), tofu.ratchet.as_secs());
    match error {
        Some(e) => {
            tracing::error!(target: "osgate::node", error = %e, "capability store unavailable: TOFU-checked peers will be refused until it is repaired");
            gauge!(m::PIN_STORE_AVAILABLE).set(0.0);
        }
        None => gauge!(m::PIN_STORE_AVAILABLE).set(1.0),
    }
    Some(Arc::new(store))
}

/// The DNSSEC verdict for `config`'s `[dns]`: an explicit one is tested now (C.22); the
/// implicit default in the background (see [`watch_validation`]).
fn validation(config: &Config) -> Result<Arc<AtomicBool>, StartError> {
    let verdict = Arc::new(AtomicBool::new(dnssec_self_test(config)?));
    watch_validation(config, &verdict)?;
    Ok(verdict)
}

/// The start-up self-test (CONFORMANCE C.22): the trust anchor's own zone must validate as
/// secure, or DANE-requiring peers are refused. The gauge says which.
fn dnssec_self_test(config: &Config) -> Result<bool, StartError> {
    let Some(dns) = config.dns.as_ref().filter(|d| d.explicit) else {
        gauge!(m::DNSSEC_VALIDATION_AVAILABLE).set(0.0);
        return Ok(false);
    };
    let validating =
        self_test_once(dns).map_err(|e| StartError::Worker(std::io::Error::other(e)))?;
    gauge!(m::DNSSEC_VALIDATION_AVAILABLE).set(if validating { 1.0 } else { 0.0 });
    if validating {
        tracing::info!(target: "osgate::dns", zone = %dns.anchor_zone, "DNSSEC validation works: DANE is on");
    } else {
        tracing::error!(target: "osgate::dns", zone = %dns.anchor_zone, "DNSSEC validation is unavailable: DANE-requiring peers will be refused");
    }
    Ok(validating)
}

/// One self-test, on a thread of its own: a reload calls this from the supervisor's runtime,
/// which must not be blocked on from inside.
fn self_test_once(dns: &crate::config::DnsConfig) -> Result<bool, String> {
    std::thread::scope(|scope| {
        let test = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let resolver = crate::dns::Dns::new(dns)?;
                Ok(resolver.self_test(&dns.anchor_zone).await)
            })
        });
        test.join()
            .unwrap_or_else(|_| Err("the DNSSEC self-test panicked".into()))
    })
}

/// DANE by default (no `[dns]`): the system's resolvers must validate the root zone with the
/// built-in anchors. Until they do, DANE is off and says so; tried again every minute, for
/// as long as a node state uses this verdict.
fn watch_validation(config: &Config, verdict: &Arc<AtomicBool>) -> std::io::Result<()> {
    let Some(dns) = config.dns.clone().filter(|d| !d.explicit) else {
        return Ok(());
    };
    let verdict: Weak<AtomicBool> = Arc::downgrade(verdict);
    std::thread::Builder::new()
        .name("osgate-dnssec".into())
        .spawn(move || {
            let mut said = false;
            while let Some(verdict) = verdict.upgrade() {
                let validating = self_test_once(&dns).unwrap_or(false);
                verdict.store(validating, std::sync::atomic::Ordering::Relaxed);
                gauge!(m::DNSSEC_VALIDATION_AVAILABLE).set(if validating { 1.0 } else { 0.0 });
                if validating {
                    tracing::info!(target: "osgate::dns", "DNSSEC validation works with the system resolvers: DANE is on");
                    return;
                }
                if !said {
                    tracing::info!(target: "osgate::dns", "DNSSEC validation is unavailable with the system resolvers: DANE is off (names resolve as usual) until it works; retrying every minute");
                    said = true;
                }
                drop(verdict);
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        })
        .map(drop)
}
