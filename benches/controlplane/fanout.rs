//! Control-plane fan-out: how long from one policy write to every node having it.
//!
//! Starts one real `osgate-controlplane` (embedded SQLite, in a temporary directory), registers
//! N node keys through the Admin API, opens N `Fleet.Watch` streams — each over its own TLS
//! connection presenting its node's certificate, answering every update with an ACK as a node
//! does — and waits until every stream has ACKed the initial snapshot. Then, R times, writes
//! one policy (`ApplyPolicies`, admin bearer token) and measures the wall time from just
//! before the write until the last simulated node has received the new revision and sent its
//! ACK; as a cross-check, also until the control plane's `osgate_cp_acks_total` has counted
//! all N ACKs. Reports min / median / p95 / max, the stream set-up time, and the control
//! plane's RSS with N streams open. Stops the control plane at the end.
//!
//! Build the control plane first, then run this in release mode:
//!
//! ```sh
//! cargo build --release -p osgate-controlplane --bins
//! cargo run --release -p osgate-benches --bin fanout -- [--nodes 1000] [--rounds 20]
//! ```
//!
//! The simulated nodes and the control plane share the machine's cores: the numbers are
//! end-to-end on one host, load generator included (see benches/README.md).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::pin::SpkiPin;
use osgate_proto::connect::Target;
use osgate_proto::pb::{
    self, admin_client::AdminClient, fleet_client::FleetClient, resource::Kind, watch_request::Msg,
};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The admin token of the bench's control plane (its config holds only the SHA-256).
const ADMIN_TOKEN: &str = "fanout-bench-admin-token";
/// The policy every round rewrites, alternating its level.
const POLICY: &str = "fanout-bench";
const LEVELS: [&str; 2] = ["encrypt", "opportunistic"];
const ACKS_METRIC: &str = "osgate_cp_acks_total";

const USAGE: &str = "\
fanout: policy write -> all nodes ACKed, against one real osgate-controlplane (SQLite)

usage: fanout [--nodes N] [--rounds R] [options]

  --nodes N                 simulated nodes, one TLS connection and Watch stream each (1000)
  --rounds R                measured policy writes, after one unmeasured warm-up write (20)
  --pause-ms MS             idle time between rounds (250)
  --connect-concurrency C   streams being set up at once (100)
  --register-concurrency C  RegisterNode calls in flight at once (1)
  --timeout S               give up on a round or on set-up after S seconds (60)
  --controlplane PATH       the osgate-controlplane binary (default: next to this binary)
  --keep                    keep the temporary directory (config, database, log)
";

#[derive(Debug, Clone)]
struct Args {
    nodes: usize,
    rounds: usize,
    pause: Duration,
    connect_concurrency: usize,
    register_concurrency: usize,
    timeout: Duration,
    controlplane: Option<PathBuf>,
    keep: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        nodes: 1000,
        rounds: 20,
        pause: Duration::from_millis(250),
        connect_concurrency: 100,
        register_concurrency: 1,
        timeout: Duration::from_secs(60),
        controlplane: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: `{text}` is not a positive number"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = number("--nodes", value("--nodes")?)? as usize,
            "--rounds" => args.rounds = number("--rounds", value("--rounds")?)? as usize,
            "--pause-ms" => {
                let text = value("--pause-ms")?;
                let ms = text
                    .parse::<u64>()
                    .map_err(|_| format!("--pause-ms: `{text}` is not a number"))?;
                args.pause = Duration::from_millis(ms);
            }
            "--connect-concurrency" => {
                let text = value(&flag)?;
                args.connect_concurrency = number(&flag, text)? as usize;
            }
            "--register-concurrency" => {
                let text = value(&flag)?;
                args.register_concurrency = number(&flag, text)? as usize;
            }
            "--timeout" => {
                args.timeout = Duration::from_secs(number("--timeout", value("--timeout")?)?)
            }
            "--controlplane" => args.controlplane = Some(value("--controlplane")?.into()),
            "--keep" => args.keep = true,
            // Passed by `cargo bench` to harness-less targets.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

/// The only `unsafe` of the bench: two libc calls without a safe std equivalent.
mod sys {
    #![allow(unsafe_code)]

    /// Sends SIGINT (the control plane's graceful shutdown) to `pid`.
    pub fn interrupt(pid: u32) -> std::io::Result<()> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped.
        match unsafe { libc::kill(pid, libc::SIGINT) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Clock ticks per second, for /proc/PID/stat CPU times.
    pub fn clock_ticks() -> u64 {
        // SAFETY: sysconf takes and returns plain integers.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
    }
}

// ---- The control plane process ----

/// A key pair made with rcgen (ECDSA P-256, self-signed), as a node or the control plane has.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
    pin: SpkiPin,
}

fn identity(name: &str) -> Result<Identity, Error> {
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![name.to_owned()])?.self_signed(&key)?;
    let pin = SpkiPin::of_certificate(cert.der())
        .ok_or("rcgen made a certificate that does not parse")?;
    Ok(Identity {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        pin,
    })
}

fn free_port() -> Result<std::net::SocketAddr, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `osgate-controlplane` next to this binary (target/release/ for `cargo run --release`,
/// or one level up from target/release/deps/ when run as a cargo bench).
fn controlplane_bin(args: &Args) -> Result<PathBuf, Error> {
    if let Some(path) = &args.controlplane {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().ok_or("the bench binary has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().ok_or("the bench binary has no directory")?;
    }
    let bin = dir.join("osgate-controlplane");
    match bin.exists() {
        true => Ok(bin),
        false => Err(format!(
            "{} is missing: build it first (cargo build --release -p osgate-controlplane --bins), or pass --controlplane",
            bin.display()
        )
        .into()),
    }
}

/// The control plane child. Killed on drop if still running.
struct ControlPlane {
    child: Child,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    pin: SpkiPin,
    log: PathBuf,
}

impl ControlPlane {
    fn start(bin: &Path, dir: &Path) -> Result<Self, Error> {
        let key = identity("osgate-controlplane")?;
        let cert_path = dir.join("controlplane.crt");
        let key_path = dir.join("controlplane.key");
        std::fs::write(&cert_path, &key.cert_pem)?;
        std::fs::write(&key_path, &key.key_pem)?;
        let addr = free_port()?;
        let metrics = free_port()?;
        let config = format!(
            "[controlplane]\nlisten = \"{addr}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
             metrics = \"{metrics}\"\ndatabase = \"{}\"\n\n\
             [[admin]]\nname = \"bench\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n",
            cert_path.display(),
            key_path.display(),
            dir.join("controlplane.db").display(),
            hex(&osgate_core::crypto::sha::sha256(ADMIN_TOKEN.as_bytes())),
        );
        let config_path = dir.join("controlplane.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("controlplane.log");
        let child = Command::new(bin)
            .args(["--log-format", "json", "run", "-c"])
            .arg(&config_path)
            .env("OSGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut cp = ControlPlane {
            child,
            addr,
            metrics,
            pin: key.pin,
            log,
        };
        cp.wait_serving()?;
        Ok(cp)
    }

    fn wait_serving(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("control plane serving") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(
                    format!("the control plane exited ({status}) before serving:\n{text}").into(),
                );
            }
            if Instant::now() > deadline {
                return Err(format!("the control plane did not serve within 30 s:\n{text}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, then up to 10 s for a graceful exit, then SIGKILL. Returns what happened.
    fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        let started = Instant::now();
        if let Err(e) = sys::interrupt(self.child.id()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return format!("SIGINT failed ({e}); killed");
        }
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!(
                    "exited on SIGINT in {} ms ({status})",
                    started.elapsed().as_millis()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did NOT exit within 10 s of SIGINT; killed".into()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of `pid` (or "self").
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); the first one after the command is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / sys::clock_ticks(),
    ))
}

/// The sum of every series of `name` at the control plane's metrics endpoint.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Result<f64, Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split_once('{').map_or(series, |(m, _)| m);
        if metric == name {
            sum += value.parse::<f64>()?;
        }
    }
    Ok(sum)
}

// ---- Clients ----

/// Adds the admin bearer token to every request.
#[derive(Clone, Debug)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(osgate_proto::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

fn target(cp: &ControlPlane, tls: Arc<rustls::ClientConfig>) -> Target {
    Target {
        address: cp.addr.to_string(),
        tls,
        connect_timeout: Duration::from_secs(30),
        keepalive: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(20),
    }
}

async fn admin(cp: &ControlPlane, crypto: &CryptoPolicy) -> Result<Admin, Error> {
    let tls = crypto.pinned_client(vec![cp.pin], None)?;
    let channel = target(cp, tls).connect().await?;
    let bearer = Bearer(format!("Bearer {ADMIN_TOKEN}").parse()?);
    Ok(AdminClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(osgate_proto::MAX_MESSAGE_BYTES))
}

/// What one simulated node saw.
#[derive(Debug)]
enum Event {
    /// An update received and ACKed.
    Acked {
        node: usize,
        revision: u64,
        snapshot: bool,
        /// The level of the bench policy, if the update carried it.
        level: Option<String>,
        received: Instant,
        acked: Instant,
    },
    /// The stream failed or ended.
    Ended { node: usize, error: String },
}

/// One node's Watch stream, as dataplane/node/src/controlplane does it: Hello, then an ACK
/// for every update. Releases `slot` once the first update (the snapshot) is ACKed.
async fn watch(
    node: usize,
    target: Target,
    events: &mpsc::UnboundedSender<Event>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> String {
    let channel = match target.connect().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut fleet = FleetClient::new(channel)
        .max_decoding_message_size(osgate_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(osgate_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::Hello {
        revision: 0,
        features: osgate_proto::features::SUPPORTED
            .iter()
            .map(|f| (*f).to_owned())
            .collect(),
        version: "fanout-bench".into(),
        peers: Vec::new(),
    };
    if tx
        .send(pb::WatchRequest {
            msg: Some(Msg::Hello(hello)),
        })
        .await
        .is_err()
    {
        return "request stream closed before Hello".into();
    }
    let mut updates = match fleet.watch(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return format!("Watch refused: {status}"),
    };
    let mut slot = Some(slot);
    loop {
        let update = match updates.message().await {
            Ok(Some(update)) => update,
            Ok(None) => return "the control plane ended the stream".into(),
            Err(status) => return format!("stream failed: {status}"),
        };
        let received = Instant::now();
        let ack = pb::WatchRequest {
            msg: Some(Msg::Ack(pb::Ack {
                revision: update.revision,
            })),
        };
        if tx.send(ack).await.is_err() {
            return "request stream closed".into();
        }
        let acked = Instant::now();
        slot.take();
        let level = update.upserts.iter().find_map(|r| match &r.kind {
            Some(Kind::Policy(p)) if p.name == POLICY => Some(p.level.clone()),
            _ => None,
        });
        let event = Event::Acked {
            node,
            revision: update.revision,
            snapshot: update.snapshot,
            level,
            received,
            acked,
        };
        if events.send(event).is_err() {
            return String::new();
        }
    }
}

/// When the last of `n` nodes received and ACKed `revision` (or later).
struct Wave {
    /// `None` only for an empty wave.
    last_received: Option<Instant>,
    last_acked: Option<Instant>,
    /// Updates that were not what the wave expected (kind of update, policy level).
    unexpected: Vec<String>,
    /// Updates for older revisions seen meanwhile.
    stale: usize,
}

async fn wave(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    revision: u64,
    timeout: Duration,
    expect: impl Fn(bool, Option<&str>) -> Result<(), String>,
) -> Result<Wave, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = vec![false; n];
    let mut count = 0;
    let mut out = Wave {
        last_received: None,
        last_acked: None,
        unexpected: Vec::new(),
        stale: 0,
    };
    while count < n {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return Err("every node stream is gone".into()),
            Err(_) => {
                return Err(format!(
                    "only {count} of {n} nodes ACKed revision {revision} within {} s",
                    timeout.as_secs()
                )
                .into());
            }
        };
        match event {
            Event::Ended { node, error } => {
                return Err(format!(
                    "node {node}'s stream ended while waiting for revision {revision}: {error}"
                )
                .into());
            }
            Event::Acked { revision: r, .. } if r < revision => out.stale += 1,
            Event::Acked {
                node,
                revision: r,
                snapshot,
                level,
                received,
                acked,
            } => {
                if let Err(e) = expect(snapshot, level.as_deref()) {
                    out.unexpected
                        .push(format!("node {node}, revision {r}: {e}"));
                }
                if !std::mem::replace(&mut seen[node], true) {
                    count += 1;
                    out.last_received = out.last_received.max(Some(received));
                    out.last_acked = out.last_acked.max(Some(acked));
                }
            }
        }
    }
    Ok(out)
}

// ---- The bench ----

#[derive(Debug, Default)]
struct Round {
    reply_ms: f64,
    received_ms: f64,
    acked_ms: f64,
    /// When the control plane's ACK counter reached the expected count (polled after the
    /// client side completed, so never earlier than `acked_ms`).
    cp_counted_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Report {
    nodes: usize,
    register: Duration,
    keygen: Duration,
    setup: Duration,
    setup_revision: u64,
    rss_registered: Option<u64>,
    rss_streams: Option<u64>,
    rss_end: Option<u64>,
    warmup: Round,
    rounds: Vec<Round>,
    rounds_wall: Duration,
    cp_cpu_rounds: Option<Duration>,
    bench_cpu_rounds: Option<Duration>,
    unexpected: Vec<String>,
    stale: usize,
    cp_view: String,
    /// Nodes whose registration was stored but missing from the served state.
    lost_registrations: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(args: &Args, cp: &ControlPlane) -> Result<Report, Error> {
    let mut report = Report {
        nodes: args.nodes,
        ..Default::default()
    };
    let crypto = CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls13)?;
    let mut admin = admin(cp, &crypto).await?;

    eprintln!("fanout: generating {} node keys", args.nodes);
    let started = Instant::now();
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        nodes.push(identity(&format!("node-{i}"))?);
    }
    report.keygen = started.elapsed();

    eprintln!("fanout: registering {} nodes", args.nodes);
    let started = Instant::now();
    let mut revision = 0;
    let mut calls = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < nodes.len() || !calls.is_empty() {
        while next < nodes.len() && calls.len() < args.register_concurrency {
            let key = pb::NodeKey {
                name: format!("node-{next}"),
                spki: nodes[next].pin.to_string(),
                ..Default::default()
            };
            let mut admin = admin.clone();
            calls.spawn(async move {
                admin
                    .register_node(pb::RegisterNodeRequest { key: Some(key) })
                    .await
            });
            next += 1;
        }
        if let Some(done) = calls.join_next().await {
            let reply = done?.map_err(|s| format!("RegisterNode: {s}"))?;
            revision = revision.max(reply.into_inner().revision);
        }
    }
    report.register = started.elapsed();

    // Every registered node must be in the control plane's served state (ListNodes lists
    // it), or its Watch is refused. A registration committed while another refresh was
    // between its two reads can be missing there although it is stored (see README.md);
    // registering such a node again writes it at a new revision, which is loaded.
    for attempt in 0.. {
        let listed = admin
            .list_nodes(pb::ListRequest::default())
            .await
            .map_err(|s| format!("ListNodes: {s}"))?
            .into_inner();
        let present: std::collections::HashSet<String> = listed
            .nodes
            .iter()
            .filter_map(|n| n.key.as_ref().map(|k| k.name.clone()))
            .collect();
        let missing: Vec<usize> = (0..nodes.len())
            .filter(|i| !present.contains(&format!("node-{i}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        if attempt == 0 {
            report.lost_registrations = missing.iter().map(|i| format!("node-{i}")).collect();
        }
        if attempt == 5 {
            return Err(format!(
                "{} registered nodes are still missing from the control plane's state after 5 re-registrations",
                missing.len()
            )
            .into());
        }
        eprintln!(
            "fanout: {} registered node(s) missing from the control plane's state (ListNodes); registering them again",
            missing.len()
        );
        for i in missing {
            let key = pb::NodeKey {
                name: format!("node-{i}"),
                spki: nodes[i].pin.to_string(),
                ..Default::default()
            };
            let reply = admin
                .register_node(pb::RegisterNodeRequest { key: Some(key) })
                .await
                .map_err(|s| format!("RegisterNode: {s}"))?;
            revision = revision.max(reply.into_inner().revision);
        }
    }
    report.setup_revision = revision;
    report.rss_registered = rss_kib(cp.pid());

    eprintln!("fanout: opening {} Watch streams", args.nodes);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut streams = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.into_iter().enumerate() {
        let slot = slots.clone().acquire_owned().await?;
        let tls = crypto.pinned_client(vec![cp.pin], Some((node.chain, node.key)))?;
        let target = target(cp, tls);
        let events = events_tx.clone();
        streams.push(tokio::spawn(async move {
            let error = watch(i, target, &events, slot).await;
            let _ = events.send(Event::Ended { node: i, error });
        }));
    }
    drop(events_tx);
    let setup = wave(
        &mut events,
        args.nodes,
        revision,
        args.timeout,
        |snapshot, _| match snapshot {
            true => Ok(()),
            false => Err("the first update was not a snapshot".into()),
        },
    )
    .await?;
    report.setup = setup
        .last_acked
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(started));
    report.unexpected.extend(setup.unexpected);
    report.stale += setup.stale;
    // Let the control plane take the last ACKs in before measuring its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.rss_streams = rss_kib(cp.pid());

    let pid = cp.pid().to_string();
    let cp_cpu = cpu_time(&pid);
    let bench_cpu = cpu_time("self");
    let rounds_started = Instant::now();
    let mut last_revision = revision;
    for round in 0..=args.rounds {
        tokio::time::sleep(args.pause).await;
        let level = LEVELS[round % LEVELS.len()];
        let acks_before = metric(cp.metrics, ACKS_METRIC).await?;
        let policy = pb::Policy {
            name: POLICY.into(),
            r#match: "*.fanout.bench.example".into(),
            level: level.into(),
            ..Default::default()
        };
        let t0 = Instant::now();
        let reply = admin
            .apply_policies(pb::ApplyPoliciesRequest {
                policies: vec![policy],
                dry_run: false,
                confirm: false,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ApplyPolicies: {s}"))?
            .into_inner();
        let replied = Instant::now();
        if reply.revision <= last_revision {
            return Err(format!(
                "ApplyPolicies made no new revision ({} after {last_revision})",
                reply.revision
            )
            .into());
        }
        last_revision = reply.revision;
        let got = wave(
            &mut events,
            args.nodes,
            reply.revision,
            args.timeout,
            |snapshot, got| match (snapshot, got) {
                (false, Some(l)) if l == level => Ok(()),
                (true, _) => Err("a snapshot instead of a delta".into()),
                (false, other) => Err(format!("policy level {other:?}, expected {level}")),
            },
        )
        .await;
        let got = match got {
            Ok(got) => got,
            Err(e) => return Err(diagnose(&mut admin, round, reply.revision, level, e).await),
        };
        let expected = acks_before + args.nodes as f64;
        let mut cp_counted_ms = None;
        while t0.elapsed() < args.timeout {
            if metric(cp.metrics, ACKS_METRIC).await? >= expected {
                cp_counted_ms = Some(ms(t0.elapsed()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let result = Round {
            reply_ms: ms(replied - t0),
            received_ms: got
                .last_received
                .map_or(0.0, |t| ms(t.saturating_duration_since(t0))),
            acked_ms: got
                .last_acked
                .map_or(0.0, |t| ms(t.saturating_duration_since(t0))),
            cp_counted_ms,
        };
        eprintln!(
            "fanout: round {round:>2}{}: reply {:>7.1} ms, all received {:>7.1} ms, all ACKed {:>7.1} ms, counted by the control plane {}",
            if round == 0 { " (warm-up)" } else { "" },
            result.reply_ms,
            result.received_ms,
            result.acked_ms,
            cp_counted_ms.map_or("never".into(), |m| format!("{m:.1} ms")),
        );
        report.unexpected.extend(got.unexpected);
        report.stale += got.stale;
        match round {
            0 => report.warmup = result,
            _ => report.rounds.push(result),
        }
    }
    report.rounds_wall = rounds_started.elapsed();
    report.cp_cpu_rounds = cp_cpu
        .zip(cpu_time(&pid))
        .map(|(before, after)| after.saturating_sub(before));
    report.bench_cpu_rounds = bench_cpu
        .zip(cpu_time("self"))
        .map(|(before, after)| after.saturating_sub(before));
    report.rss_end = rss_kib(cp.pid());

    // The control plane's own record of the fleet.
    let list = admin
        .list_nodes(pb::ListRequest::default())
        .await
        .map_err(|s| format!("ListNodes: {s}"))?
        .into_inner();
    let connected = list.nodes.iter().filter(|n| n.connected).count();
    let current = list
        .nodes
        .iter()
        .filter(|n| n.acked_revision == last_revision)
        .count();
    report.cp_view = format!(
        "{connected} of {} nodes connected, {current} with acked_revision = {last_revision} (ListNodes)",
        list.nodes.len()
    );

    for stream in &streams {
        stream.abort();
    }
    // Anything the streams said on their way out is not a failure: they were aborted.
    drop(events);
    Ok(report)
}

/// Adds what the control plane serves to a round's failure.
async fn diagnose(admin: &mut Admin, round: usize, revision: u64, level: &str, e: Error) -> Error {
    let served = admin
        .list_policies(pb::ListRequest {
            name: POLICY.into(),
        })
        .await;
    let state = match served {
        Ok(list) => {
            let list = list.into_inner();
            let levels: Vec<String> = list.policies.iter().map(|p| p.level.clone()).collect();
            format!(
                "the control plane serves revision {} with {POLICY} at level {levels:?}",
                list.revision
            )
        }
        Err(s) => format!("ListPolicies failed: {s}"),
    };
    format!("round {round}: {e}; ApplyPolicies stored revision {revision} (level {level}); {state}")
        .into()
}

// ---- Output ----

/// min, median, p95 (nearest rank), max.
fn summary(values: &[f64]) -> Option<[f64; 4]> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let (first, last) = (*v.first()?, *v.last()?);
    let median = match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    let p95 = v[(n * 95).div_ceil(100).saturating_sub(1)];
    Some([first, median, p95, last])
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn print_report(report: &Report, log: &LogSummary, stopped: &str) {
    let n = report.nodes;
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!();
    println!(
        "osgate control-plane fan-out: {n} nodes, {} rounds (+1 warm-up), SQLite, {cpus} CPUs shared by the control plane and the simulated nodes",
        report.rounds.len()
    );
    println!();
    println!("set-up");
    let row = |label: String, value: String, note: String| {
        println!("{}", format!("  {label:<50}{value:>12}  {note}").trim_end());
    };
    let msecs = |d: Duration| format!("{:.1} ms", ms(d));
    row(
        "node keys (rcgen, ECDSA P-256)".into(),
        msecs(report.keygen),
        String::new(),
    );
    row(
        format!("RegisterNode x {n}"),
        msecs(report.register),
        format!("(ends at revision {})", report.setup_revision),
    );
    row(
        format!("{n} streams: TLS, Watch, snapshot ACKed"),
        msecs(report.setup),
        String::new(),
    );
    let per_stream = report
        .rss_registered
        .zip(report.rss_streams)
        .map(|(a, b)| (b.saturating_sub(a)) as f64 / n as f64);
    row(
        "control plane RSS, nodes registered, no streams".into(),
        mib(report.rss_registered),
        String::new(),
    );
    row(
        format!("control plane RSS, {n} streams open"),
        mib(report.rss_streams),
        per_stream.map_or(String::new(), |k| format!("(+{k:.1} KiB per stream)")),
    );
    row(
        "control plane RSS, after the rounds".into(),
        mib(report.rss_end),
        String::new(),
    );
    println!();
    println!(
        "{:<62}{:>9} {:>9} {:>9} {:>9}",
        format!("policy write -> {n} nodes (ms, from just before ApplyPolicies)"),
        "min",
        "median",
        "p95",
        "max"
    );
    let rows: [(&str, Vec<f64>); 4] = [
        (
            "ApplyPolicies reply",
            report.rounds.iter().map(|r| r.reply_ms).collect(),
        ),
        (
            "last node received the update",
            report.rounds.iter().map(|r| r.received_ms).collect(),
        ),
        (
            "last node sent its ACK (the measure)",
            report.rounds.iter().map(|r| r.acked_ms).collect(),
        ),
        (
            "osgate_cp_acks_total counted all ACKs",
            report
                .rounds
                .iter()
                .filter_map(|r| r.cp_counted_ms)
                .collect(),
        ),
    ];
    for (name, values) in rows {
        match summary(&values) {
            Some([min, median, p95, max]) => {
                println!("  {name:<60}{min:>9.1} {median:>9.1} {p95:>9.1} {max:>9.1}")
            }
            None => println!("  {name:<60}      n/a"),
        }
    }
    let counted = report
        .rounds
        .iter()
        .filter(|r| r.cp_counted_ms.is_some())
        .count();
    if counted < report.rounds.len() {
        println!(
            "  (the ACK counter reached the expected count in only {counted} of {} rounds)",
            report.rounds.len()
        );
    }
    println!(
        "  warm-up round (not counted): reply {:.1}, ACKed {:.1}",
        report.warmup.reply_ms, report.warmup.acked_ms
    );
    println!();
    let rounds = (report.rounds.len() + 1) as f64;
    let per_round =
        |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.1} ms", ms(d) / rounds));
    println!(
        "CPU per round (pauses included): control plane {}, simulated nodes {}; rounds took {:.1} s wall",
        per_round(report.cp_cpu_rounds),
        per_round(report.bench_cpu_rounds),
        report.rounds_wall.as_secs_f64()
    );
    println!("control plane's view at the end: {}", report.cp_view);
    if !report.unexpected.is_empty() {
        println!(
            "UNEXPECTED updates: {} (first: {})",
            report.unexpected.len(),
            report.unexpected[0]
        );
    }
    if !report.lost_registrations.is_empty() {
        println!(
            "LOST registrations: {} node(s) were stored but missing from the control plane's served state, registered again: {}",
            report.lost_registrations.len(),
            report.lost_registrations.join(", ")
        );
    }
    if report.stale > 0 {
        println!(
            "updates for an older revision seen during a wave: {}",
            report.stale
        );
    }
    println!("control plane log: {}", log.describe());
    println!("control plane shutdown: {stopped}");
}

/// Warnings and errors in the control plane's log, and notable info lines.
#[derive(Debug, Default)]
struct LogSummary {
    lines: usize,
    by_message: BTreeMap<String, usize>,
}

impl LogSummary {
    const NOTABLE: [&str; 4] = [
        "request refused",
        "TLS handshake failed",
        "TLS handshake timed out",
        "accept failed",
    ];

    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut out = LogSummary::default();
        for line in text.lines() {
            out.lines += 1;
            let bad = line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"");
            let message = line
                .split_once("\"message\":\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("", |(m, _)| m);
            if bad || Self::NOTABLE.contains(&message) {
                *out.by_message.entry(message.to_owned()).or_default() += 1;
            }
        }
        out
    }

    fn describe(&self) -> String {
        match self.by_message.is_empty() {
            true => format!("{} lines, no warnings or errors", self.lines),
            false => {
                let list: Vec<String> = self
                    .by_message
                    .iter()
                    .map(|(m, n)| format!("{n} x \"{m}\""))
                    .collect();
                format!(
                    "{} lines; warnings/errors/refusals: {}",
                    self.lines,
                    list.join(", ")
                )
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let limit = osgate_benches::sys::raise_nofile_limit()?;
    let needed = args.nodes as u64 + 64;
    if limit < needed {
        return Err(format!(
            "the descriptor limit is {limit}; {} nodes need about {needed}",
            args.nodes
        )
        .into());
    }
    let bin = controlplane_bin(args)?;
    let dir = std::env::temp_dir().join(format!("osgate-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cp = ControlPlane::start(&bin, &dir)?;
    eprintln!(
        "fanout: control plane pid {} on {} (metrics {}), files in {}",
        cp.pid(),
        cp.addr,
        cp.metrics,
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(bench(args, &cp));
    // Closes every node connection before the control plane is asked to stop.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let stopped = cp.stop();
    let log = LogSummary::read(&cp.log);
    match result {
        Ok(report) => {
            print_report(&report, &log, &stopped);
            if args.keep {
                eprintln!("fanout: kept {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("fanout: control plane log: {}", log.describe());
            eprintln!("fanout: control plane shutdown: {stopped}");
            Err(format!("{e} (files kept in {})", dir.display()).into())
        }
    }
}
