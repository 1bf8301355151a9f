//! Starting a node: choose the driver, build TLS state, bind listeners, start the workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::gauge;
use osgate_core::crypto::{ChainVerifier, CryptoError, CryptoPolicy, SessionCache, TlsFloor};
use osgate_core::fleet::Fleet;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;

use crate::config::{Config, Host, IoChoice};
use crate::ctx::{ClientConfigs, InboundListener, Node, OutboundListener};
use crate::listener::{BindError, bind_reuseport};
use crate::metrics as m;
use crate::store::Store;
use crate::worker::{self, DriverKind, WorkerPlan};

/// Why a node could not start (config problems are caught earlier, by [`Config::load`]).
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
}

/// Runs the node until the process is stopped.
pub fn run(config: Config) -> Result<(), StartError> {
    crate::sys::raise_nofile();
    let driver = choose_driver(config.node.io)?;
    crate::metrics::install(config.node.metrics_listen).map_err(StartError::Metrics)?;
    gauge!(m::IO_DRIVER_INFO, "driver" => driver.name()).set(1.0);
    let workers = match config.node.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let plans = plan(&config, workers)?;
    if let (Some(cp), Some(first)) = (config.controlplane.clone(), plans.first()) {
        let peers = config
            .outbound
            .iter()
            .map(|o| o.peer.to_string().to_ascii_lowercase())
            .collect();
        crate::controlplane::start(cp, first.node.clone(), config.policy.clone(), peers)
            .map_err(StartError::Worker)?;
    }
    tracing::info!(target: "osgate::node", driver = driver.name(), workers, "osgate node started");
    worker::run(driver, plans).map_err(StartError::Worker)
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

fn plan(config: &Config, workers: usize) -> Result<Vec<WorkerPlan>, StartError> {
    let crypto = CryptoPolicy::new(&config.node.tls_groups, TlsFloor::Tls12)
        .map_err(|source| StartError::Tls {
            what: "node.tls_groups".into(),
            source,
        })?
        .with_resumption(config.node.tls_resumption);
    let roots = match &config.node.ca_bundle {
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            roots
        }
        None => ChainVerifier::system_roots(),
    };
    let node = Arc::new(Node {
        crypto: crypto.clone(),
        timeouts: config.node.timeouts,
        client_tls: client_configs(config)?,
        chain: ChainVerifier::new(roots, &crypto),
        fleet: ArcSwap::from_pointee(Fleet::new(0, config.policy.clone(), [], &[])),
        store: open_store(config),
        tofu_enforce: config.tofu.as_ref().is_some_and(|t| t.enforce),
        dns: config.dns.clone(),
        dnssec_validating: std::sync::atomic::AtomicBool::new(dnssec_self_test(config)?),
        caps: osgate_core::caps::Caps::new(config.node.caps),
    });
    watch_validation(node.clone()).map_err(StartError::Worker)?;
    let mut plans: Vec<WorkerPlan> = (0..workers)
        .map(|_| WorkerPlan {
            node: node.clone(),
            outbound: Vec::new(),
            inbound: Vec::new(),
        })
        .collect();
    for (i, outbound) in config.outbound.iter().enumerate() {
        let server_name = match &outbound.peer.host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(name) => {
                ServerName::try_from(name.clone()).map_err(|_| StartError::Tls {
                    what: format!("peer name {name}"),
                    source: CryptoError::Rustls(rustls::Error::General("invalid DNS name".into())),
                })?
            }
        };
        let shared = Arc::new(OutboundListener {
            listen: outbound.listen.to_string(),
            peer: outbound.peer.clone(),
            peer_key: outbound.peer.to_string().to_ascii_lowercase(),
            policy_host: match &outbound.peer.host {
                Host::Ip(ip) => ip.to_string(),
                Host::Name(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            },
            server_name,
            level: outbound.level,
            allow_cleartext_fallback: outbound.allow_cleartext_fallback,
        });
        let sockets = bind_reuseport(outbound.listen, workers)?;
        log_listening(format!("outbound[{i}]"), &sockets);
        for (plan, socket) in plans.iter_mut().zip(sockets) {
            plan.outbound.push((socket, shared.clone()));
        }
    }
    for (i, inbound) in config.inbound.iter().enumerate() {
        let identity = inbound.identity.clone();
        let server_tls = crypto
            .server(identity.chain, identity.key)
            .map_err(|source| StartError::Tls {
                what: format!("inbound listener {}", inbound.listen),
                source,
            })?;
        let shared = Arc::new(InboundListener {
            listen: inbound.listen.to_string(),
            backend: inbound.backend.clone(),
            server_tls,
            cleartext_allowed: inbound.cleartext_allowed,
        });
        let sockets = bind_reuseport(inbound.listen, workers)?;
        log_listening(format!("inbound[{i}]"), &sockets);
        for (plan, socket) in plans.iter_mut().zip(sockets) {
            plan.inbound.push((socket, shared.clone()));
        }
    }
    Ok(plans)
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
    })
}

/// Opens the capability store; an unusable one is loud, and makes TOFU refuse (never
/// "verification off").
fn open_store(config: &Config) -> Option<Store> {
    let tofu = config.tofu.as_ref()?;
    if tofu.default_store {
        create_on_first_start(&tofu.store);
    }
    let (store, error) = Store::open(tofu.store.clone(), tofu.ratchet.as_secs());
    match error {
        Some(e) => {
            tracing::error!(target: "osgate::node", error = %e, "capability store unavailable: TOFU-checked peers will be refused until it is repaired");
            gauge!(m::PIN_STORE_AVAILABLE).set(0.0);
        }
        None => gauge!(m::PIN_STORE_AVAILABLE).set(1.0),
    }
    Some(store)
}

/// Creates the default pin store on a first start, which an explicit marker beside the state
/// folder records (`.state.created` next to `state/`). With the marker, a missing store or
/// state folder is a lost store, not a first start, and stays an error — never "verification
/// off" (CONFORMANCE D.26). Without it, this is a first start: the store is created (or, made
/// before markers existed, adopted) and the marker written.
fn create_on_first_start(store: &Path) {
    let Some(marker) = first_start_marker(store) else {
        return;
    };
    if marker.exists() {
        return;
    }
    let dir = store.parent().unwrap_or(Path::new("."));
    let created = match store.exists() {
        true => Ok(()),
        false => std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::store::Contents::default()
                    .save(store)
                    .map_err(|e| e.to_string())
            }),
    };
    let marked = created.and_then(|()| {
        let note = format!("{}\n", store.display());
        crate::durable::write_atomic(&marker, note.as_bytes()).map_err(|e| e.to_string())
    });
    match marked {
        Ok(()) => {
            tracing::info!(target: "osgate::node", store = %store.display(), marker = %marker.display(), "first start: created the pin store (TOFU and the ratchet are on by default)")
        }
        Err(e) => {
            tracing::error!(target: "osgate::node", store = %store.display(), error = e, "cannot create the pin store or its first-start marker")
        }
    }
}

/// `.<folder>.created` beside the store's folder.
fn first_start_marker(store: &Path) -> Option<PathBuf> {
    let dir = store.parent()?;
    let name = dir.file_name()?.to_string_lossy();
    Some(dir.with_file_name(format!(".{name}.created")))
}

/// The start-up self-test (CONFORMANCE C.22): the trust anchor's own zone must validate as
/// secure, or DANE-requiring peers are refused. The gauge says which. A `[dns]` written in
/// the config is tested now; the implicit default is tested in the background (see
/// [`watch_validation`]).
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

fn self_test_once(dns: &crate::config::DnsConfig) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let resolver = crate::dns::Dns::new(dns)?;
        Ok(resolver.self_test(&dns.anchor_zone).await)
    })
}

/// DANE by default (no `[dns]`): the system's resolvers must validate the root zone with the
/// built-in anchors. Until they do, DANE is off and says so; tried again every minute.
fn watch_validation(node: Arc<Node>) -> std::io::Result<()> {
    let Some(dns) = node.dns.clone().filter(|d| !d.explicit) else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("osgate-dnssec".into())
        .spawn(move || {
            let mut said = false;
            loop {
                let validating = self_test_once(&dns).unwrap_or(false);
                node.dnssec_validating.store(validating, std::sync::atomic::Ordering::Relaxed);
                gauge!(m::DNSSEC_VALIDATION_AVAILABLE).set(if validating { 1.0 } else { 0.0 });
                if validating {
                    tracing::info!(target: "osgate::dns", "DNSSEC validation works with the system resolvers: DANE is on");
                    return;
                }
                if !said {
                    tracing::info!(target: "osgate::dns", "DNSSEC validation is unavailable with the system resolvers: DANE is off (names resolve as usual) until it works; retrying every minute");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        })
        .map(drop)
}

/// Logs the bound address (useful with port 0) under the listener's config key.
fn log_listening(key: String, sockets: &[std::net::TcpListener]) {
    if let Some(addr) = sockets.first().and_then(|s| s.local_addr().ok()) {
        tracing::info!(target: "osgate::node", key, listen = %addr, "listening");
    }
}
