//! TLS-RPT (RFC 8460) reports: `osgate reports tlsrpt` from a node's state folder, and
//! `osgatectl reports tlsrpt` merged over real nodes reporting to a real control plane
//! (SQLite and PostgreSQL). Every report is checked against the RFC 8460 §4.4 schema with
//! python3-jsonschema. The fleet scenarios put sessions in the nodes' day files as a node
//! writes them (any counts, any node); the last scenario records one through a real SMTP
//! session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use osgate_core::tlsrpt::Day;
use osgate_tests::controlplane::{ADMIN_TOKEN, ControlPlane, VIEWER_TOKEN, keygen, wait_applied};
use osgate_tests::node::bin;
use osgate_tests::per_store;
use osgate_tests::postgres::{Store, database};
use osgate_tests::tlsrpt::{assert_valid, schema_errors, sts_policy, summary, write_day};
use osgate_tests::{Io, Node, eventually};

per_store!(
    two_nodes_report_and_osgatectl_prints_one_merged_report,
    a_node_reporting_its_day_again_replaces_its_counts,
);

const LISTENER: &str =
    "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:9\"\npolicy = \"opportunistic\"\n";

fn reports(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("osgate"))
        .args(["reports", "tlsrpt", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_node_prints_its_report_from_the_state_folder_and_it_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = Node::write_config(dir.path(), Io::Epoll, "", LISTENER);
    let state = dir.path().join("state");
    write_day(
        &state,
        "2026-11-30",
        &[
            (
                "example.net",
                vec![sts_policy(5, 2, "certificate-expired", "mx1.example.net")],
            ),
            (
                "other.example",
                vec![sts_policy(1, 0, "tlsa-invalid", "mx")],
            ),
        ],
    );
    let args = [
        "--domain",
        "EXAMPLE.net.",
        "--date",
        "2026-11-30",
        "--organization",
        "node.example",
    ];
    let (code, report, stderr) = reports(&config, &args);
    assert_eq!(code, 0, "{stderr}");
    assert_valid(&report);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(summary(&v), (5, 2));
    assert_eq!(v["organization-name"], "node.example");
    assert_eq!(v["contact-info"], "postmaster@node.example");
    assert_eq!(v["date-range"]["start-datetime"], "2026-11-30T00:00:00Z");
    let policy = &v["policies"][0]["policy"];
    assert_eq!(policy["policy-type"], "sts");
    assert_eq!(policy["policy-domain"], "example.net");
    assert_eq!(policy["policy-string"][1], "mode: enforce");
    let detail = &v["policies"][0]["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-expired");
    assert_eq!(detail["receiving-mx-hostname"], "mx1.example.net");
    assert_eq!(detail["failed-session-count"], 2);

    // A day without sessions is a report without policies, and still valid.
    let (code, empty, _) = reports(
        &config,
        &["--domain", "example.net", "--date", "2026-11-29"],
    );
    assert_eq!(code, 0);
    assert_valid(&empty);
    assert!(empty.contains("\"policies\": []"), "{empty}");

    let (code, _, stderr) = reports(
        &config,
        &["--domain", "example.net", "--date", "30.11.2026"],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("YYYY-MM-DD"), "{stderr}");
}

#[test]
fn the_schema_refuses_what_rfc_8460_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = Node::write_config(dir.path(), Io::Epoll, "", LISTENER);
    write_day(
        &dir.path().join("state"),
        "2026-11-30",
        &[(
            "example.net",
            vec![sts_policy(1, 1, "dane-required", "mx.example.net")],
        )],
    );
    let (_, report, _) = reports(
        &config,
        &["--domain", "example.net", "--date", "2026-11-30"],
    );
    assert_valid(&report);
    let broken = [
        ("\"dane-required\"", "\"dane-missing\""),
        ("\"sts\"", "\"mta-sts\""),
        ("\"192.0.2.25\"", "\"192.0.2.256\""),
        ("T00:00:00Z", " 00:00"),
        (
            "\"failed-session-count\": 1",
            "\"failed-session-count\": -1",
        ),
        ("\"report-id\"", "\"report_id\""),
    ];
    for (from, to) in broken {
        assert!(report.contains(from), "{from} not in {report}");
        let bad = report.replacen(from, to, 1);
        assert!(schema_errors(&bad).is_some(), "accepted with {to}: {bad}");
    }
}

fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Day::of_unix(now).to_string()
}

/// A registered node whose state folder holds `successes`/`failures` for example.net today.
fn reporting_node(dir: &Path, cp: &ControlPlane, name: &str, counts: (u64, u64)) -> Node {
    let key = keygen(dir, name);
    let rev = cp.register(name, &key, &[]);
    let state = dir.join(format!("{name}-state"));
    let policy = sts_policy(
        counts.0,
        counts.1,
        "certificate-not-trusted",
        "mx1.example.net",
    );
    write_day(&state, &today(), &[("example.net", vec![policy])]);
    let section = cp.section(&key, &dir.join(format!("{name}.lkg")), "");
    let extra = format!("state_dir = \"{}\"", state.display());
    let mut node = Node::start(dir, Io::Epoll, &extra, &format!("{LISTENER}\n{section}"));
    wait_applied(&mut node, rev);
    node
}

/// `osgatectl reports tlsrpt` for example.net today: (exit code, report, stderr).
fn fleet_report(cp: &ControlPlane, token: Option<&str>) -> (i32, String, String) {
    let date = today();
    let args = [
        "reports",
        "tlsrpt",
        "--domain",
        "example.net",
        "--date",
        &date,
    ];
    let out = cp.ctl(token, &args);
    (out.code, out.stdout, out.stderr)
}

fn counted(cp: &ControlPlane) -> (u64, u64) {
    let (code, report, stderr) = fleet_report(cp, Some(VIEWER_TOKEN));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    match v["policies"].as_array().unwrap().is_empty() {
        true => (0, 0),
        false => summary(&v),
    }
}

fn two_nodes_report_and_osgatectl_prints_one_merged_report(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let _n1 = reporting_node(dir.path(), &cp, "n1", (3, 1));
    let _n2 = reporting_node(dir.path(), &cp, "n2", (4, 2));
    eventually("both nodes' days are merged", || counted(&cp) == (7, 3));

    let (code, report, stderr) = fleet_report(&cp, Some(VIEWER_TOKEN));
    assert_eq!(code, 0);
    assert_valid(&report);
    assert!(stderr.contains("n1, n2"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let details = v["policies"][0]["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "the same detail of two nodes is one row");
    assert_eq!(details[0]["failed-session-count"], 3);
    assert_eq!(details[0]["result-type"], "certificate-not-trusted");

    let (code, _, stderr) = fleet_report(&cp, None);
    assert_ne!(code, 0, "no token, no report");
    assert!(stderr.contains("token"), "{stderr}");
    assert_eq!(fleet_report(&cp, Some(ADMIN_TOKEN)).0, 0);
}

fn a_node_reporting_its_day_again_replaces_its_counts(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(store, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    let n1 = reporting_node(dir.path(), &cp, "n1", (3, 1));
    let _n2 = reporting_node(dir.path(), &cp, "n2", (4, 2));
    eventually("both nodes' days are merged", || counted(&cp) == (7, 3));

    // n1 restarts and sends its whole day again, one session more: replaced, not added
    // (added, the fleet would count 3 + 4 successes from n1).
    let config = n1.config.clone();
    drop(n1);
    let state = dir.path().join("n1-state");
    let policy = sts_policy(4, 1, "certificate-not-trusted", "mx1.example.net");
    write_day(&state, &today(), &[("example.net", vec![policy])]);
    let _again = Node::run(config, None);
    eventually("n1's resent day replaced its first", || {
        counted(&cp) == (8, 3)
    });
    assert_valid(&fleet_report(&cp, Some(VIEWER_TOKEN)).1);
}

/// A destination without STARTTLS: greets, answers EHLO without it, then QUIT.
fn plain_smtp_server() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(b"220 mx.test ESMTP\r\n");
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let reply: &[u8] = match line.to_ascii_uppercase() {
                    l if l.starts_with("EHLO") => b"250-mx.test\r\n250 8BITMIME\r\n",
                    l if l.starts_with("QUIT") => b"221 2.0.0 bye\r\n",
                    _ => b"250 2.0.0 ok\r\n",
                };
                let _ = conn.write_all(reply);
                if reply.starts_with(b"221") {
                    break;
                }
                line.clear();
            }
        }
    });
    addr
}

/// The local MTA's side: greeting, EHLO, QUIT, each reply read whole.
fn smtp_client_session(addr: std::net::SocketAddr) {
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(osgate_tests::WAIT)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let reply = |reader: &mut BufReader<std::net::TcpStream>| loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line;
        }
    };
    assert!(reply(&mut reader).starts_with("220"));
    conn.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(reply(&mut reader).starts_with("250"));
    conn.write_all(b"QUIT\r\n").unwrap();
    assert!(reply(&mut reader).starts_with("221"));
}

/// A node relaying SMTP to a destination without STARTTLS, after one session through it.
fn node_after_a_session_without_starttls(dir: &Path, io: Io) -> (Node, serde_json::Value) {
    let server = plain_smtp_server();
    let body = format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{server}\"\nprotocol = \"smtp\"\npolicy = \"opportunistic\"\n"
    );
    let mut node = Node::start(dir, io, "", &body);
    smtp_client_session(node.addr("outbound[0]"));
    let record = node.outcome("outbound");
    (node, record)
}

#[test]
fn an_smtp_outcome_record_carries_its_rfc_8460_result_type() {
    for io in [Io::Epoll, Io::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let (_node, record) = node_after_a_session_without_starttls(dir.path(), io);
        assert_eq!(record["protocol"], "smtp", "{record}");
        assert_eq!(record["achieved"], "cleartext", "{record}");
        assert_eq!(record["reason"], "starttls-not-supported", "{record}");
        assert_eq!(
            record["tlsrpt_result"], "starttls-not-supported",
            "{record}"
        );
    }
}

#[test]
fn a_session_through_a_real_node_without_starttls_is_reported_starttls_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let (node, record) = node_after_a_session_without_starttls(dir.path(), Io::Epoll);
    assert_eq!(record["reason"], "starttls-not-supported", "{record}");

    let date = today();
    let args = ["--domain", "127.0.0.1", "--date", &date];
    let mut report = String::new();
    eventually("the node wrote the session to its day file", || {
        report = reports(&node.config, &args).1;
        report.contains("starttls-not-supported")
    });
    assert_valid(&report);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(summary(&v), (0, 1));
    assert_eq!(v["policies"][0]["policy"]["policy-type"], "no-policy-found");
    let detail = &v["policies"][0]["failure-details"][0];
    assert_eq!(detail["receiving-ip"], "127.0.0.1");
}
