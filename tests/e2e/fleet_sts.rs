//! MTA-STS policies in the fleet cache (issue 11): the control plane fetches the policy of a
//! mail domain its node serves (HTTPS with PKIX against a test CA, the `_mta-sts` TXT record
//! in the signed nsd testbed) and distributes it as StsPolicy; a node that cannot fetch the
//! policy itself is held to it on its first message. Without the control plane the same node
//! sends under no policy. A StsPolicy needing a feature the node lacks is NACKed.
//! Real processes: control plane, node (both I/O drivers), nsd, `openssl s_server`, swaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use osgate_proto::pb::{self, resource::Kind, watch_request::Msg};
use osgate_tests::certs::{Ca, Pem};
use osgate_tests::controlplane::{ControlPlane, keygen, revision, wait_applied};
use osgate_tests::dns::{Testbed, Zones};
use osgate_tests::hostile_cp::HostileControlPlane;
use osgate_tests::node::free_port;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::Server;
use osgate_tests::postgres::{Store, database};
use osgate_tests::{Io, Node, per_driver, per_store, smtp};
use prost::Message;
use serde_json::Value;

const DOMAIN: &str = "d.test";
const HOST: &str = "mta-sts.d.test";
/// The control plane speaks for SMTP peers (port 25) that are names.
const PEER: &str = "d.test:25";
/// The TXT record's id.
const ID: &str = "20261201";

per_store!(
    the_control_plane_fetches_the_policy_of_a_domain_without_an_address_and_get_capabilities_shows_it,
    get_capabilities_shows_the_policy_next_to_the_dane_result_of_a_domain_with_an_address,
);

mod by_driver {
    use super::*;
    per_driver!(
        a_node_that_cannot_fetch_the_policy_is_held_to_the_fleets_and_without_it_to_none,
        a_policy_that_needs_an_unknown_feature_is_nacked_and_the_last_known_good_stays,
    );
}

fn policy(mx: &str) -> String {
    format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// `d.test`: the TXT record, the policy host, MX `mx.d.test` (signed; no TLSA, so DANE does
/// not apply).
fn zones(extra: &[&str]) -> Zones {
    let mut zones = Zones {
        secure: vec![
            format!("_mta-sts.d IN TXT \"v=STSv1; id={ID};\""),
            "mta-sts.d IN A 127.0.0.1".into(),
            "d IN MX 10 mx.d".into(),
            "mx.d IN A 127.0.0.1".into(),
        ],
        ..Zones::default()
    };
    zones.secure.extend(extra.iter().map(|r| (*r).to_owned()));
    zones
}

/// A test folder: the CA, the testbed, and the policy host serving `policy` under the CA.
struct Case {
    dir: tempfile::TempDir,
    ca: Ca,
    dns: Testbed,
    policy_port: std::net::SocketAddr,
    _policy_host: SServer,
}

impl Case {
    fn new(policy: &str) -> Self {
        Self::with_records(policy, &[])
    }

    /// [`Case::new`] with `extra` records in the signed zone.
    fn with_records(policy: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let dns = Testbed::start(dir.path(), &zones(extra));
        let www = dir.path().join("www");
        std::fs::create_dir_all(www.join(".well-known")).unwrap();
        std::fs::write(www.join(".well-known/mta-sts.txt"), policy).unwrap();
        let leaf = ca.leaf(dir.path(), "mta-sts", HOST, false);
        let policy_port = free_port();
        let host = SServer::start_in(&www, policy_port, &leaf, &["-WWW"]);
        Self {
            dir,
            ca,
            dns,
            policy_port,
            _policy_host: host,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `[dns]` for the control plane: the testbed, the policy host's port, the test CA.
    fn cp_dns(&self) -> String {
        format!(
            "\n{}refresh_max_secs = 1\nmta_sts_port = {}\nca_bundle = \"{}\"\n",
            self.dns.config(),
            self.policy_port.port(),
            self.ca.cert.display()
        )
    }

    fn control_plane(&self, db: &str) -> ControlPlane {
        ControlPlane::start(self.path(), db, &self.cp_dns())
    }
}

/// The row for `d.test:25` in `osgatectl get capabilities d.test:25 -o json`.
fn row(cp: &ControlPlane) -> Option<Value> {
    let list = cp.admin_json(&["get", "capabilities", PEER]);
    let rows = list["capabilities"].as_array().cloned().unwrap_or_default();
    rows.into_iter().find(|c| c["peer"] == PEER)
}

/// Waits until the control plane stored the policy of `d.test` (audit `dane.refresh`,
/// detail `sts/d.test`); the revision that carries it to the nodes.
fn fetched(cp: &mut ControlPlane) -> u64 {
    let name = format!("sts/{DOMAIN}");
    let committed = cp.process.wait_for(|v| {
        v["message"] == "committed" && v["action"] == "dane.refresh" && v["revision"].is_u64()
    });
    let audit = cp.audit();
    assert!(
        audit
            .iter()
            .any(|(_, action, detail)| action == "dane.refresh" && detail.contains(&name)),
        "{name} in {audit:?}"
    );
    committed["revision"].as_u64().unwrap_or(0)
}

fn register_b(dir: &Path, cp: &ControlPlane) -> (osgate_tests::controlplane::Key, u64) {
    let key = keygen(dir, "b");
    let args = ["nodes", "register", "b", "--spki", &key.pin, "--peer", PEER];
    let rev = revision(&cp.admin_json(&args));
    (key, rev)
}

fn the_control_plane_fetches_the_policy_of_a_domain_without_an_address_and_get_capabilities_shows_it(
    store: Store,
) {
    // d.test has no address record, as many mail domains: no TLSA set, only the policy.
    let case = Case::new(&policy("*.mx.d.test"));
    let (_pg, db) = database(store, case.path());
    let mut cp = case.control_plane(&db);
    register_b(case.path(), &cp);
    fetched(&mut cp);
    assert_policy_shown(&cp);
}

fn get_capabilities_shows_the_policy_next_to_the_dane_result_of_a_domain_with_an_address(
    store: Store,
) {
    // With an address, d.test:25 has a DANE result too (no TLSA: a validated denial).
    let case = Case::with_records(&policy("*.mx.d.test"), &["d IN A 127.0.0.1"]);
    let (_pg, db) = database(store, case.path());
    let mut cp = case.control_plane(&db);
    register_b(case.path(), &cp);
    fetched(&mut cp);
    assert_policy_shown(&cp);
}

/// `get capabilities d.test:25 -o json` shows the enforce policy with its id.
#[track_caller]
fn assert_policy_shown(cp: &ControlPlane) {
    let list = cp.admin_json(&["get", "capabilities", PEER]);
    let row = row(cp).unwrap_or_else(|| panic!("no row for {PEER}: {list}"));
    let sts = &row["sts"];
    assert_eq!(sts["domain"], DOMAIN, "{row}");
    assert_eq!(sts["id"], ID, "{row}");
    let text = sts["policy"].as_str().unwrap_or_default();
    for line in ["mode: enforce", "mx: *.mx.d.test", "max_age: 86400"] {
        assert!(
            text.lines().any(|l| l.trim_end() == line),
            "{line} in {row}"
        );
    }
    assert!(sts["fetched_at"].as_u64().is_some_and(|t| t > 0), "{row}");
}

/// Node B's config body: outbound by MX to `d.test`, its own inbound on the MX port
/// (STARTTLS, a CA-signed certificate for `mx.d.test`) in front of `backend`; its own
/// MTA-STS fetches go to a port where nothing listens.
fn node_body(case: &Case, backend: std::net::SocketAddr, section: &str) -> String {
    let mx = free_port();
    let pem: Pem = case.ca.leaf(case.path(), "mx", "mx.d.test", false);
    format!(
        "[smtp]\nhelo_name = \"relay.local.test\"\nmta_sts_port = {closed}\n\n\
         [[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"mx:{DOMAIN}:{port}\"\nprotocol = \"smtp\"\npolicy = \"opportunistic\"\n\n\
         [[inbound]]\nlisten = \"{mx}\"\nbackend = \"{backend}\"\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\nprotocol = \"smtp\"\n\n{dns}\n{section}",
        closed = free_port().port(),
        port = mx.port(),
        cert = pem.cert.display(),
        key = pem.key.display(),
        dns = case.dns.config(),
    )
}

/// `[node]` lines: its own state folder (no cached policy) and the test CA.
fn node_extra(case: &Case, name: &str) -> String {
    let state: PathBuf = case.path().join(format!("{name}-state"));
    format!(
        "state_dir = \"{}\"\nca_bundle = \"{}\"\n",
        state.display(),
        case.ca.cert.display()
    )
}

/// swaks through the node's outbound listener: (succeeded, transcript), and the record.
fn send(node: &mut Node) -> (bool, String, Value) {
    let (ok, out) = smtp::swaks(
        node.addr("outbound[0]"),
        &[
            "--to",
            "u@d.test",
            "--from",
            "a@local.test",
            "--body",
            "fleet sts",
        ],
    );
    (ok, out, node.outcome("outbound"))
}

/// The record's `sts` evidence (`<domain>:<id>:<mode>`; a `sts:` prefix is accepted).
fn sts_of(record: &Value) -> Option<&str> {
    let sts = record["sts"].as_str()?;
    Some(sts.strip_prefix("sts:").unwrap_or(sts))
}

fn reached(backend: &Server<Vec<String>>) -> Option<Vec<String>> {
    backend.try_result()
}

fn a_node_that_cannot_fetch_the_policy_is_held_to_the_fleets_and_without_it_to_none(io: Io) {
    // The policy names other MX hosts than the domain's `mx.d.test`.
    let case = Case::new(&policy("*.other.d.test"));

    // Without a control plane: B's own fetch fails, it holds no policy, the mail goes out.
    let alone = Server::start(osgate_tests::smtp::plain_backend);
    let mut b = Node::start(
        case.path(),
        io,
        &node_extra(&case, "b"),
        &node_body(&case, alone.addr, ""),
    );
    let (ok, out, record) = send(&mut b);
    assert!(ok, "{out}\n{record}");
    // No policy: its fetch failed and it holds none (RFC 8461 §5: deliver as without one).
    assert_eq!(
        sts_of(&record),
        Some(format!("{DOMAIN}:sts-policy-fetch-error").as_str()),
        "{record}"
    );
    assert_eq!(record["reason"], "none", "{record}");
    let seen = alone.result();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MAIL FROM:<a@local.test>")),
        "{seen:?}"
    );
    b.wait_for(|v| v["message"] == "MTA-STS policy fetch failed");
    drop(b);

    // The same node under a control plane that fetched the policy: refused, sts-mx-mismatch.
    let mut cp = case.control_plane(case.path().join("cp.db").to_str().unwrap());
    let (key, _) = register_b(case.path(), &cp);
    let rev = fetched(&mut cp);
    let section = cp.section(&key, &case.path().join("b.lkg"), "");
    let fleet = Server::start(osgate_tests::smtp::plain_backend);
    let mut b = Node::start(
        case.path(),
        io,
        &node_extra(&case, "b"),
        &node_body(&case, fleet.addr, &section),
    );
    wait_applied(&mut b, rev);
    let (ok, out, record) = send(&mut b);
    assert!(!ok, "{out}");
    assert!(out.contains("451 4.7.5"), "{out}");
    assert_eq!(record["reason"], "sts-mx-mismatch", "{record}");
    assert_ne!(record["achieved"], "cleartext", "{record}");
    assert_eq!(
        sts_of(&record),
        Some(format!("{DOMAIN}:{ID}:enforce").as_str()),
        "{record}"
    );
    assert_eq!(record["mx"], "mx.d.test", "{record}");
    assert!(reached(&fleet).is_none(), "nothing reached the MX host");
}

/// A snapshot of `revision` holding one StsPolicy for `d.test` with `mx` and `requires`.
fn snapshot(revision: u64, mx: &str, requires: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sts = pb::StsPolicy {
        domain: DOMAIN.into(),
        id: ID.into(),
        policy: policy(mx),
        fetched_at: now - 60,
        requires: vec![requires.into()],
    };
    pb::Update {
        revision,
        snapshot: true,
        upserts: vec![pb::Resource {
            kind: Some(Kind::Sts(sts)),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

fn a_policy_that_needs_an_unknown_feature_is_nacked_and_the_last_known_good_stays(io: Io) {
    // The node cannot fetch the policy (closed port) nor reach the real host's; the good
    // snapshot names other MX hosts, the next one, needing sts-cache.v2, would name mx.d.test.
    let case = Case::new(&policy("mx.d.test"));
    let good = snapshot(1, "*.other.d.test", "sts-cache.v1");
    let future = snapshot(2, "mx.d.test", "sts-cache.v2");
    let hostile = HostileControlPlane::start(case.path(), vec![good, future]);
    let key = keygen(case.path(), "n1");
    let section = hostile.section(&key, &case.path().join("n1.lkg"));
    let backend = Server::start(osgate_tests::smtp::plain_backend);
    let mut node = Node::start(
        case.path(),
        io,
        &node_extra(&case, "n1"),
        &node_body(&case, backend.addr, &section),
    );
    assert_eq!(hostile.reply(), Msg::Ack(pb::Ack { revision: 1 }));
    let Msg::Nack(nack) = hostile.reply() else {
        panic!("the StsPolicy needing sts-cache.v2 was not NACKed");
    };
    assert_eq!(nack.revision, 2);
    for part in [format!("sts/{DOMAIN}"), "sts-cache.v2".into()] {
        assert!(nack.error.contains(&part), "{part} in {:?}", nack.error);
    }
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");
    // The last-known-good policy holds: mx.d.test is not among its MX hosts.
    let (ok, out, record) = send(&mut node);
    assert!(!ok, "{out}");
    assert_eq!(record["reason"], "sts-mx-mismatch", "{record}");
    assert_eq!(
        sts_of(&record),
        Some(format!("{DOMAIN}:{ID}:enforce").as_str()),
        "{record}"
    );
    assert!(reached(&backend).is_none(), "nothing reached the MX host");
}
