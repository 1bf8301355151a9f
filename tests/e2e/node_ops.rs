//! Running a node as an operator's supervisor does: systemd's notify protocol, readiness,
//! a read-only config folder, the node's own keys (expiry, `osgate tlsa`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

use osgate_tests::certs::{self, pin_of};
use osgate_tests::controlplane::{ControlPlane, keygen, wait_applied};
use osgate_tests::node::{free_port, osgate, osgate_bin};
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::process::http_get;
use osgate_tests::{Io, Node, WAIT, eventually, per_driver};

per_driver!(
    systemd_hears_ready_reloading_watchdog_and_stopping,
    a_read_only_config_folder_serves_normally_with_state_in_the_state_folder,
    an_unwritable_state_folder_makes_the_node_not_ready_and_says_why,
    a_node_is_ready_only_once_it_knows_its_fleet_state,
    the_expiry_of_each_presented_certificate_is_a_gauge_and_an_expired_one_is_loud,
);

fn inbound_body(dir: &Path, backend: std::net::SocketAddr) -> String {
    let pem = certs::self_signed(dir, "node", "gw.test");
    format!(
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nbackend = \"{backend}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ncleartext = \"allow\"\n",
        pem.cert.display(),
        pem.key.display()
    )
}

/// The notify socket a service manager listens on, and the messages it got.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn new(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits for a message with the line `line`; returns the whole message.
    fn expect(&mut self, line: &str) -> String {
        loop {
            if let Some(i) = self.seen.iter().position(|m| m.lines().any(|l| l == line)) {
                return self.seen.remove(i);
            }
            let mut buf = [0u8; 4096];
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {line} in {WAIT:?} ({e}); got {:?}", self.seen));
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn systemd_hears_ready_reloading_watchdog_and_stopping(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let mut manager = Manager::new(&dir.path().join("notify.sock"));
    let (config, metrics) =
        Node::write_config(dir.path(), io, "", &inbound_body(dir.path(), backend.addr));
    let mut command = Node::command(&config);
    command
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "300000");
    let mut node = Node::launch(command, config, Some(metrics));
    manager.expect("READY=1");
    manager.expect("WATCHDOG=1");
    manager.expect("WATCHDOG=1");

    node.signal("HUP");
    let reloading = manager.expect("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    manager.expect("READY=1");

    node.signal("TERM");
    manager.expect("STOPPING=1");
    assert_eq!(node.exit_code(), Some(0));
}

/// Runs `osgate run` with `folder` mounted read-only in a mount namespace of its own, as a
/// ConfigMap or `ProtectSystem=strict` leaves `/etc`.
fn read_only_command(folder: &Path, config: &Path) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind -o ro "$1" "$1" && exec "$2" run -c "$3" --log-format json"#)
        .arg("sh")
        .arg(folder)
        .arg(osgate_bin())
        .arg(config)
        .env("OSGATE_LOG", "info");
    command
}

fn a_read_only_config_folder_serves_normally_with_state_in_the_state_folder(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let (etc, state) = (dir.path().join("etc"), dir.path().join("state"));
    std::fs::create_dir(&etc).unwrap();
    let key = certs::self_signed(dir.path(), "peer", "127.0.0.1");
    let server = SServer::start(&key, &[]);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n",
        server.addr
    );
    let extra = format!("state_dir = \"{}\"", state.display());
    let (config, metrics) = Node::write_config(&etc, io, &extra, &body);
    let mut node = Node::launch(read_only_command(&etc, &config), config, Some(metrics));

    server.send_line(node.addr("outbound[0]"), "first");
    assert_eq!(
        node.outcome("outbound")["reason"],
        "certificate-not-trusted"
    );
    server.send_line(node.addr("outbound[0]"), "second");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["method"].as_str()),
        (Some("authenticated"), Some("tofu")),
        "{out}"
    );
    assert!(state.join(".initialized").exists() && state.join("pins").exists());
    let (code, listed) = {
        let output = Command::new(osgate_bin())
            .args(["pins", "--store"])
            .arg(state.join("pins"))
            .arg("list")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(listed.contains(&pin_of(&key)), "{listed}");
    assert_eq!(http_get(metrics, "/ready"), (200, "ready\n".to_owned()));
    assert!(
        !node.log().iter().any(|v| v["level"] == "ERROR"),
        "{:#?}",
        node.log()
    );
}

fn an_unwritable_state_folder_makes_the_node_not_ready_and_says_why(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("state")).unwrap();
    let backend = Server::start(peers::echo);
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\npolicy = \"cleartext\"\n",
        backend.addr
    );
    let (config, metrics) = Node::write_config(&etc, io, "", &body);
    let mut node = Node::launch(read_only_command(&etc, &config), config, Some(metrics));
    let (status, why) = http_get(metrics, "/ready");
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("cannot be written") && why.contains("Read-only file system"),
        "{why}"
    );
    node.wait_for(|v| {
        v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("state folder unusable"))
    });
    // Traffic that needs no state still flows; readiness keeps supervisors informed.
    assert_eq!(peers::call(node.addr("outbound[0]"), b"x"), b"x");
    assert_eq!(http_get(metrics, "/live").0, 200);
}

fn a_node_is_ready_only_once_it_knows_its_fleet_state(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("cp.db").display().to_string();
    let listen = free_port().to_string();
    let mut cp = ControlPlane::start_on(dir.path(), &url, &listen, "");
    let key = keygen(dir.path(), "n1");
    let backend = Server::start(peers::echo);
    let rev = cp.register_serving("n1", &key, &[], &[backend.addr]);
    cp.process.kill9();
    let section = cp.section(&key, &dir.path().join("n1.lkg"), "");
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\n\n{section}",
        backend.addr
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    let (status, why) = http_get(node.metrics.unwrap(), "/ready");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("no control-plane state yet"), "{why}");

    cp.restart();
    wait_applied(&mut node, rev);
    eventually("the node is ready", || {
        http_get(node.metrics.unwrap(), "/ready").0 == 200
    });
}

/// A certificate for `name` valid until 2 January 2030 (or expired in 2021).
fn dated(dir: &Path, stem: &str, expired: bool) -> certs::Pem {
    let ca = certs::Ca::new(dir);
    match expired {
        true => ca.leaf(dir, stem, "gw.test", true),
        false => {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["gw.test".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(2030, 1, 2);
            let cert = params.self_signed(&key).unwrap();
            let pem = certs::Pem {
                cert: dir.join(format!("{stem}.crt")),
                key: dir.join(format!("{stem}.key")),
            };
            std::fs::write(&pem.cert, cert.pem()).unwrap();
            std::fs::write(&pem.key, key.serialize_pem()).unwrap();
            pem
        }
    }
}

fn the_expiry_of_each_presented_certificate_is_a_gauge_and_an_expired_one_is_loud(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Server::start(peers::echo);
    let (valid, expired) = (
        dated(dir.path(), "valid", false),
        dated(dir.path(), "old", true),
    );
    let (valid_at, expired_at) = (free_port(), free_port());
    let listener = |pem: &certs::Pem, at| {
        format!(
            "[[inbound]]\nlisten = \"{at}\"\nbackend = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            backend.addr,
            pem.cert.display(),
            pem.key.display()
        )
    };
    let body = format!(
        "{}{}",
        listener(&valid, valid_at),
        listener(&expired, expired_at)
    );
    let mut node = Node::start(dir.path(), io, "", &body);
    // 2030-01-02T00:00:00Z and 2021-01-01T00:00:00Z.
    let expiry = |at: std::net::SocketAddr| {
        let label = at.to_string();
        node.metric(
            "osgate_certificate_expiry_timestamp_seconds",
            &[("listener", &label)],
        )
    };
    assert_eq!(
        (expiry(valid_at), expiry(expired_at)),
        (1_893_542_400.0, 1_609_459_200.0)
    );
    let loud = node.wait_for(|v| {
        v["level"] == "ERROR" && v["message"].as_str().is_some_and(|m| m.contains("EXPIRED"))
    });
    assert_eq!(
        loud["listener"].as_str(),
        Some(expired_at.to_string().as_str()),
        "{loud}"
    );
}

#[test]
fn osgate_tlsa_prints_the_current_and_the_next_key_for_each_inbound_port() {
    let dir = tempfile::tempdir().unwrap();
    let current = certs::self_signed(dir.path(), "node", "gw.example.net");
    let next = certs::self_signed(dir.path(), "next", "gw.example.net");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[inbound]]\nlisten = \"0.0.0.0:7443\"\nbackend = \"127.0.0.1:80\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nnext_certificate = \"{}\"\nnext_private_key = \"{}\"\n",
            current.cert.display(),
            current.key.display(),
            next.cert.display(),
            next.key.display()
        ),
    )
    .unwrap();
    let output = Command::new(osgate_bin())
        .args(["tlsa", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let records: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
    assert_eq!(
        records,
        [
            format!(
                "_7443._tcp.gw.example.net. IN TLSA 3 1 1 {}",
                certs::openssl_spki_sha256(&current.cert)
            ),
            format!(
                "_7443._tcp.gw.example.net. IN TLSA 3 1 1 {}",
                certs::openssl_spki_sha256(&next.cert)
            ),
        ],
        "{text}"
    );
    let named = Command::new(osgate_bin())
        .args(["tlsa", "--name", "mx.example.org", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&named.stdout)
            .contains("_7443._tcp.mx.example.org. IN TLSA 3 1 1 ")
    );
    let (code, err) = osgate(&[
        "tlsa",
        "-c",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("missing.toml: -: cannot read the file"),
        "{err}"
    );
}
