//! MTA-STS (RFC 8461) end to end: `_mta-sts` TXT records in the signed nsd testbed, the
//! policy served by `openssl s_server -WWW` (or `-HTTP`, for hand-written responses) with a
//! certificate from a test CA, and `osgate mta-sts` finding the policy the node would apply.
//!
//! The command runs on a tokio current-thread runtime of its own, not on the I/O drivers;
//! the outbound SMTP suites exercise the same code under both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use osgate_tests::certs::{self, Ca, Pem};
use osgate_tests::dns::{Testbed, Zones};
use osgate_tests::node::{free_port, osgate_bin};
use osgate_tests::openssl::SServer;
use osgate_tests::{Io, Node, per_driver};

const DOMAIN: &str = "d.test";
const HOST: &str = "mta-sts.d.test";

fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut out = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        out.push_str(&format!("mx: {m}\r\n"));
    }
    out + &format!("max_age: {max_age}\r\n")
}

/// `d.test`'s records in the signed zone: the TXT record(s) and the policy host's address.
fn zones(txt: &[&str]) -> Zones {
    let mut secure: Vec<String> = txt
        .iter()
        .map(|t| format!("_mta-sts.d IN TXT \"{t}\""))
        .collect();
    secure.push("mta-sts.d IN A 127.0.0.1".into());
    Zones {
        secure,
        ..Zones::default()
    }
}

/// A [`Case`] and a testbed publishing `txt` at `_mta-sts.d.test`.
fn case_with_record(txt: &[&str]) -> (Case, Testbed) {
    let case = Case::new();
    let dns = Testbed::start(case.path(), &zones(txt));
    (case, dns)
}

/// A test folder with a CA that the node trusts (`[node] ca_bundle`).
struct Case {
    dir: tempfile::TempDir,
    ca: Ca,
    /// The policy host's port (the command's `--port`).
    port: std::net::SocketAddr,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        Self {
            dir,
            ca,
            port: free_port(),
        }
    }

    /// The policy host serving an `enforce` policy for `mx` under the CA's leaf.
    fn serve_enforce(&self, mx: &[&str]) -> SServer {
        self.serve(&self.leaf(), &policy("enforce", mx, 86400))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn leaf(&self) -> Pem {
        self.ca.leaf(self.path(), "mta-sts", HOST, false)
    }

    /// `s_server -WWW` serving `body` as `/.well-known/mta-sts.txt` (text/plain).
    fn serve(&self, pem: &Pem, body: &str) -> SServer {
        self.write_file("mta-sts.txt", body);
        SServer::start_in(&self.www(), self.port, pem, &["-WWW"])
    }

    /// `s_server -HTTP`: the file is the whole HTTP response.
    fn serve_raw(&self, response: &str) -> SServer {
        self.write_file("mta-sts.txt", response);
        SServer::start_in(&self.www(), self.port, &self.leaf(), &["-HTTP"])
    }

    fn www(&self) -> PathBuf {
        self.path().join("www")
    }

    fn write_file(&self, name: &str, body: &str) {
        let folder = self.www().join(".well-known");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(name), body).unwrap();
    }

    /// Runs `osgate mta-sts d.test` against `dns`: (exit code, stdout, stderr).
    fn lookup(&self, dns: &Testbed) -> (i32, String, String) {
        self.lookup_many(dns, 1)
    }

    /// `osgate mta-sts d.test d.test ...` (`n` times): concurrent lookups in one process.
    fn lookup_many(&self, dns: &Testbed, n: usize) -> (i32, String, String) {
        let config = self.path().join("node.toml");
        let text = format!(
            "[node]\nstate_dir = \"state\"\nca_bundle = \"{}\"\n\n[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:9\"\n\n{}",
            self.ca.cert.display(),
            dns.config()
        );
        std::fs::write(&config, text).unwrap();
        let out = Command::new(osgate_bin())
            .arg("mta-sts")
            .args(vec![DOMAIN; n])
            .arg("--config")
            .arg(&config)
            .args(["--port", &self.port.port().to_string()])
            .env("OSGATE_LOG", "osgate=debug")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cache_file(&self) -> PathBuf {
        self.path().join("state/mta-sts").join(DOMAIN)
    }
}

/// The value of `key: ` in the command's report.
fn field<'a>(report: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    report
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[track_caller]
fn assert_policy(report: &(i32, String, String), mode: &str, id: &str, mx: &[&str], source: &str) {
    let (code, out, err) = report;
    assert_eq!(*code, 0, "{out}\n{err}");
    assert_eq!(field(out, "policy"), [mode], "{out}\n{err}");
    assert_eq!(field(out, "id"), [id], "{out}");
    assert_eq!(field(out, "mx"), mx, "{out}");
    assert_eq!(field(out, "source"), [source], "{out}\n{err}");
}

#[track_caller]
fn assert_failed(report: &(i32, String, String), reason: &str) {
    let (code, out, err) = report;
    assert_eq!(field(out, "policy"), ["failed"], "{out}\n{err}");
    assert_eq!(field(out, "reason"), [reason], "{out}\n{err}");
    assert_eq!(*code, 1, "{out}");
}

#[test]
fn an_enforce_policy_is_fetched_then_served_from_the_cache() {
    let (case, dns) = case_with_record(&["v=STSv1; id=20260101;"]);
    let server = case.serve_enforce(&["mx1.d.test", "*.mx.d.test"]);
    let first = case.lookup(&dns);
    assert_policy(
        &first,
        "enforce",
        "20260101",
        &["mx1.d.test", "*.mx.d.test"],
        "fresh",
    );
    assert_eq!(field(&first.1, "max_age"), ["86400"]);
    let cached = std::fs::read_to_string(case.cache_file()).unwrap();
    assert!(
        cached.contains("id=20260101\n") && cached.contains("mx: *.mx.d.test\n"),
        "{cached}"
    );
    // Same id: the policy comes from the cache, even with the policy host gone.
    drop(server);
    let again = case.lookup(&dns);
    assert_policy(
        &again,
        "enforce",
        "20260101",
        &["mx1.d.test", "*.mx.d.test"],
        "cached",
    );
}

#[test]
fn a_testing_policy_is_reported_as_testing() {
    let (case, dns) = case_with_record(&["v=STSv1; id=t1"]);
    let _server = case.serve(
        &case.leaf(),
        &policy("testing", &["mx.d.test"], 3600).replace("\r\n", "\n"),
    );
    assert_policy(&case.lookup(&dns), "testing", "t1", &["mx.d.test"], "fresh");
}

#[test]
fn a_changed_id_refetches_the_policy() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let pem = case.leaf();
    let _server = case.serve(&pem, &policy("enforce", &["old.d.test"], 86400));
    assert_policy(&case.lookup(&dns), "enforce", "1", &["old.d.test"], "fresh");
    // The domain publishes a new policy; until its id changes the cached one applies.
    case.write_file("mta-sts.txt", &policy("enforce", &["new.d.test"], 86400));
    assert_policy(
        &case.lookup(&dns),
        "enforce",
        "1",
        &["old.d.test"],
        "cached",
    );
    drop(dns);
    let dns = Testbed::start(&case.path().join("v2"), &zones(&["v=STSv1; id=2;"]));
    assert_policy(&case.lookup(&dns), "enforce", "2", &["new.d.test"], "fresh");
    let cached = std::fs::read_to_string(case.cache_file()).unwrap();
    assert!(
        cached.contains("id=2\n") && cached.contains("mx: new.d.test\n"),
        "{cached}"
    );
}

#[test]
fn an_unreachable_policy_host_without_a_cached_policy_is_a_fetch_error() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    // Nothing listens on the policy host's port.
    let report = case.lookup(&dns);
    assert_failed(&report, "sts-policy-fetch-error");
    assert!(!case.cache_file().exists());
}

#[test]
fn an_unreachable_policy_host_keeps_the_cached_policy() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let server = case.serve_enforce(&["mx.d.test"]);
    assert_policy(&case.lookup(&dns), "enforce", "1", &["mx.d.test"], "fresh");
    drop(server);
    drop(dns);
    // A new id asks for a refetch, which fails: RFC 8461 §3.3, the cached policy applies.
    let dns = Testbed::start(&case.path().join("v2"), &zones(&["v=STSv1; id=2;"]));
    let report = case.lookup(&dns);
    assert_policy(
        &report,
        "enforce",
        "1",
        &["mx.d.test"],
        "cached-after-failure",
    );
    assert_eq!(field(&report.1, "reason"), ["sts-policy-fetch-error"]);
    drop(dns);
    // No TXT record at all does not remove it either (§3.1).
    let dns = Testbed::start(&case.path().join("v3"), &zones(&[]));
    assert_policy(&case.lookup(&dns), "enforce", "1", &["mx.d.test"], "cached");
}

#[test]
fn a_policy_host_whose_certificate_the_ca_did_not_sign_is_webpki_invalid() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let rogue = certs::self_signed(case.path(), "rogue", HOST);
    let _server = case.serve(&rogue, &policy("enforce", &["mx.d.test"], 86400));
    assert_failed(&case.lookup(&dns), "sts-webpki-invalid");
    // A CA-signed certificate for another name is no better.
    drop(_server);
    let other = case.ca.leaf(case.path(), "other", "mta-sts.e.test", false);
    let _server = case.serve(&other, &policy("enforce", &["mx.d.test"], 86400));
    assert_failed(&case.lookup(&dns), "sts-webpki-invalid");
    assert!(!case.cache_file().exists());
}

#[test]
fn a_malformed_policy_is_invalid_and_not_cached() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let _server = case.serve(
        &case.leaf(),
        "version: STSv1\nmode: enforce\nmx: mx.d.test\n",
    );
    let report = case.lookup(&dns);
    assert_failed(&report, "sts-policy-invalid");
    assert!(report.2.contains("no max_age"), "{}", report.2);
    assert!(!case.cache_file().exists());
}

#[test]
fn a_redirect_is_not_followed() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    // A valid policy waits at the redirect's target; following it would find one.
    case.write_file(
        "real.txt",
        &format!(
            "HTTP/1.0 200 ok\r\nContent-Type: text/plain\r\n\r\n{}",
            policy("enforce", &["mx.d.test"], 86400)
        ),
    );
    let _server = case.serve_raw(&format!(
        "HTTP/1.0 301 Moved Permanently\r\nLocation: https://{HOST}/.well-known/real.txt\r\nContent-Type: text/plain\r\n\r\n"
    ));
    let report = case.lookup(&dns);
    assert_failed(&report, "sts-policy-fetch-error");
    assert!(report.2.contains("redirect"), "{}", report.2);
}

#[test]
fn a_policy_served_as_html_is_invalid() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let _server = case.serve_raw(&format!(
        "HTTP/1.0 200 ok\r\nContent-Type: text/html\r\n\r\n{}",
        policy("enforce", &["mx.d.test"], 86400)
    ));
    assert_failed(&case.lookup(&dns), "sts-policy-invalid");
}

#[test]
fn an_over_long_policy_is_refused() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    // Valid but for its size: unknown fields are ignored, the 64 KiB limit is not.
    let mut body = policy("enforce", &["mx.d.test"], 86400);
    while body.len() <= 70 * 1024 {
        body.push_str("padding: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
    }
    let _server = case.serve(&case.leaf(), &body);
    let report = case.lookup(&dns);
    assert_failed(&report, "sts-policy-fetch-error");
    assert!(report.2.contains("64 KiB"), "{}", report.2);
}

#[test]
fn no_record_or_two_records_mean_no_policy() {
    for txt in [
        &[][..],
        &["v=STSv1; id=1;", "v=STSv1; id=2;"][..],
        &["v=spf1 -all"][..],
    ] {
        let (case, dns) = case_with_record(txt);
        // A policy host that would answer, were it asked.
        let _server = case.serve_enforce(&["mx.d.test"]);
        let (code, out, err) = case.lookup(&dns);
        assert_eq!(
            (code, field(&out, "policy")),
            (0, vec!["none"]),
            "{txt:?}\n{out}\n{err}"
        );
    }
}

/// Counts the connections to `target` it forwards (a TCP relay in front of the policy host).
struct Counter {
    addr: std::net::SocketAddr,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counter {
    fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                seen.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { addr, count }
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn concurrent_lookups_of_one_domain_fetch_once() {
    let mut case = Case::new();
    let dns = Testbed::start(case.path(), &zones(&["v=STSv1; id=1;"]));
    let _server = case.serve_enforce(&["mx.d.test"]);
    let counter = Counter::start(case.port);
    case.port = counter.addr;
    let (code, out, err) = case.lookup_many(&dns, 8);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(field(&out, "policy"), ["enforce"; 8], "{out}");
    let mut sources = field(&out, "source");
    sources.sort_unstable();
    assert_eq!(sources, [&["cached"; 7][..], &["fresh"]].concat(), "{out}");
    assert_eq!(counter.count(), 1, "one fetch for eight lookups");
}

#[test]
fn an_unreadable_cache_file_is_ignored_and_replaced() {
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let _server = case.serve_enforce(&["mx.d.test"]);
    std::fs::create_dir_all(case.cache_file().parent().unwrap()).unwrap();
    std::fs::write(
        case.cache_file(),
        "osgate-mta-sts 1\nid=1\nfetched_at=oops\n",
    )
    .unwrap();
    let report = case.lookup(&dns);
    assert_policy(&report, "enforce", "1", &["mx.d.test"], "fresh");
    assert!(
        report.2.contains("unreadable MTA-STS cache file"),
        "{}",
        report.2
    );
    let cached = std::fs::read_to_string(case.cache_file()).unwrap();
    assert!(cached.contains("mx: mx.d.test\n"), "{cached}");
}

#[test]
fn the_cache_written_by_root_belongs_to_the_state_folders_owner() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to hand files to another user");
        return;
    }
    let (case, dns) = case_with_record(&["v=STSv1; id=1;"]);
    let _server = case.serve_enforce(&["mx.d.test"]);
    let state = case.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    assert_policy(&case.lookup(&dns), "enforce", "1", &["mx.d.test"], "fresh");
    for path in [case.cache_file().parent().unwrap(), &case.cache_file()] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{}",
            path.display()
        );
    }
}

// ---- MTA-STS on the outbound SMTP path: osgate outbound by MX → osgate inbound (STARTTLS,
// a certificate for the MX host) → a plain SMTP backend. Both I/O drivers.

per_driver!(
    enforce_with_a_matching_mx_is_authenticated_pkix,
    enforce_refuses_an_mx_the_policy_does_not_name,
    enforce_refuses_an_mx_whose_certificate_the_ca_did_not_sign,
    testing_reports_and_delivers_to_an_mx_the_policy_does_not_name,
    a_secure_tlsa_wins_over_an_enforce_policy_that_names_another_mx,
);

/// The local MTA's side: greeting, EHLO, MAIL FROM, QUIT. Returns the MAIL FROM reply.
fn local_mta(addr: std::net::SocketAddr) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(osgate_tests::WAIT)).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut reply = || {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return last;
            }
            last.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return last;
            }
        }
    };
    assert!(reply().starts_with("220"));
    out.write_all(b"EHLO local.test\r\n").unwrap();
    assert!(reply().starts_with("250"));
    out.write_all(b"MAIL FROM:<a@local.test>\r\n").unwrap();
    let mail = reply();
    out.write_all(b"QUIT\r\n").unwrap();
    let _ = reply();
    mail
}

/// A mail case's parts; the servers stop on drop.
struct Mail {
    node: Node,
    backend: osgate_tests::peers::Server<Vec<String>>,
    _case: Case,
    _policy_host: SServer,
    _dns: Testbed,
}

/// `d.test` with MX `mx.d.test` (signed; no TLSA, so DANE does not apply), `policy` at its
/// policy host, and one node: outbound by MX, inbound on the MX port with `mx_cert`.
fn mail_case(io: Io, policy: &str, mx_cert: impl FnOnce(&Case) -> Pem) -> Mail {
    mail_case_with(io, policy, mx_cert, false)
}

/// [`mail_case`]; `tlsa`: a DANE-EE record for the MX host's key at `_<port>._tcp.mx.d.test`.
fn mail_case_with(io: Io, policy: &str, mx_cert: impl FnOnce(&Case) -> Pem, tlsa: bool) -> Mail {
    let case = Case::new();
    let pem = mx_cert(&case);
    let mx = free_port();
    let mut zone = zones(&["v=STSv1; id=1;"]);
    zone.secure
        .extend(["d IN MX 10 mx.d".into(), "mx.d IN A 127.0.0.1".into()]);
    if tlsa {
        let digest = osgate_tests::dns::spki_sha256_hex(&pem);
        let record = format!("_{}._tcp.mx.d IN TLSA 3 1 1 {digest}", mx.port());
        zone.secure.push(record);
    }
    let dns = Testbed::start(case.path(), &zone);
    let server = case.serve(&case.leaf(), policy);
    let backend = osgate_tests::peers::Server::start(osgate_tests::smtp::plain_backend);
    let body = format!(
        "[smtp]\nhelo_name = \"relay.local.test\"\nmta_sts_port = {sts}\n\n\
         [[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"mx:{DOMAIN}:{port}\"\nprotocol = \"smtp\"\npolicy = \"opportunistic\"\n\n\
         [[inbound]]\nlisten = \"{mx}\"\nbackend = \"{backend}\"\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\nprotocol = \"smtp\"\n\n{dns}",
        sts = case.port.port(),
        port = mx.port(),
        backend = backend.addr,
        cert = pem.cert.display(),
        key = pem.key.display(),
        dns = dns.config(),
    );
    let node_extra = format!("ca_bundle = \"{}\"\n", case.ca.cert.display());
    let node = Node::start(case.path(), io, &node_extra, &body);
    Mail {
        node,
        backend,
        _case: case,
        _policy_host: server,
        _dns: dns,
    }
}

fn mx_leaf(case: &Case) -> Pem {
    case.ca.leaf(case.path(), "mx", "mx.d.test", false)
}

/// The record's `sts` evidence as interface.md writes it, `<domain>:<id>:<mode>` (the node
/// currently prefixes the policy rule's `sts:`; either form is accepted here).
fn sts_of(record: &serde_json::Value) -> Option<&str> {
    let sts = record["sts"].as_str()?;
    Some(sts.strip_prefix("sts:").unwrap_or(sts))
}

#[track_caller]
fn assert_record(
    record: &serde_json::Value,
    achieved: &str,
    method: &str,
    reason: &str,
    sts: &str,
) {
    assert_eq!(
        (
            record["achieved"].as_str(),
            record["method"].as_str(),
            record["reason"].as_str(),
            sts_of(record),
            record["mx"].as_str(),
        ),
        (
            Some(achieved),
            Some(method),
            Some(reason),
            Some(sts),
            Some("mx.d.test")
        ),
        "{record}"
    );
}

/// The local MTA's message through `mail`'s outbound: its reply starts with `reply`; the
/// outbound record.
fn send(mail: &mut Mail, reply: &str) -> serde_json::Value {
    let got = local_mta(mail.node.addr("outbound[0]"));
    assert!(got.starts_with(reply), "{got}");
    mail.node.outcome("outbound")
}

/// The local MTA's MAIL FROM reached the MX host.
fn assert_mail_reached_the_mx(mail: &Mail) {
    let seen = mail.backend.result();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MAIL FROM:<a@local.test>")),
        "{seen:?}"
    );
}

fn enforce_with_a_matching_mx_is_authenticated_pkix(io: Io) {
    let mut mail = mail_case(io, &policy("enforce", &["mx.d.test"], 86400), mx_leaf);
    let record = send(&mut mail, "250");
    assert_record(&record, "authenticated", "pkix", "none", "d.test:1:enforce");
    assert_mail_reached_the_mx(&mail);
}

fn enforce_refuses_an_mx_the_policy_does_not_name(io: Io) {
    let mut mail = mail_case(io, &policy("enforce", &["*.other.d.test"], 86400), mx_leaf);
    let record = send(&mut mail, "451 4.7.5");
    assert_eq!(
        record["reason"].as_str(),
        Some("sts-mx-mismatch"),
        "{record}"
    );
    assert_ne!(record["achieved"].as_str(), Some("cleartext"), "{record}");
    assert!(
        mail.backend.try_result().is_none(),
        "nothing reached the MX host"
    );
}

fn enforce_refuses_an_mx_whose_certificate_the_ca_did_not_sign(io: Io) {
    let mut mail = mail_case(io, &policy("enforce", &["mx.d.test"], 86400), |case| {
        certs::self_signed(case.path(), "mx", "mx.d.test")
    });
    let record = send(&mut mail, "451 4.7.5");
    assert_eq!(
        record["reason"].as_str(),
        Some("certificate-not-trusted"),
        "{record}"
    );
    assert_eq!(sts_of(&record), Some("d.test:1:enforce"), "{record}");
    // The inbound side saw a handshake that failed: no MAIL FROM reached the backend.
    if let Some(seen) = mail.backend.try_result() {
        assert!(!seen.iter().any(|l| l.starts_with("MAIL")), "{seen:?}");
    }
}

fn testing_reports_and_delivers_to_an_mx_the_policy_does_not_name(io: Io) {
    let mut mail = mail_case(io, &policy("testing", &["*.other.d.test"], 86400), mx_leaf);
    let record = send(&mut mail, "250");
    assert_eq!(sts_of(&record), Some("d.test:1:testing"), "{record}");
    assert_eq!(
        record["report_only_reason"].as_str(),
        Some("sts-mx-mismatch"),
        "{record}"
    );
    assert_ne!(record["achieved"].as_str(), Some("cleartext"), "{record}");
    assert_mail_reached_the_mx(&mail);
}

fn a_secure_tlsa_wins_over_an_enforce_policy_that_names_another_mx(io: Io) {
    // RFC 8461 §2: DANE and MTA-STS overlap, DANE decides where a secure TLSA applies.
    let policy = policy("enforce", &["*.other.d.test"], 86400);
    let mut mail = mail_case_with(io, &policy, mx_leaf, true);
    let record = send(&mut mail, "250");
    assert_eq!(
        (record["achieved"].as_str(), record["method"].as_str()),
        (Some("authenticated"), Some("dane")),
        "{record}"
    );
    assert_mail_reached_the_mx(&mail);
}
