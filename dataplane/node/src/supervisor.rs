//! The supervisor (the main thread, once the node runs): signals, reloads and the drain.
//!
//! * SIGHUP, or a certificate or key file that changed and then held still for one check,
//!   reloads. The new config is validated and its whole state built (TLS, resolver
//!   self-test, new listeners bound) before anything is swapped, so an invalid config changes
//!   nothing. Live connections keep the state they started with.
//! * SIGTERM or SIGINT drains: listeners close, connections get `[node] drain_timeout_ms` to
//!   finish, then the rest are cut (`close = "drained"`), and the process exits 0 once every
//!   connection has its outcome record. A second signal cuts at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};
use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::controlplane::Running;
use crate::ctx::Node;
use crate::health::{self, Health};
use crate::listener::{BindError, bind_reuseport};
use crate::metrics as m;
use crate::node::{Carried, StartError};
use crate::worker::{Command, ListenerKey, Service, Worker};

/// How often watched certificate and key files are looked at.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often key expiry is checked (and logged when near).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How long cut connections get to write their records.
const AFTER_CUT: Duration = Duration::from_secs(5);
/// How often a drain looks at the open connection count.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The signals the node handles, registered before anything else so that none kills it.
#[derive(Debug)]
pub(crate) struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// A listener with its sockets, one per worker.
#[derive(Debug)]
pub(crate) struct Binding {
    key: ListenerKey,
    service: Service,
    label: String,
    sockets: Vec<std::net::TcpListener>,
}

/// Binds every listener in `services`, or none (the sockets close on error).
pub(crate) fn bind_all(
    services: Vec<(ListenerKey, Service, String)>,
    workers: usize,
) -> Result<Vec<Binding>, BindError> {
    services
        .into_iter()
        .map(|(key, service, label)| {
            let sockets = bind_reuseport(key.listen, workers)?;
            Ok(Binding {
                key,
                service,
                label,
                sockets,
            })
        })
        .collect()
}

/// What the start hands the supervisor.
#[derive(Debug)]
pub(crate) struct Parts {
    pub path: PathBuf,
    pub config: Config,
    pub node: Arc<Node>,
    pub carried: Carried,
    pub workers: Vec<Worker>,
    pub controlplane: Option<Running>,
    pub health: Arc<Health>,
    pub signals: Signals,
}

#[derive(Debug)]
pub(crate) struct Supervisor {
    parts: Parts,
    listening: Vec<ListenerKey>,
    files: crate::filewatch::FileWatch,
}

impl Supervisor {
    pub fn new(parts: Parts) -> Self {
        let files = crate::filewatch::FileWatch::new(&parts.config.files);
        Self {
            parts,
            listening: Vec::new(),
            files,
        }
    }

    /// Serves `bound` and handles signals until the node has drained.
    pub async fn run(
        mut self,
        bound: Vec<Binding>,
        mut failures: mpsc::UnboundedReceiver<std::io::Error>,
    ) -> Result<(), StartError> {
        self.hand_over(bound, &[]);
        self.publish_state();
        self.parts.health.listening.store(true, Ordering::Relaxed);
        crate::ownkeys::check_expiry(&self.parts.config, unix_now());
        gauge!(m::CONFIG_LAST_RELOAD_SUCCESS).set(unix_now() as f64);
        tracing::info!(target: "osgate::node", workers = self.parts.workers.len(), "osgate node started");
        health::notify(&[NotifyState::Ready]);
        let mut files = tokio::time::interval(FILE_CHECK_EVERY);
        let mut expiry = tokio::time::interval(EXPIRY_CHECK_EVERY);
        let mut watchdog = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
        loop {
            tokio::select! {
                _ = self.parts.signals.hup.recv() => self.reload("SIGHUP"),
                _ = self.parts.signals.term.recv() => break self.drain("SIGTERM").await,
                _ = self.parts.signals.int.recv() => break self.drain("SIGINT").await,
                _ = files.tick() => {
                    if self.files.changed_and_settled() {
                        self.reload("a certificate or key file changed");
                    }
                }
                _ = expiry.tick() => crate::ownkeys::check_expiry(&self.parts.config, unix_now()),
                () = tick(&mut watchdog) => health::notify(&[NotifyState::Watchdog]),
                Some(e) = failures.recv() => return Err(StartError::Worker(e)),
            }
        }
        Ok(())
    }

    /// Gives each worker its socket of every binding; closes the listeners in `gone`.
    fn hand_over(&mut self, bound: Vec<Binding>, gone: &[ListenerKey]) {
        for key in gone {
            self.send_all(|| Command::Close(key.clone()));
            tracing::info!(target: "osgate::node", listen = %key.listen, "listener removed: it accepts no more connections; its connections go on");
        }
        self.listening.retain(|k| !gone.contains(k));
        for binding in bound {
            if let Some(addr) = binding.sockets.first().and_then(|s| s.local_addr().ok()) {
                tracing::info!(target: "osgate::node", key = binding.label, listen = %addr, "listening");
            }
            for (worker, socket) in self.parts.workers.iter().zip(binding.sockets) {
                let _ = worker.commands.send(Command::Listen {
                    key: binding.key.clone(),
                    socket,
                    service: binding.service.clone(),
                    node: self.parts.node.clone(),
                });
            }
            self.listening.push(binding.key);
        }
    }

    fn send_all(&self, command: impl Fn() -> Command) {
        for worker in &self.parts.workers {
            let _ = worker.commands.send(command());
        }
    }

    fn publish_state(&self) {
        let controlplane = self.parts.controlplane.as_ref().map(|r| r.shared.clone());
        self.parts
            .health
            .set_current(self.parts.node.clone(), controlplane);
    }

    /// Reloads the config file and the files it names; on any error nothing changes.
    fn reload(&mut self, why: &str) {
        health::notify_reloading();
        tracing::info!(target: "osgate::node", trigger = why, path = %self.parts.path.display(), "reloading");
        match self.try_reload() {
            Ok(summary) => {
                counter!(m::CONFIG_RELOADS_TOTAL, "result" => "success").increment(1);
                gauge!(m::CONFIG_LAST_RELOAD_SUCCESS).set(unix_now() as f64);
                tracing::info!(target: "osgate::node", trigger = why, added = summary.added, removed = summary.removed, kept = summary.kept, "reloaded: new connections use the new config; open ones finish on theirs");
            }
            Err(e) => {
                counter!(m::CONFIG_RELOADS_TOTAL, "result" => "failure").increment(1);
                tracing::error!(target: "osgate::node", trigger = why, error = %e, "reload refused; nothing changed");
            }
        }
        self.files = crate::filewatch::FileWatch::new(&self.parts.config.files);
        health::notify(&[NotifyState::Ready]);
    }

    fn try_reload(&mut self) -> Result<Summary, String> {
        let config = Config::load(&self.parts.path).map_err(|e| e.to_string())?;
        warn_restart_only(&self.parts.config, &config);
        let carried = &self.parts.carried;
        let previous = Some((&self.parts.config, &*self.parts.node));
        let node =
            crate::node::build_node(&config, carried, previous).map_err(|e| e.to_string())?;
        let services = crate::node::services(&config, &node).map_err(|e| e.to_string())?;
        let kept: Vec<ListenerKey> = services
            .iter()
            .map(|(k, _, _)| k.clone())
            .filter(|k| self.listening.contains(k))
            .collect();
        let (old, new): (Vec<_>, Vec<_>) =
            services.into_iter().partition(|(k, _, _)| kept.contains(k));
        let bound = bind_all(new, self.parts.workers.len()).map_err(|e| e.to_string())?;
        // Everything is built: from here on the reload only swaps.
        self.swap_fleet(&config, &node)?;
        let gone: Vec<ListenerKey> = self
            .listening
            .iter()
            .filter(|k| !kept.contains(k))
            .cloned()
            .collect();
        let summary = Summary {
            added: bound.len(),
            removed: gone.len(),
            kept: old.len(),
        };
        self.parts.carried.caps.set_limits(config.node.caps);
        self.parts.node = node;
        for (key, service, _) in old {
            self.send_all(|| Command::Update {
                key: key.clone(),
                service: service.clone(),
                node: self.parts.node.clone(),
            });
        }
        self.hand_over(bound, &gone);
        *self
            .parts
            .health
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = crate::node::prepare_state(&config).err();
        crate::ownkeys::check_expiry(&config, unix_now());
        self.parts.config = config;
        self.publish_state();
        Ok(summary)
    }

    /// The fleet for the new local policy: through the control-plane client when one runs
    /// with the same settings (a restarted one loads its last-known-good), else the local
    /// rules alone. The first step that changes anything, and the only one that can fail.
    fn swap_fleet(&mut self, config: &Config, node: &Arc<Node>) -> Result<(), String> {
        let peers = crate::node::peers(config);
        let same =
            self.parts.controlplane.as_ref().is_some_and(|r| {
                Some(&r.config) == config.controlplane.as_ref() && r.peers == peers
            });
        if same {
            if let Some(running) = &self.parts.controlplane {
                running.shared.set_local(config.policy.clone())?;
                running.shared.node.store(node.clone());
            }
            return Ok(());
        }
        self.parts.controlplane = None;
        match crate::node::start_controlplane(config, node).map_err(|e| e.to_string())? {
            Some(running) => self.parts.controlplane = Some(running),
            None => {
                let fleet = osgate_core::fleet::Fleet::new(0, config.policy.clone(), [], &[]);
                node.fleet.store(Arc::new(fleet));
            }
        }
        Ok(())
    }

    /// Stops accepting, lets connections finish until the drain deadline, cuts the rest, and
    /// returns once every connection has ended (and written its record).
    async fn drain(mut self, signal: &str) {
        let started = Instant::now();
        let timeout = self.parts.config.node.drain_timeout;
        self.parts.health.draining.store(true, Ordering::Relaxed);
        gauge!(m::DRAINING).set(1.0);
        health::notify(&[NotifyState::Stopping]);
        self.send_all(|| Command::Drain);
        let caps = self.parts.carried.caps.clone();
        tracing::info!(target: "osgate::node", signal, open = caps.open(), timeout_ms = timeout.as_millis() as u64, "draining: listeners closed; open connections get until the drain deadline");
        let finished = self.wait_until_closed(started + timeout).await;
        if !finished {
            let open = caps.open();
            self.send_all(|| Command::Cut);
            tracing::warn!(target: "osgate::node", open, "drain deadline passed: cutting the connections still open");
            let _ = self.wait_until_closed(Instant::now() + AFTER_CUT).await;
        }
        tracing::info!(target: "osgate::node", open = caps.open(), drain_ms = started.elapsed().as_millis() as u64, "drained; stopping");
    }

    /// Waits until no connection is open, `deadline` passes (false), or another stop signal
    /// asks to stop waiting (false).
    async fn wait_until_closed(&mut self, deadline: Instant) -> bool {
        let caps = self.parts.carried.caps.clone();
        let deadline = tokio::time::Instant::from_std(deadline);
        while caps.open() > 0 {
            tokio::select! {
                () = tokio::time::sleep(DRAIN_POLL) => {}
                () = tokio::time::sleep_until(deadline) => return false,
                _ = self.parts.signals.term.recv() => return false,
                _ = self.parts.signals.int.recv() => return false,
            }
        }
        true
    }
}

#[derive(Debug)]
struct Summary {
    added: usize,
    removed: usize,
    kept: usize,
}

/// Settings a running node cannot change: said once per reload, applied at the next start.
fn warn_restart_only(old: &Config, new: &Config) {
    let (a, b) = (&old.node, &new.node);
    let changed = [
        ("node.io", a.io != b.io),
        ("node.workers", a.workers != b.workers),
        ("node.metrics_listen", a.metrics_listen != b.metrics_listen),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(target: "osgate::node", key, "changed, but takes effect only at the next start");
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
