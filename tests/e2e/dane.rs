//! DANE end to end (RFC 7672 §2; CONFORMANCE C): a signed zone served by nsd, a trust anchor,
//! OpenSSL and plain peers, and osgate outbound nodes under both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use osgate_tests::certs::{self, Pem};
use osgate_tests::dns::{Alg, Denial, Signing, Testbed, Zone, Zones, spki_sha256_hex};
use osgate_tests::faulty_dns::{Fault, FaultyDns, TLSA};
use osgate_tests::node::free_port;
use osgate_tests::openssl::SServer;
use osgate_tests::peers::{self, Server};
use osgate_tests::{Io, Node, per_driver};

per_driver!(
    secure_matching_tlsa_is_authenticated_dane,
    secure_tlsa_through_a_cname_uses_the_target_as_base,
    secure_mismatching_tlsa_is_refused_never_downgraded,
    tlsa_mismatch_at_one_address_tries_the_next,
    a_key_vouched_for_by_dane_replaces_the_tofu_pin,
    secure_unusable_tlsa_makes_tls_mandatory,
    insecure_zone_tlsa_is_ignored,
    bogus_zone_is_refused_as_dnssec_invalid,
    secure_denial_of_tlsa_continues_down_the_ladder,
    unanswered_lookups_refuse_and_are_never_read_as_no_tlsa,
    tlsa_servfail_refuses_and_is_never_read_as_no_tlsa,
    dane_required_without_validation_is_refused,
    a_zone_signed_by_two_zsks_is_authenticated_dane,
    a_peer_without_tls_whose_tlsa_two_zsks_sign_is_refused_never_cleartext,
    a_ksk_and_a_zsk_of_different_algorithms_authenticate_dane,
    a_zone_in_an_algorithm_rollover_is_authenticated_dane,
    a_peer_without_tls_in_an_algorithm_rollover_is_refused_never_cleartext,
    secure_nsec_denial_of_tlsa_continues_down_the_ladder,
    a_secure_alias_to_an_unsigned_zone_is_not_dane,
    an_unsigned_alias_to_a_signed_zone_is_not_dane,
    a_secure_alias_into_another_signed_zone_finds_the_tlsa_at_the_target,
    a_wildcard_tlsa_in_a_signed_zone_is_authenticated_dane,
    expired_signatures_are_refused_as_dnssec_invalid_never_cleartext,
    a_rewritten_tlsa_answer_is_refused_never_authenticated,
    tlsa_stripped_of_its_signatures_is_refused_never_cleartext,
    addresses_stripped_of_their_signatures_are_refused_never_cleartext,
    a_dns_phase_over_its_budget_is_refused_never_cleartext,
    tlsa_in_an_unsigned_zone_below_a_secure_address_is_ignored,
    no_tlsa_in_an_unsigned_zone_below_a_secure_address_is_insecure,
    a_localhost_peer_is_insecure_not_a_failed_lookup,
    a_trust_anchor_zone_signed_by_two_zsks_passes_the_self_test,
);

fn tlsa(port: u16, host: &str, data: &str) -> String {
    format!("_{port}._tcp.{host} IN TLSA 3 1 1 {data}")
}

/// `mx` at 127.0.0.1 with a DANE-EE record that matches no key.
fn mx_with_wrong_tlsa(port: u16) -> Vec<String> {
    vec![
        "mx IN A 127.0.0.1".into(),
        tlsa(port, "mx", &"ab".repeat(32)),
    ]
}

/// An outbound node to `peer` (a name) with the testbed's `[dns]` and `extra`.
fn node(dir: &Path, io: Io, peer: &str, dns: &str, extra: &str) -> Node {
    Node::start(
        dir,
        io,
        "",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n\n{dns}\n{extra}"
        ),
    )
}

fn outcome(
    node: &mut Node,
    achieved: &str,
    method: &str,
    reason: &str,
    dane: &str,
) -> serde_json::Value {
    let out = node.outcome("outbound");
    assert_eq!(
        (
            out["achieved"].as_str(),
            out["method"].as_str(),
            out["reason"].as_str(),
            out["dane"].as_str()
        ),
        (Some(achieved), Some(method), Some(reason), Some(dane)),
        "{out}"
    );
    assert_eq!(
        node.metric("osgate_cleartext_despite_policy_total", &[]),
        0.0
    );
    assert_eq!(
        node.metric("osgate_dane_lookups_total", &[("result", dane)]),
        1.0
    );
    out
}

fn peer_key(dir: &Path) -> Pem {
    certs::self_signed(dir, "peer", "mx.test")
}

/// A case against an OpenSSL peer: its key, the zones built from its port and key, a testbed
/// serving them, and a node whose outbound peer is `host` at that port.
struct OpensslCase {
    _dir: tempfile::TempDir,
    server: SServer,
    _dns: Testbed,
    node: Node,
}

fn openssl_case(io: Io, host: &str, zones: impl FnOnce(u16, &Pem) -> Zones) -> OpensslCase {
    let dir = tempfile::tempdir().unwrap();
    let pem = peer_key(dir.path());
    let server = SServer::start(&pem, &[]);
    let port = server.addr.port();
    let dns = Testbed::start(dir.path(), &zones(port, &pem));
    let node = node(dir.path(), io, &format!("{host}:{port}"), &dns.config(), "");
    OpensslCase {
        _dir: dir,
        server,
        _dns: dns,
        node,
    }
}

fn secure_matching_tlsa_is_authenticated_dane(io: Io) {
    let mut digest = String::new();
    let mut case = openssl_case(io, "mx.test", |port, pem| {
        digest = spki_sha256_hex(pem);
        Zones {
            secure: vec!["mx IN A 127.0.0.1".into(), tlsa(port, "mx", &digest)],
            ..Zones::default()
        }
    });
    assert_eq!(
        case.node.metric("osgate_dnssec_validation_available", &[]),
        1.0
    );
    case.server
        .send_line(case.node.addr("outbound[0]"), "hello dane");
    let out = outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
    // The evidence names the record that matched.
    assert_eq!(out["tlsa"], format!("3 1 1 {}…", &digest[..16]), "{out}");
}

fn secure_tlsa_through_a_cname_uses_the_target_as_base(io: Io) {
    let mut case = openssl_case(io, "alias.test", |port, pem| Zones {
        secure: vec![
            "alias IN CNAME mx".into(),
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "via cname");
    outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
}

fn secure_mismatching_tlsa_is_refused_never_downgraded(io: Io) {
    let mut case = openssl_case(io, "mx.test", |port, _| Zones {
        secure: mx_with_wrong_tlsa(port),
        ..Zones::default()
    });
    assert_eq!(peers::call(case.node.addr("outbound[0]"), b"SECRET\n"), b"");
    outcome(
        &mut case.node,
        "refused",
        "none",
        "tlsa-invalid",
        "secure-usable",
    );
}

fn secure_unusable_tlsa_makes_tls_mandatory(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(|mut s| {
        let _ = s.write_all(b"220 plain\r\n");
        peers::record(s)
    });
    let port = plain.addr.port();
    // PKIX-EE(1) is not usable for DANE: TLS becomes mandatory, authentication impossible.
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            format!("_{port}._tcp.mx IN TLSA 1 1 1 {}", "ab".repeat(32)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let mut node = node(
        dir.path(),
        io,
        &format!("mx.test:{port}"),
        &dns.config(),
        "",
    );
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET"), b"");
    outcome(
        &mut node,
        "refused",
        "none",
        "peer-no-tls",
        "secure-unusable",
    );
    assert!(!plain.result().windows(6).any(|w| w == b"SECRET"));
    assert!(plain.try_result().is_none(), "never retried in cleartext");
}

fn insecure_zone_tlsa_is_ignored(io: Io) {
    let mut case = openssl_case(io, "mx.ins.test", |port, _| Zones {
        insecure: mx_with_wrong_tlsa(port),
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "unsigned zone");
    outcome(
        &mut case.node,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "insecure-address",
    );
}

fn bogus_zone_is_refused_as_dnssec_invalid(io: Io) {
    let mut case = openssl_case(io, "mx.bogus.test", |port, _| Zones {
        bogus: mx_with_wrong_tlsa(port),
        ..Zones::default()
    });
    assert_eq!(peers::call(case.node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = case.node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("dnssec-invalid")),
        "{out}"
    );
}

/// NSEC3 (RFC 5155), the testbed's default.
fn secure_denial_of_tlsa_continues_down_the_ladder(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(|mut s| {
        let _ = s.write_all(b"220 plain\r\n");
        peers::record(s)
    });
    let port = plain.addr.port();
    let zones = Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let mut node = node(
        dir.path(),
        io,
        &format!("mx.test:{port}"),
        &dns.config(),
        "",
    );
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"QUIT\r\n"),
        b"220 plain\r\n"
    );
    outcome(&mut node, "cleartext", "none", "peer-no-tls", "no-tlsa");
}

fn unanswered_lookups_refuse_and_are_never_read_as_no_tlsa(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(peers::record);
    let anchor = dir.path().join("anchor.key");
    std::fs::write(&anchor, "test. 3600 IN DNSKEY 257 3 13 9HVjWlF2BTVAX4VyfVahw+ReTOEnilNmJ03bT+LvtvV3ehZGjgSrUNLaK4gLB/OCHbN/6RChNOf7wEQmLpbn1g==\n").unwrap();
    // A UDP port nobody answers on: every lookup times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = format!(
        "[dns]\nservers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout_ms = 200\n",
        silent.local_addr().unwrap(),
        anchor.display()
    );
    let mut node = node(
        dir.path(),
        io,
        &format!("mx.test:{}", plain.addr.port()),
        &dns,
        "",
    );
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 0.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("dns-lookup-failed")),
        "{out}"
    );
    assert!(plain.try_result().is_none(), "nothing was sent anywhere");
    let _ = free_port();
}

fn tlsa_mismatch_at_one_address_tries_the_next(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let right = peer_key(dir.path());
    let wrong = certs::self_signed(dir.path(), "wrong", "mx.test");
    let port = free_port().port();
    let first = SServer::start_on(format!("127.0.0.1:{port}").parse().unwrap(), &wrong, &[]);
    let second = SServer::start_on(format!("127.0.0.2:{port}").parse().unwrap(), &right, &[]);
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            "mx IN A 127.0.0.2".into(),
            tlsa(port, "mx", &spki_sha256_hex(&right)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let mut node = node(
        dir.path(),
        io,
        &format!("mx.test:{port}"),
        &dns.config(),
        "",
    );
    second.send_line(
        node.addr("outbound[0]"),
        "to the address with the right key",
    );
    outcome(&mut node, "authenticated", "dane", "none", "secure-usable");
    node.wait_for(|v| {
        v["message"] == "TLSA records do not match this address's key; trying the next address"
    });
    drop(first);
}

/// CONFORMANCE D.27: a peer rotates to a key its secure TLSA records name; the learned TOFU
/// pin follows the key DANE vouched for, with no outage. (An operator's pin never does: see
/// hardening.rs.)
fn a_key_vouched_for_by_dane_replaces_the_tofu_pin(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let old = certs::self_signed(dir.path(), "old", "mx.test");
    let new = peer_key(dir.path());
    let first = SServer::start(&old, &[]);
    let port = first.addr.port();
    let store = dir.path().join("pins");
    let tofu = osgate_tests::node::tofu_store(&store);
    let peer = format!("mx.test:{port}");
    let store_arg = store.to_str().unwrap();
    let listed = || {
        let out = std::process::Command::new(osgate_tests::node::osgate_bin())
            .args(["pins", "--store", store_arg, "list"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // First contact, no TLSA yet: the old key is learned.
    let before = dir.path().join("before");
    std::fs::create_dir_all(&before).unwrap();
    let unpublished = Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        ..Zones::default()
    };
    let dns = Testbed::start(&before, &unpublished);
    let mut node_before = node(&before, io, &peer, &dns.config(), &tofu);
    first.send_line(node_before.addr("outbound[0]"), "first contact");
    outcome(
        &mut node_before,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "no-tlsa",
    );
    assert!(listed().contains(&certs::pin_of(&old)), "{}", listed());
    drop((node_before, dns, first));

    // The peer rotated to a key its now published TLSA record names.
    let after = dir.path().join("after");
    std::fs::create_dir_all(&after).unwrap();
    let published = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &spki_sha256_hex(&new)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(&after, &published);
    let server = SServer::start_on(([127, 0, 0, 1], port).into(), &new, &[]);
    let mut node = node(&after, io, &peer, &dns.config(), &tofu);
    server.send_line(node.addr("outbound[0]"), "rotated under DANE");
    outcome(&mut node, "authenticated", "dane", "none", "secure-usable");
    let listed = listed();
    assert!(
        listed.contains(&certs::pin_of(&new)),
        "the pin follows the vouched key: {listed}"
    );
    assert!(!listed.contains(&certs::pin_of(&old)), "{listed}");
}

fn tlsa_servfail_refuses_and_is_never_read_as_no_tlsa(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(peers::record);
    let port = plain.addr.port();
    let zones = Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &"cd".repeat(32)),
        ],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    // The resolver answers everything but TLSA (type 52), which gets SERVFAIL.
    let faulty = FaultyDns::start(dns.addr, Fault::Servfail(TLSA));
    let config = dns.config_via(faulty.addr);
    let mut node = node(dir.path(), io, &format!("mx.test:{port}"), &config, "");
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 1.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    outcome(&mut node, "refused", "none", "dns-lookup-failed", "failed");
    assert!(
        faulty.faults() >= 1,
        "the TLSA query was made, after a secure address"
    );
    assert!(
        plain.try_result().is_none(),
        "nothing reached the peer, in TLS or cleartext"
    );
}

fn dane_required_without_validation_is_refused(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = SServer::start(&peer_key(dir.path()), &[]);
    let port = server.addr.port();
    let zones = Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    // A trust anchor that does not match the zone's key: validation cannot succeed.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "test. 3600 IN DNSKEY 257 3 13 9HVjWlF2BTVAX4VyfVahw+ReTOEnilNmJ03bT+LvtvV3ehZGjgSrUNLaK4gLB/OCHbN/6RChNOf7wEQmLpbn1g==\n").unwrap();
    let config = dns.config().replace(
        &dns.anchor.display().to_string(),
        &wrong.display().to_string(),
    );
    let rule = "[[policy]]\nmatch = \"mx.test\"\nlevel = \"authenticate\"\nmethods = [\"dane\"]\n";
    let mut node = node(dir.path(), io, &format!("mx.test:{port}"), &config, rule);
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 0.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(out["achieved"], "refused", "{out}");
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason == "dane-required" || reason == "dnssec-invalid",
        "{out}"
    );
}

/// A peer that speaks no TLS, and a node to it, named `host`, with the zones built from its
/// port.
struct PlainCase {
    _dir: tempfile::TempDir,
    plain: Server<Vec<u8>>,
    _dns: Testbed,
    node: Node,
}

fn plain_case(io: Io, host: &str, zones: impl FnOnce(u16) -> Zones) -> PlainCase {
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(|mut s| {
        let _ = s.write_all(b"220 plain\r\n");
        peers::record(s)
    });
    let port = plain.addr.port();
    let dns = Testbed::start(dir.path(), &zones(port));
    let node = node(dir.path(), io, &format!("{host}:{port}"), &dns.config(), "");
    PlainCase {
        _dir: dir,
        plain,
        _dns: dns,
        node,
    }
}

impl PlainCase {
    /// The client's secret reached nobody: no reply, the peer saw nothing of it on the
    /// attempt at TLS, and there was no second, cleartext attempt.
    fn assert_refused_after_trying_tls(&mut self) {
        assert_eq!(peers::call(self.node.addr("outbound[0]"), b"SECRET\n"), b"");
        assert!(!self.plain.result().windows(6).any(|w| w == b"SECRET"));
        assert!(
            self.plain.try_result().is_none(),
            "never retried in cleartext"
        );
    }

    /// Refused before connecting, as `reason`: the peer never saw a connection.
    fn assert_refused_before_connecting(&mut self, reason: &str) {
        assert_eq!(peers::call(self.node.addr("outbound[0]"), b"SECRET\n"), b"");
        let out = self.node.outcome("outbound");
        assert_eq!(
            (out["achieved"].as_str(), out["reason"].as_str()),
            (Some("refused"), Some(reason)),
            "{out}"
        );
        assert_eq!(
            self.node
                .metric("osgate_cleartext_despite_policy_total", &[]),
            0.0
        );
        assert!(
            self.plain.try_result().is_none(),
            "nothing reached the peer"
        );
    }
}

fn matching_tlsa_signed_as(signing: Signing) -> impl FnOnce(u16, &Pem) -> Zones {
    move |port, pem| Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &spki_sha256_hex(pem)),
        ],
        signing,
        ..Zones::default()
    }
}

/// A peer whose key its secure TLSA record names, in a zone signed as `signing`, is
/// authenticated by DANE.
fn authenticated_dane_when_signed_as(io: Io, signing: Signing, line: &str) {
    let mut case = openssl_case(io, "mx.test", matching_tlsa_signed_as(signing));
    case.server.send_line(case.node.addr("outbound[0]"), line);
    outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
}

/// A peer without TLS whose secure TLSA record exists, in a zone signed as `signing`: refused
/// after trying TLS, never carried in cleartext.
fn refused_without_tls_when_signed_as(io: Io, signing: Signing) {
    let mut case = plain_case(io, "mx.test", |port| Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            tlsa(port, "mx", &"ab".repeat(32)),
        ],
        signing,
        ..Zones::default()
    });
    case.assert_refused_after_trying_tls();
    outcome(
        &mut case.node,
        "refused",
        "none",
        "peer-no-tls",
        "secure-usable",
    );
}

/// RFC 6781 §4.1.1.2: during a double-signature rollover every RRset carries two RRSIGs; the
/// resolver validates with one and leaves the other unmarked.
fn a_zone_signed_by_two_zsks_is_authenticated_dane(io: Io) {
    authenticated_dane_when_signed_as(io, Signing::two_zsks(), "two signatures");
}

/// The critical case: read as "insecure", this peer's payload went out in cleartext.
fn a_peer_without_tls_whose_tlsa_two_zsks_sign_is_refused_never_cleartext(io: Io) {
    refused_without_tls_when_signed_as(io, Signing::two_zsks());
}

fn a_ksk_and_a_zsk_of_different_algorithms_authenticate_dane(io: Io) {
    let signing = Signing::keys(&[Alg::EcdsaP256], &[Alg::Ed25519]);
    authenticated_dane_when_signed_as(io, signing, "two algorithms");
}

fn a_zone_in_an_algorithm_rollover_is_authenticated_dane(io: Io) {
    authenticated_dane_when_signed_as(io, Signing::algorithm_rollover(), "rolling algorithms");
}

fn a_peer_without_tls_in_an_algorithm_rollover_is_refused_never_cleartext(io: Io) {
    refused_without_tls_when_signed_as(io, Signing::algorithm_rollover());
}

/// NSEC (RFC 4034 §4), from a zone two ZSKs sign: the denial carries two signatures too.
fn secure_nsec_denial_of_tlsa_continues_down_the_ladder(io: Io) {
    let mut case = plain_case(io, "mx.test", |_| Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        signing: Signing::two_zsks().denial(Denial::Nsec),
        ..Zones::default()
    });
    assert_eq!(
        peers::call(case.node.addr("outbound[0]"), b"QUIT\r\n"),
        b"220 plain\r\n"
    );
    outcome(
        &mut case.node,
        "cleartext",
        "none",
        "peer-no-tls",
        "no-tlsa",
    );
}

/// RFC 7672 §2.2.2: an address reached through an unsigned zone is insecure, whatever signs
/// the alias; no TLSA lookup, the opportunistic path.
fn a_secure_alias_to_an_unsigned_zone_is_not_dane(io: Io) {
    let mut case = openssl_case(io, "alias.test", |port, _| Zones {
        secure: vec!["alias IN CNAME mx.ins.test.".into()],
        insecure: mx_with_wrong_tlsa(port),
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "unsigned target");
    outcome(
        &mut case.node,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "insecure-address",
    );
}

/// An unsigned alias could point anywhere: the signed target does not make the name secure.
fn an_unsigned_alias_to_a_signed_zone_is_not_dane(io: Io) {
    let mut case = openssl_case(io, "alias.ins.test", |port, _| Zones {
        secure: mx_with_wrong_tlsa(port),
        insecure: vec!["alias IN CNAME mx.test.".into()],
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "unsigned alias");
    outcome(
        &mut case.node,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "insecure-address",
    );
}

/// The TLSA records exist only at the target, in a zone of its own signed with other keys.
fn a_secure_alias_into_another_signed_zone_finds_the_tlsa_at_the_target(io: Io) {
    let mut case = openssl_case(io, "alias.test", |port, pem| Zones {
        secure: vec!["alias IN CNAME mx.sub.test.".into()],
        children: vec![Zone {
            label: "sub",
            records: vec![
                "mx IN A 127.0.0.1".into(),
                tlsa(port, "mx", &spki_sha256_hex(pem)),
            ],
            signing: Some(Signing::keys(&[Alg::Ed25519], &[Alg::Ed25519])),
        }],
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "across zones");
    outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
}

/// RFC 4035 §5.3.4: a wildcard answer validates with the proof that no closer name exists.
fn a_wildcard_tlsa_in_a_signed_zone_is_authenticated_dane(io: Io) {
    let mut case = openssl_case(io, "mx.test", |_, pem| Zones {
        secure: vec![
            "mx IN A 127.0.0.1".into(),
            format!("*._tcp.mx IN TLSA 3 1 1 {}", spki_sha256_hex(pem)),
        ],
        ..Zones::default()
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "wildcard");
    outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
}

fn expired_signatures_are_refused_as_dnssec_invalid_never_cleartext(io: Io) {
    let mut case = plain_case(io, "mx.old.test", |port| Zones {
        children: vec![Zone {
            label: "old",
            records: vec![
                "mx IN A 127.0.0.1".into(),
                tlsa(port, "mx", &"ab".repeat(32)),
            ],
            signing: Some(Signing::default().expired()),
        }],
        ..Zones::default()
    });
    case.assert_refused_before_connecting("dnssec-invalid");
}

/// A node whose DNS goes through `fault`, to a peer `mx.test` with TLSA `3 1 1 <data>`.
struct ProxiedCase {
    _dir: tempfile::TempDir,
    _dns: Testbed,
    faulty: FaultyDns,
    node: Node,
}

fn proxied_case(io: Io, port: u16, data: &str, fault: Fault, extra_dns: &str) -> ProxiedCase {
    let dir = tempfile::tempdir().unwrap();
    let zones = Zones {
        secure: vec!["mx IN A 127.0.0.1".into(), tlsa(port, "mx", data)],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let faulty = FaultyDns::start(dns.addr, fault);
    let config = format!("{}{extra_dns}", dns.config_via(faulty.addr));
    let node = node(dir.path(), io, &format!("mx.test:{port}"), &config, "");
    ProxiedCase {
        _dir: dir,
        _dns: dns,
        faulty,
        node,
    }
}

fn a_rewritten_tlsa_answer_is_refused_never_authenticated(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = peer_key(dir.path());
    let server = SServer::start(&pem, &[]);
    let port = server.addr.port();
    let mut case = proxied_case(io, port, &spki_sha256_hex(&pem), Fault::Rewrite(TLSA), "");
    assert_eq!(peers::call(case.node.addr("outbound[0]"), b"SECRET\n"), b"");
    outcome(&mut case.node, "refused", "none", "dnssec-invalid", "bogus");
    assert!(case.faulty.faults() >= 1, "the TLSA answer was rewritten");
}

fn tlsa_stripped_of_its_signatures_is_refused_never_cleartext(io: Io) {
    let plain = Server::start(peers::record);
    let port = plain.addr.port();
    let data = "ab".repeat(32);
    let mut case = proxied_case(io, port, &data, Fault::StripSignatures(TLSA), "");
    assert_eq!(peers::call(case.node.addr("outbound[0]"), b"SECRET\n"), b"");
    outcome(&mut case.node, "refused", "none", "dnssec-invalid", "bogus");
    assert!(case.faulty.faults() >= 1, "the TLSA answer was stripped");
    assert!(plain.try_result().is_none(), "nothing reached the peer");
}

/// hickory's `lookup_ip` folds a bogus A answer and a secure "no AAAA" into "no records", so
/// the reason may read `dns-lookup-failed` (asking A and AAAA apart instead meets hickory
/// calling a CNAME to a name without AAAA bogus); either way the peer is refused.
fn addresses_stripped_of_their_signatures_are_refused_never_cleartext(io: Io) {
    let plain = Server::start(peers::record);
    let port = plain.addr.port();
    let data = "ab".repeat(32);
    let mut case = proxied_case(io, port, &data, Fault::StripSignatures(1), "");
    assert_eq!(peers::call(case.node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = case.node.outcome("outbound");
    assert_eq!(out["achieved"], "refused", "{out}");
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason == "dnssec-invalid" || reason == "dns-lookup-failed",
        "{out}"
    );
    assert!(case.faulty.faults() >= 1, "the A answer was stripped");
    assert!(plain.try_result().is_none(), "nothing reached the peer");
}

/// CONFORMANCE C.24: every answer comes within the per-query timeout, but the answers a
/// validated lookup needs (address, DNSKEY and DS up to the root, TLSA) add up to more than
/// the connection's DNS budget. Without the budget the lookup succeeds late and, with no
/// TLSA, the payload goes out in cleartext.
fn a_dns_phase_over_its_budget_is_refused_never_cleartext(io: Io) {
    let plain = Server::start(peers::record);
    let port = plain.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let zones = Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        ..Zones::default()
    };
    let dns = Testbed::start(dir.path(), &zones);
    let faulty = FaultyDns::start(dns.addr, Fault::Delay(Duration::from_millis(400)));
    let config = dns
        .config_via(faulty.addr)
        .replace("timeout_ms = 1000", "timeout_ms = 2000\nbudget_ms = 1000");
    let mut node = node(dir.path(), io, &format!("mx.test:{port}"), &config, "");
    assert_eq!(node.metric("osgate_dnssec_validation_available", &[]), 1.0);
    assert_eq!(peers::call(node.addr("outbound[0]"), b"SECRET\n"), b"");
    let out = node.outcome("outbound");
    assert_eq!(
        (out["achieved"].as_str(), out["reason"].as_str()),
        (Some("refused"), Some("dns-lookup-failed")),
        "{out}"
    );
    assert_eq!(
        node.metric("osgate_cleartext_despite_policy_total", &[]),
        0.0
    );
    assert!(plain.try_result().is_none(), "nothing reached the peer");
}

/// `_tcp.mx.test` delegated without a DS: the address is secure, the TLSA records are not
/// (RFC 7672 §2.2.3: insecure TLSA records are ignored).
fn unsigned_tcp_zone(records: Vec<String>) -> Zones {
    Zones {
        secure: vec!["mx IN A 127.0.0.1".into()],
        children: vec![Zone {
            label: "_tcp.mx",
            records,
            signing: None,
        }],
        ..Zones::default()
    }
}

fn tlsa_in_an_unsigned_zone_below_a_secure_address_is_ignored(io: Io) {
    let mut case = openssl_case(io, "mx.test", |port, _| {
        unsigned_tcp_zone(vec![format!("_{port} IN TLSA 3 1 1 {}", "ab".repeat(32))])
    });
    case.server
        .send_line(case.node.addr("outbound[0]"), "unsigned tlsa");
    outcome(
        &mut case.node,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "insecure-tlsa",
    );
}

fn no_tlsa_in_an_unsigned_zone_below_a_secure_address_is_insecure(io: Io) {
    let mut case = openssl_case(io, "mx.test", |_, _| unsigned_tcp_zone(Vec::new()));
    case.server
        .send_line(case.node.addr("outbound[0]"), "unsigned denial");
    outcome(
        &mut case.node,
        "encrypted",
        "none",
        "certificate-not-trusted",
        "insecure-tlsa",
    );
}

/// RFC 6761 §6.3: the resolver answers localhost itself, from no zone: nothing to validate,
/// so insecure (the opportunistic path), not a failed lookup. (Which loopback address the
/// node reaches is not DNS's business: only the DNS verdict is checked.)
fn a_localhost_peer_is_insecure_not_a_failed_lookup(io: Io) {
    let mut case = plain_case(io, "localhost", |_| Zones::default());
    let _ = peers::call(case.node.addr("outbound[0]"), b"QUIT\r\n");
    let out = case.node.outcome("outbound");
    assert_eq!(out["dane"], "insecure-address", "{out}");
    let lookups = ("result", "insecure-address");
    assert_eq!(
        case.node.metric("osgate_dane_lookups_total", &[lookups]),
        1.0
    );
}

/// The start-up self-test reads the anchor zone's SOA, which two ZSKs sign here.
fn a_trust_anchor_zone_signed_by_two_zsks_passes_the_self_test(io: Io) {
    let mut case = openssl_case(io, "mx.test", |port, pem| Zones {
        root: Signing::two_zsks(),
        ..matching_tlsa_signed_as(Signing::default())(port, pem)
    });
    assert_eq!(
        case.node.metric("osgate_dnssec_validation_available", &[]),
        1.0
    );
    case.server
        .send_line(case.node.addr("outbound[0]"), "validated root");
    outcome(
        &mut case.node,
        "authenticated",
        "dane",
        "none",
        "secure-usable",
    );
}
