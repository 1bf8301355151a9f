//! The node's side of the control plane: a watch stream that applies each update whole or
//! NACKs it, a persisted last-known-good to start from when the control plane is away, and
//! reports of the pins this node learned. Runs on its own thread; workers only ever see a
//! whole [`Fleet`] swapped in at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use metrics::{counter, gauge};
use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::fleet::Fleet;
use osgate_core::policy::PolicySet;
use osgate_proto::connect::Target;
use osgate_proto::pb::{self, fleet_client::FleetClient, watch_request::Msg};
use osgate_proto::validate::{Held, Invalid, decode_update};
use osgate_proto::watch::{RawUpdate, watch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::ControlPlaneConfig;
use crate::ctx::Node;
use crate::metrics as m;

mod backoff;
mod lkg;

use backoff::Backoff;

/// Pins per report.
const REPORT_BATCH: usize = 1_000;
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// TLS-RPT domain days per report (the control plane takes up to
/// `osgate_proto::tlsrpt::MAX_DAYS_PER_BATCH`).
const TLSRPT_BATCH: usize = 128;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the client shares with the supervisor.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The node state current now (a reload swaps it): its fleet and pin store.
    pub node: ArcSwap<Node>,
    /// The fleet served is always `held.fleet(local)`, under this lock.
    view: Mutex<View>,
    /// A last-known-good was loaded or an update applied: the fleet state is known.
    pub known: AtomicBool,
}

#[derive(Debug)]
struct View {
    held: Held,
    local: PolicySet,
}

impl Shared {
    /// Serves this node's reloaded `local` rules with the control plane's; refused (nothing
    /// changes) when the two do not combine.
    pub fn set_local(&self, local: PolicySet) -> Result<(), String> {
        let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        let fleet = view.held.fleet(&local).map_err(|e| e.to_string())?;
        self.node.load().fleet.store(Arc::new(fleet));
        view.local = local;
        Ok(())
    }

    fn revision(&self) -> u64 {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .revision
    }
}

/// A running client; dropping it stops the client's thread.
#[derive(Debug)]
pub(crate) struct Running {
    pub shared: Arc<Shared>,
    /// What it was started with: a reload that changes either restarts it.
    pub config: ControlPlaneConfig,
    pub peers: Vec<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Client {
    config: ControlPlaneConfig,
    shared: Arc<Shared>,
    peers: Vec<String>,
    /// When the node last knew its config was current (Unix seconds).
    synced_at: Arc<AtomicU64>,
    /// Pins the control plane accepted: `(peer, key)`.
    reported: Arc<Mutex<HashSet<(String, String)>>>,
    enrolled: bool,
    /// The current stream carried at least one update.
    carried: bool,
}

/// Loads the last-known-good into `node` now, then follows the control plane on a thread
/// until the returned handle is dropped.
pub fn start(
    config: ControlPlaneConfig,
    node: Arc<Node>,
    local: PolicySet,
    peers: Vec<String>,
) -> std::io::Result<Running> {
    let (held, saved_at) = load_last_known_good(&config, &node, &local);
    let shared = Arc::new(Shared {
        known: AtomicBool::new(held.revision > 0),
        node: ArcSwap::new(node),
        view: Mutex::new(View { held, local }),
    });
    let client = Client {
        config: config.clone(),
        shared: shared.clone(),
        peers: peers.clone(),
        synced_at: Arc::new(AtomicU64::new(saved_at)),
        reported: Arc::default(),
        enrolled: false,
        carried: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("osgate-controlplane".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    () = client.run() => {}
                    _ = stopped => {}
                }
            })
        })?;
    Ok(Running {
        shared,
        config,
        peers,
        _stop: stop,
    })
}

fn load_last_known_good(
    config: &ControlPlaneConfig,
    node: &Node,
    local: &PolicySet,
) -> (Held, u64) {
    let path = config.state.display().to_string();
    let loaded = lkg::load(&config.state).and_then(|(snapshot, saved_at)| {
        let held = Held::default()
            .apply(&snapshot)
            .map_err(|e| e.to_string())?;
        let fleet = held.fleet(local).map_err(|e| e.to_string())?;
        Ok((held, fleet, saved_at))
    });
    match loaded {
        Ok((held, fleet, saved_at)) => {
            tracing::info!(target: "osgate::controlplane", revision = held.revision, path, "serving the last-known-good until the control plane answers");
            gauge!(m::CP_REVISION).set(held.revision as f64);
            gauge!(m::CP_NO_OVERRIDES).set(0.0);
            node.fleet.store(Arc::new(fleet));
            (held, saved_at)
        }
        Err(e) => {
            let missing = !config.state.exists();
            match missing {
                true => {
                    tracing::info!(target: "osgate::controlplane", path, "no last-known-good yet: running with no overrides until the control plane answers")
                }
                false => {
                    tracing::error!(target: "osgate::controlplane", path, error = e, "last-known-good is unreadable: running with no overrides until the control plane answers")
                }
            }
            gauge!(m::CP_NO_OVERRIDES).set(1.0);
            // What "no overrides" means, also when a reload restarts this client: this
            // node's own rules alone, never another control plane's leftovers.
            node.fleet
                .store(Arc::new(Fleet::new(0, local.clone(), [], &[])));
            (Held::default(), unix_now())
        }
    }
}

impl Client {
    fn target(&self) -> Result<Target, String> {
        let crypto =
            CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls13).map_err(|e| e.to_string())?;
        let identity = (self.config.chain.clone(), self.config.key.clone_key());
        let tls = crypto
            .pinned_client(vec![self.config.server_pin], Some(identity))
            .map_err(|e| e.to_string())?;
        Ok(Target {
            address: self.config.address.clone(),
            tls,
            connect_timeout: Duration::from_secs(5),
            keepalive: self.config.keepalive,
            keepalive_timeout: self.config.keepalive,
        })
    }

    async fn run(mut self) {
        let target = match self.target() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(target: "osgate::controlplane", error = e, "cannot set up TLS to the control plane");
                return;
            }
        };
        tokio::spawn(gauges(
            self.synced_at.clone(),
            self.shared.clone(),
            self.reported.clone(),
        ));
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let outcome = self.session(&target).await;
            gauge!(m::CP_CONNECTED).set(0.0);
            // A stream that carried updates was healthy, however it ended (a draining
            // control plane ends every stream with an error): start the backoff over.
            if std::mem::take(&mut self.carried) {
                backoff.reset();
            }
            if let Err(e) = outcome {
                let retry_within_ms = backoff.ceiling().as_millis() as u64;
                tracing::warn!(target: "osgate::controlplane", error = e, retry_within_ms, "control plane stream ended; serving revision {} meanwhile", self.shared.revision())
            }
            tokio::time::sleep(backoff.next_delay(jitter())).await;
        }
    }

    /// One stream, until it ends; `self.carried` says whether it carried an update.
    async fn session(&mut self, target: &Target) -> Result<(), String> {
        let channel = target.connect().await.map_err(|e| e.to_string())?;
        let mut fleet = FleetClient::new(channel.clone())
            .max_decoding_message_size(osgate_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(osgate_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            revision: self.shared.revision(),
            features: osgate_proto::features::SUPPORTED
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            peers: self.peers.clone(),
        };
        let _ = tx
            .send(pb::WatchRequest {
                msg: Some(Msg::Hello(hello)),
            })
            .await;
        // Raw bytes, not the generated client: unknown fields must be seen (CONFORMANCE G.43).
        let mut updates = match watch(channel, ReceiverStream::new(rx)).await {
            Ok(updates) => updates,
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                self.enroll(&mut fleet).await?;
                return Err(format!("{} (enrolled now; reconnecting)", status.message()));
            }
            Err(status) => return Err(status.message().to_owned()),
        };
        gauge!(m::CP_CONNECTED).set(1.0);
        let mut reports = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                message = updates.message() => match message {
                    Ok(Some(update)) => {
                        self.carried = true;
                        let reply = self.apply(&update);
                        if tx.send(reply).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status.message().to_owned()),
                },
                _ = reports.tick() => {
                    self.synced_at.store(unix_now(), Ordering::Relaxed);
                    self.report(&mut fleet).await;
                }
            }
        }
    }

    /// Enrols the node key with the configured one-time token, once per process.
    async fn enroll(&mut self, fleet: &mut FleetClient<Channel>) -> Result<(), String> {
        let Some(token) = self.config.enroll_token.clone().filter(|_| !self.enrolled) else {
            return Err("this node's key is not registered with the control plane (osgatectl nodes register, or [controlplane] enroll_token)".into());
        };
        self.enrolled = true;
        let request = pb::EnrollRequest {
            token,
            addresses: self.config.advertise.clone(),
        };
        let reply = fleet
            .enroll(request)
            .await
            .map_err(|s| format!("enrolment refused: {}", s.message()))?;
        tracing::info!(target: "osgate::controlplane", name = reply.into_inner().name, "enrolled with the control plane");
        Ok(())
    }

    /// Applies `raw` whole, or refuses it and keeps the last-known-good. The new state is
    /// persisted (synced) before it is served and ACKed: an ACK means the node holds the
    /// revision and comes back to it after a restart. When persisting fails the update is
    /// NACKed with the error and the node keeps serving what it last persisted, so what it
    /// serves, what it has on disk and what it last ACKed stay one revision; the control
    /// plane shows the NACK and sends a whole snapshot at its next revision (or the next
    /// stream starts from the revision the node says it holds).
    fn apply(&mut self, raw: &RawUpdate) -> pb::WatchRequest {
        let applied = decode_update(&raw.0).and_then(|update| {
            let revision = update.revision;
            self.prepare(&update).map_err(|e| (revision, e))
        });
        match applied {
            Ok(revision) => {
                self.shared.known.store(true, Ordering::Relaxed);
                self.synced_at.store(unix_now(), Ordering::Relaxed);
                gauge!(m::CP_REVISION).set(revision as f64);
                gauge!(m::CP_NO_OVERRIDES).set(0.0);
                counter!(m::CP_UPDATES_TOTAL, "result" => "ack").increment(1);
                tracing::info!(target: "osgate::controlplane", revision, "applied control plane update");
                pb::WatchRequest {
                    msg: Some(Msg::Ack(pb::Ack { revision })),
                }
            }
            Err((revision, e)) => {
                counter!(m::CP_UPDATES_TOTAL, "result" => "nack").increment(1);
                tracing::warn!(target: "osgate::controlplane", revision, error = %e, kept = self.shared.revision(), "refused control plane update; keeping the last-known-good");
                pb::WatchRequest {
                    msg: Some(Msg::Nack(pb::Nack {
                        revision,
                        error: e.to_string(),
                    })),
                }
            }
        }
    }

    /// Checks `update` against the held state, persists the result, and serves it; returns
    /// the revision now held.
    fn prepare(&self, update: &pb::Update) -> Result<u64, Invalid> {
        let mut view = self
            .shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = view.held.apply(update)?;
        let fleet: Fleet = held.fleet(&view.local)?;
        lkg::save(&self.config.state, &held.to_snapshot(), unix_now()).map_err(|e| Invalid {
            resource: "update".into(),
            reason: format!(
                "cannot persist the last-known-good to {}: {e}",
                self.config.state.display()
            ),
        })?;
        self.shared.node.load().fleet.store(Arc::new(fleet));
        view.held = held;
        Ok(view.held.revision)
    }

    /// Sends pins learned here and not reported yet, and the outcome counts since the last
    /// report. Pins stay in the pin store until accepted, so a control plane away for hours
    /// loses none (the store bounds the queue); counts are put back when a report fails.
    async fn report(&mut self, fleet: &mut FleetClient<Channel>) {
        let pins: Vec<pb::LearnedPin> = pending(&self.shared.node.load(), &self.reported)
            .into_iter()
            .take(REPORT_BATCH)
            .collect();
        let counts = crate::tally::take();
        let node = self.shared.node.load();
        let days = node.tlsrpt.pending(TLSRPT_BATCH);
        let seen = crate::observed::pending(REPORT_BATCH);
        if pins.is_empty() && counts.is_empty() && days.is_empty() && seen.is_empty() {
            return;
        }
        let sent: Vec<(String, String)> = pins
            .iter()
            .map(|p| (p.peer.clone(), p.spki.clone()))
            .collect();
        let outcomes = counts
            .iter()
            .map(
                |((direction, level, method, reason), count)| pb::OutcomeCount {
                    direction: (*direction).into(),
                    level: (*level).into(),
                    method: (*method).into(),
                    reason: (*reason).into(),
                    count: *count,
                },
            )
            .collect();
        let tlsrpt = days
            .iter()
            .map(|p| osgate_proto::tlsrpt::to_pb(&p.domain, p.day, &p.aggregate))
            .collect();
        let capabilities = seen
            .iter()
            .map(|(peer, s)| pb::ObservedTls {
                peer: peer.clone(),
                tls_version: s.tls_version.into(),
                group: s.group.into(),
                starttls: s.starttls,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
            })
            .collect();
        let batch = pb::ReportBatch {
            pins,
            outcomes,
            tlsrpt,
            capabilities,
        };
        match fleet.report(batch).await {
            Ok(_) => {
                self.reported
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(sent);
                let versions: Vec<_> = days
                    .into_iter()
                    .map(|p| (p.day, p.domain, p.version))
                    .collect();
                node.tlsrpt.accepted(&versions);
                crate::observed::accepted(&seen);
            }
            Err(s) => {
                crate::tally::restore(counts);
                tracing::warn!(target: "osgate::controlplane", error = s.message(), "report failed; will retry");
            }
        }
    }
}

/// Pins learned here that the control plane has not accepted yet.
fn pending(node: &Node, reported: &Mutex<HashSet<(String, String)>>) -> Vec<pb::LearnedPin> {
    let Some(store) = &node.store else {
        return Vec::new();
    };
    let learned = store.learned();
    let reported = reported.lock().unwrap_or_else(PoisonError::into_inner);
    learned
        .into_iter()
        .map(|(peer, pin, first_seen)| pb::LearnedPin {
            peer,
            spki: pin.to_string(),
            first_seen,
        })
        .filter(|p| !reported.contains(&(p.peer.clone(), p.spki.clone())))
        .collect()
}

/// Config age and the report queue, every second, connected or not.
async fn gauges(
    synced_at: Arc<AtomicU64>,
    shared: Arc<Shared>,
    reported: Arc<Mutex<HashSet<(String, String)>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let age = unix_now().saturating_sub(synced_at.load(Ordering::Relaxed));
        gauge!(m::CP_CONFIG_AGE).set(age as f64);
        gauge!(m::CP_PINS_PENDING).set(pending(&shared.node.load(), &reported).len() as f64);
    }
}

/// A uniform fraction in [0, 1) for backoff jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match aws_lc_rs::rand::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_be_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}
