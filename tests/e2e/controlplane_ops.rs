//! Operating the control plane (issue #9): SIGTERM drain with nodes connected, gRPC health
//! and `/ready`, systemd notifications, backup and restore, the snapshot before a schema
//! migration, `get policies -o toml` round trips, and `tlsa`. Real control-plane, node,
//! PostgreSQL, Python sqlite3 and OpenSSL processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::pin::SpkiPin;
use osgate_tests::controlplane::{ControlPlane, keygen, revision, wait_applied};
use osgate_tests::node::bin;
use osgate_tests::peers::{self, Server};
use osgate_tests::per_store;
use osgate_tests::postgres::{Postgres, Store, database};
use osgate_tests::process::http_get;
use osgate_tests::{Io, Node, WAIT};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

per_store!(
    sigterm_ends_node_streams_with_reconnect_and_the_node_comes_back_to_a_new_control_plane,
    health_says_not_serving_while_draining_and_the_listener_closes,
    get_policies_as_toml_applies_back_as_a_no_op,
);

/// The drain bound of these control planes: long enough to show that they exit sooner.
const DRAIN: &str = "drain_timeout_ms = 15000";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn health(cp: &ControlPlane) -> HealthClient<tonic::transport::Channel> {
    let crypto = CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls13).unwrap();
    let pin = SpkiPin::parse(&cp.key.pin).unwrap();
    let target = osgate_api::connect::Target {
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
    let exit = cp.process.wait_exit(WAIT);
    assert!(exit.success(), "exit status {exit}");
    assert!(
        asked.elapsed() < DRAIN_TIMEOUT,
        "took {:?}",
        asked.elapsed()
    );
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
    let asked = Instant::now();
    let exit = cp.process.wait_exit(WAIT);
    assert!(exit.success(), "exit status {exit}");
    assert!(
        asked.elapsed() < DRAIN_TIMEOUT,
        "took {:?}",
        asked.elapsed()
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
    let reply = rt.block_on(client.check(check(""))).unwrap();
    assert_eq!(status(reply.get_ref()), ServingStatus::NotServing);
    cp.process
        .wait_for(|v| v["message"] == "database unreachable: gRPC health NOT_SERVING");

    pg.start_again();
    osgate_tests::eventually("/ready is 200 again", || {
        http_get(cp.metrics, "/ready").0 == 200
    });
    let reply = rt.block_on(client.check(check("osgate.v1.Fleet"))).unwrap();
    assert_eq!(status(reply.get_ref()), ServingStatus::Serving);
    cp.process
        .wait_for(|v| v["message"] == "database reachable again: gRPC health SERVING");
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

/// `[[policy]]` tables using every field a policy file has.
const EVERY_FIELD: &str = r#"
[[policy]]
name = "fleet-in"
match = "127.0.0.1:7443"
level = "authenticate"
methods = ["fleet", "pinned"]
pins = ["sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
min_tls = "1.3"
report_only = true
requires = ["policy.v1"]

[[policy]]
name = "lab-fallback"
match = "10.0.0.0/8"
level = "opportunistic"
allow_cleartext_fallback = false

[[policy]]
name = "trial"
match = "*"
level = "encrypt"
"#;

fn get_policies_as_toml_applies_back_as_a_no_op(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let rev = revision(&cp.apply(dir.path(), EVERY_FIELD, &[]).json());
    let before = cp.admin_json(&["get", "policies"]);

    let toml = cp.ctl(Some(ADMIN), &["get", "policies", "-o", "toml"]);
    assert_eq!(toml.code, 0, "{}", toml.stderr);
    let again = cp.apply(dir.path(), &toml.stdout, &[]).json();
    assert_eq!(revision(&again), rev, "{again}");
    let changes = again["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{again}");
    assert!(
        changes.iter().all(|c| c["action"] == "unchanged"),
        "{again}"
    );
    assert_eq!(cp.admin_json(&["get", "policies"]), before);
    let twice = cp.ctl(Some(ADMIN), &["get", "policies", "-o", "toml"]);
    assert_eq!(twice.stdout, toml.stdout);

    let refused = cp.ctl(Some(ADMIN), &["get", "nodes", "-o", "toml"]);
    assert_eq!(refused.code, 64);
    assert!(
        refused.stderr.contains("-o toml is for `get policies`"),
        "{}",
        refused.stderr
    );
}

const ADMIN: &str = osgate_tests::controlplane::ADMIN_TOKEN;

fn deny(name: &str) -> String {
    format!("[[policy]]\nname = \"{name}\"\nmatch = \"192.0.2.1\"\nlevel = \"deny\"\n")
}

fn policy_names(cp: &ControlPlane) -> Vec<String> {
    let list = cp.admin_json(&["get", "policies"]);
    list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_sqlite_backup_taken_while_running_restores_once_the_control_plane_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    let kept = revision(&cp.apply(dir.path(), &deny("kept"), &[]).json());
    let backup = dir.path().join("backup.db");
    let out = cp.command(&["backup", backup.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("at revision {kept}")),
        "{}",
        out.stdout
    );
    let replaced = revision(&cp.apply(dir.path(), &deny("after-backup"), &[]).json());

    let refused = cp.command(&["restore", backup.to_str().unwrap()]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("in use by a running control plane")
            && refused.stderr.contains("stop it first"),
        "{}",
        refused.stderr
    );
    let exists = cp.command(&["backup", backup.to_str().unwrap()]);
    assert!(
        exists.stderr.contains("exists; give a new file"),
        "{}",
        exists.stderr
    );
    cp.process.signal("TERM");
    assert!(cp.process.wait_exit(WAIT).success());

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a database at all, just text").unwrap();
    let bad = cp.command(&["restore", garbage.to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("not an osgate control-plane database"),
        "{}",
        bad.stderr
    );

    let restored = cp.command(&["restore", backup.to_str().unwrap()]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(
        restored.stdout.contains("the replaced database is"),
        "{}",
        restored.stdout
    );
    let saved = restored
        .stdout
        .rsplit("the replaced database is ")
        .next()
        .unwrap()
        .trim();
    assert!(Path::new(saved).exists(), "{saved}");

    let cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    assert_eq!(policy_names(&cp), ["kept"]);
    // After every revision nodes may hold, so none goes back (CONFORMANCE K.64).
    assert_eq!(revision(&cp.nodes()), replaced + 1);
    let (who, action, detail) = cp.audit().pop().unwrap();
    assert_eq!(
        (who.as_str(), action.as_str()),
        ("osgate-controlplane restore", "store.restore")
    );
    assert!(
        detail.contains(&format!("(revision {kept}) over revision {replaced}")),
        "{detail}"
    );
}

#[test]
fn postgres_backup_and_restore_point_at_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(Store::Postgres, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    for command in ["backup", "restore"] {
        let out = cp.command(&[command, dir.path().join("x.dump").to_str().unwrap()]);
        assert_eq!(out.code, 64, "{command}");
        assert!(
            out.stderr.contains("pg_dump") && out.stderr.contains("pg_restore"),
            "{command}: {}",
            out.stderr
        );
    }
}

/// Runs `sql` (statements separated by `;`) on the SQLite file `db` with Python's sqlite3
/// module (CI installs python3); the first column of the last statement's rows, one a line.
fn sqlite3(db: &Path, sql: &str) -> String {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1])\n\
                  rows = []\n\
                  for s in sys.argv[2].split(';'):\n\
                  \x20   if s.strip(): rows = c.execute(s).fetchall()\n\
                  c.commit()\n\
                  print('\\n'.join(str(r[0]) for r in rows))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn an_sqlite_database_is_copied_before_its_schema_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    cp.apply(dir.path(), &deny("before-migration"), &[]).json();
    assert!(
        !cp.process
            .log
            .iter()
            .any(|v| v["message"] == "database copied before its schema migration"),
        "a new database has nothing to copy"
    );
    cp.process.signal("TERM");
    assert!(cp.process.wait_exit(WAIT).success());
    // Back to schema version 2, as an older control plane left it.
    let newest: u32 = sqlite3(&db, "SELECT MAX(version) FROM schema_version")
        .parse()
        .unwrap();
    assert_eq!(
        newest, 3,
        "this test downgrades migration 3; update it with the schema"
    );
    sqlite3(
        &db,
        "DELETE FROM schema_version WHERE version = 3; \
         ALTER TABLE enroll_tokens DROP COLUMN addresses; \
         ALTER TABLE enroll_tokens DROP COLUMN peers;",
    );

    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    let copied = cp
        .process
        .wait_for(|v| v["message"] == "database copied before its schema migration");
    assert_eq!(copied["from"], 2);
    assert_eq!(copied["to"], 3);
    let snapshot = Path::new(copied["snapshot"].as_str().unwrap()).to_owned();
    let name = snapshot.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("cp.db.pre-migration-v2-"), "{name}");
    assert_eq!(
        sqlite3(&snapshot, "SELECT MAX(version) FROM schema_version"),
        "2"
    );
    assert_eq!(
        sqlite3(
            &snapshot,
            "SELECT name FROM resources WHERE kind = 'policy'"
        ),
        "before-migration"
    );
    assert_eq!(sqlite3(&db, "SELECT MAX(version) FROM schema_version"), "3");
    assert_eq!(policy_names(&cp), ["before-migration"]);
}

/// The hex SHA-256 of the certificate's SPKI, as OpenSSL computes it.
fn openssl_spki_sha256(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn tlsa_prints_the_spki_sha256_of_the_current_and_next_key() {
    let dir = tempfile::tempdir().unwrap();
    let current = keygen(dir.path(), "controlplane");
    let next = keygen(dir.path(), "controlplane-next");
    let config = dir.path().join("cp.toml");
    let mut text = format!(
        "[controlplane]\nlisten = \"0.0.0.0:7400\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        current.cert.display(),
        current.key.display()
    );
    let tlsa = |config: &Path, extra: &[&str]| {
        let out = Command::new(bin("osgate-controlplane"))
            .args(["tlsa", "-c"])
            .arg(config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    std::fs::write(&config, &text).unwrap();
    let hash = openssl_spki_sha256(&current.cert);
    assert_eq!(
        tlsa(&config, &[]),
        format!("_7400._tcp.localhost. IN TLSA 3 1 1 {hash} ; current key\n")
    );
    text.push_str(&format!(
        "next_certificate = \"{}\"\nnext_private_key = \"{}\"\n",
        next.cert.display(),
        next.key.display()
    ));
    std::fs::write(&config, &text).unwrap();
    let next_hash = openssl_spki_sha256(&next.cert);
    assert_ne!(hash, next_hash);
    assert_eq!(
        tlsa(&config, &["--name", "cp.example.net."]),
        format!(
            "_7400._tcp.cp.example.net. IN TLSA 3 1 1 {hash} ; current key\n\
             _7400._tcp.cp.example.net. IN TLSA 3 1 1 {next_hash} ; next key\n"
        )
    );
}
