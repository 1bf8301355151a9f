//! SIGTERM drain with a node connected, health while draining or without the database,
//! writes in flight, systemd notifications.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::pin::SpkiPin;
use osgate_tests::controlplane::{ControlPlane, keygen, wait_applied};
use osgate_tests::node::bin;
use osgate_tests::peers::{self, Server};
use osgate_tests::per_store;
use osgate_tests::postgres::{Postgres, Store, database};
use osgate_tests::process::http_get;
use osgate_tests::{Io, Node, WAIT};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::{ADMIN, DRAIN, DRAIN_TIMEOUT, deny, policy_names};

per_store!(
    sigterm_ends_node_streams_with_reconnect_and_the_node_comes_back_to_a_new_control_plane,
    rolling_restarts_never_stretch_the_nodes_reconnect_backoff,
    health_says_not_serving_while_draining_and_the_listener_closes,
);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn health(cp: &ControlPlane) -> HealthClient<tonic::transport::Channel> {
    let crypto = CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls13).unwrap();
    let pin = SpkiPin::parse(&cp.key.pin).unwrap();
    let target = osgate_proto::connect::Target {
        address: cp.addr.to_string(),
        tls: crypto.pinned_client(vec![pin], None).unwrap(),
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
    };
    HealthClient::new(target.connect().await.unwrap())
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

fn status(response: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).unwrap()
}

/// A node of `cp` with one outbound listener to `peer`, in sync.
fn fleet_node(dir: &Path, cp: &ControlPlane, peer: SocketAddr) -> Node {
    let key = keygen(dir, "n1");
    let rev = cp.register_serving("n1", &key, &[], &[peer]);
    let section = cp.section(&key, &dir.join("n1.lkg"), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{section}"
    );
    let mut node = Node::start(dir, Io::Uring, "", &body);
    wait_applied(&mut node, rev);
    node
}

/// The control plane, asked to stop at `asked`, exits 0 before the drain timeout.
fn exits_cleanly_within_the_drain(cp: &mut ControlPlane, asked: Instant) {
    let exit = cp.process.wait_exit(WAIT);
    assert!(exit.success(), "exit status {exit}");
    let took = asked.elapsed();
    assert!(took < DRAIN_TIMEOUT, "took {took:?}");
}

fn applied(v: &serde_json::Value) -> bool {
    v["message"] == "applied control plane update"
}

fn sigterm_ends_node_streams_with_reconnect_and_the_node_comes_back_to_a_new_control_plane(
    store: Store,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, DRAIN);
    let server = Server::start(peers::echo);
    let mut node = fleet_node(dir.path(), &cp, server.addr);

    let asked = Instant::now();
    cp.process.signal("TERM");
    exits_cleanly_within_the_drain(&mut cp, asked);
    let messages: Vec<&str> = cp
        .process
        .log
        .iter()
        .filter_map(|v| v["message"].as_str())
        .collect();
    for expected in [
        "draining: health NOT_SERVING, node streams told to reconnect, in-flight requests finishing",
        "node stream ended: draining",
        "control plane stopped",
    ] {
        assert!(messages.contains(&expected), "{expected}: {messages:#?}");
    }
    assert!(!messages.contains(&"drain timeout: closing the connections still open"));

    // The node hears why, keeps its state, and reconnects to whatever serves the address.
    let ended = node.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("control plane stream ended"))
    });
    let why = ended["error"].as_str().unwrap();
    assert!(why.contains("control plane draining"), "{why}");
    let before = node.log().iter().filter(|v| applied(v)).count();
    let _again = ControlPlane::start_on(dir.path(), &url, &cp.addr.to_string(), DRAIN);
    let deadline = Instant::now() + WAIT;
    while node.log().iter().filter(|v| applied(v)).count() == before {
        node.process.receive(deadline);
    }
    assert_eq!(peers::call(node.addr("outbound[0]"), b"ping"), b"ping");
}

/// A stream that carried updates was healthy however it ended: each drain of a rolling
/// restart starts the node's backoff over (it once grew for good, to 30 s).
fn rolling_restarts_never_stretch_the_nodes_reconnect_backoff(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, DRAIN);
    let server = Server::start(peers::echo);
    let mut node = fleet_node(dir.path(), &cp, server.addr);
    for round in 0..3 {
        let seen = node.log().len();
        cp.process.signal("TERM");
        assert!(cp.process.wait_exit(WAIT).success());
        let ended = node.wait_after(seen, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("control plane stream ended"))
        });
        assert_eq!(ended["retry_within_ms"], 250, "round {round}: {ended}");
        let seen = node.log().len();
        cp = ControlPlane::start_on(dir.path(), &url, &cp.addr.to_string(), DRAIN);
        node.wait_after(seen, applied);
    }
}

fn health_says_not_serving_while_draining_and_the_listener_closes(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let mut cp = ControlPlane::start(dir.path(), &url, DRAIN);
    let rt = runtime();
    let mut client = rt.block_on(health(&cp));
    let fleet = "osgate.v1.Fleet";
    for service in ["", fleet] {
        let reply = rt.block_on(client.check(check(service))).unwrap();
        assert_eq!(status(reply.get_ref()), ServingStatus::Serving, "{service}");
    }
    assert_eq!(http_get(cp.metrics, "/ready"), (200, "ready\n".into()));
    // A watcher sees the change as it happens; its open stream is an in-flight request.
    let mut watch = rt
        .block_on(client.watch(check(fleet)))
        .unwrap()
        .into_inner();
    let first = rt.block_on(watch.message()).unwrap().unwrap();
    assert_eq!(status(&first), ServingStatus::Serving);

    cp.process.signal("TERM");
    let next = rt.block_on(watch.message()).unwrap().unwrap();
    assert_eq!(status(&next), ServingStatus::NotServing);
    let (code, body) = http_get(cp.metrics, "/ready");
    assert_eq!((code, body.as_str()), (503, "not ready: draining\n"));
    assert_eq!(http_get(cp.metrics, "/live").0, 200);
    osgate_tests::eventually("the gRPC listener refuses new connections", || {
        TcpStream::connect(cp.addr).is_err()
    });
    assert!(cp.process.is_running(), "exited with a request in flight");

    // The last in-flight request ends: the control plane exits at once, not at the timeout.
    drop(watch);
    drop(client);
    // The connection lives on this runtime's tasks.
    drop(rt);
    exits_cleanly_within_the_drain(&mut cp, Instant::now());
}

#[test]
fn a_request_still_open_at_the_drain_timeout_is_cut_and_the_exit_is_still_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "drain_timeout_ms = 300");
    let rt = runtime();
    let mut client = rt.block_on(health(&cp));
    // A watcher that never hangs up: the drain waits for it up to the timeout, no longer.
    let mut watch = rt.block_on(client.watch(check(""))).unwrap().into_inner();
    rt.block_on(watch.message()).unwrap().unwrap();
    let asked = Instant::now();
    cp.process.signal("TERM");
    let exit = cp.process.wait_exit(WAIT);
    assert!(exit.success(), "exit status {exit}");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "{:?}",
        asked.elapsed()
    );
    let cut = cp
        .process
        .log
        .iter()
        .find(|v| v["message"] == "drain timeout: closing the connections still open");
    assert_eq!(cut.unwrap()["drain_timeout_ms"], 300);
    assert!(
        cp.process
            .log
            .iter()
            .any(|v| v["message"] == "control plane stopped")
    );
}

#[test]
fn ready_is_503_and_health_not_serving_while_postgres_is_down_and_recover_after() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let url = pg.database("osgate");
    let mut cp = ControlPlane::start(dir.path(), &url, "");
    let rt = runtime();
    let mut client = rt.block_on(health(&cp));
    assert_eq!(http_get(cp.metrics, "/ready").0, 200);

    pg.stop();
    osgate_tests::eventually("/ready says the database is unreachable", || {
        http_get(cp.metrics, "/ready") == (503, "not ready: database unreachable\n".into())
    });
    cp.process
        .wait_for(|v| v["message"] == "database unreachable: gRPC health NOT_SERVING");
    let reply = rt.block_on(client.check(check(""))).unwrap();
    assert_eq!(status(reply.get_ref()), ServingStatus::NotServing);

    pg.start_again();
    osgate_tests::eventually("/ready is 200 again", || {
        http_get(cp.metrics, "/ready").0 == 200
    });
    cp.process
        .wait_for(|v| v["message"] == "database reachable again: gRPC health SERVING");
    let reply = rt.block_on(client.check(check("osgate.v1.Fleet"))).unwrap();
    assert_eq!(status(reply.get_ref()), ServingStatus::Serving);
}

/// A `psql` session holding `LOCK TABLE meta IN EXCLUSIVE MODE` until [`Locker::release`]:
/// every write of the control plane waits for it, reads go on.
struct Locker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

impl Locker {
    fn hold(pg: &Postgres) -> Locker {
        use std::io::{BufRead, BufReader, Write};
        let mut child = pg
            .psql("osgate")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "BEGIN; LOCK TABLE meta IN EXCLUSIVE MODE; \\echo locked"
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Locker { child, stdin }
    }

    fn release(mut self) {
        use std::io::Write;
        writeln!(self.stdin, "COMMIT;").unwrap();
        drop(self.stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

/// Whether a statement of the control plane waits for a lock (pg_stat_activity).
fn a_write_waits_for_the_lock(pg: &Postgres) -> bool {
    let out = pg
        .psql("osgate")
        .args(["-A", "-t", "-c"])
        .arg("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE meta%'")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

#[test]
fn a_write_in_flight_at_sigterm_completes_before_the_control_plane_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let url = pg.database("osgate");
    let mut cp = ControlPlane::start(dir.path(), &url, DRAIN);
    let locker = Locker::hold(&pg);
    let apply = {
        let (dir, cp_addr, pin) = (dir.path().to_owned(), cp.addr, cp.key.pin.clone());
        std::thread::spawn(move || {
            let file = dir.join("in-flight.toml");
            std::fs::write(&file, deny("in-flight")).unwrap();
            Command::new(bin("osgatectl"))
                .env_clear()
                .env("OSGATE_SERVER", cp_addr.to_string())
                .env("OSGATE_SERVER_PIN", pin)
                .env("OSGATE_TOKEN", ADMIN)
                .args(["-o", "json", "apply", "-f", file.to_str().unwrap()])
                .output()
                .unwrap()
        })
    };
    osgate_tests::eventually("the apply waits for the table lock", || {
        a_write_waits_for_the_lock(&pg)
    });

    cp.process.signal("TERM");
    cp.process.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))
    });
    assert_eq!(http_get(cp.metrics, "/ready").0, 503);
    assert!(cp.process.is_running(), "exited with a write in flight");
    locker.release();
    let out = apply.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cp.process.wait_exit(WAIT).success());

    let cp = ControlPlane::start(dir.path(), &url, "");
    assert_eq!(policy_names(&cp), ["in-flight"]);
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let db = dir.path().join("cp.db");
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut cp =
        ControlPlane::start_with_env(dir.path(), db.to_str().unwrap(), "127.0.0.1:0", "", &env);
    let receive = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(receive(), "READY=1\n");
    let mut seen = receive();
    while seen != "WATCHDOG=1\n" {
        seen = receive();
    }
    cp.process.signal("TERM");
    while seen != "STOPPING=1\n" {
        assert_eq!(seen, "WATCHDOG=1\n", "only pings before STOPPING");
        seen = receive();
    }
    assert!(cp.process.wait_exit(WAIT).success());
}
