// Tests check certificates made now, so they read the clock the core itself never does.
#![allow(clippy::disallowed_methods)]

use rustls::{ClientConnection, ServerConnection};

use super::*;

fn policy(groups: &[KxGroup]) -> CryptoPolicy {
    CryptoPolicy::new(groups, TlsFloor::Tls12).unwrap()
}

#[test]
fn only_forward_secret_suites_are_offered() {
    let policy = policy(KxGroup::DEFAULT);
    for suite in &policy.provider().cipher_suites {
        let name = suite.suite().as_str().unwrap_or("?");
        assert!(
            suite.version() == &rustls::version::TLS13 || name.starts_with("TLS_ECDHE_"),
            "{name} is not forward secret"
        );
    }
}

#[test]
fn post_quantum_hybrid_is_offered_first_by_default() {
    let groups: Vec<_> = policy(KxGroup::DEFAULT)
        .provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    assert_eq!(groups[0], rustls::NamedGroup::X25519MLKEM768);
    assert!(CryptoPolicy::new(&[], TlsFloor::Tls12).is_err());
}

struct Pki {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
}

fn pki(name: &str) -> Pki {
    let issued = crate::test_pki::issue(name, false);
    let mut roots = RootCertStore::empty();
    roots.add(issued.ca).unwrap();
    Pki {
        chain: vec![issued.leaf],
        key: issued.leaf_key,
        roots,
    }
}

/// Runs a client/server handshake in memory; returns the client.
fn handshake(client_groups: &[KxGroup], pki: &Pki) -> Result<ClientConnection, rustls::Error> {
    let server_policy = policy(KxGroup::DEFAULT);
    let server_config = server_policy
        .server(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    let client_config = policy(client_groups).unauthenticated_client().unwrap();
    let mut client = ClientConnection::new(client_config, "gw.test".try_into().unwrap())?;
    let mut server = ServerConnection::new(server_config)?;
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets()?;
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets()?;
    }
    Ok(client)
}

#[test]
fn unauthenticated_client_completes_with_any_certificate_and_reports_params() {
    let client = handshake(KxGroup::DEFAULT, &pki("gw.test")).unwrap();
    let params = tls_params(&client);
    assert_eq!(params.version, "TLSv1_3");
    assert_eq!(params.group, "X25519MLKEM768");
    let client = handshake(&[KxGroup::X25519], &pki("gw.test")).unwrap();
    assert_eq!(tls_params(&client).group, "X25519");
}

#[test]
fn chain_verdicts_name_the_rfc_8460_reason() {
    let good = pki("gw.test");
    let policy = policy(KxGroup::DEFAULT);
    let verifier = ChainVerifier::new(good.roots.clone(), &policy);
    let name: ServerName<'_> = "gw.test".try_into().unwrap();
    let other: ServerName<'_> = "other.test".try_into().unwrap();
    let now = UnixTime::now();
    assert_eq!(verifier.check(&good.chain, &name, now), Ok(()));
    assert_eq!(
        verifier.check(&good.chain, &other, now),
        Err(Reason::CertificateHostMismatch)
    );
    // rcgen certificates are valid until 4096.
    let far_future = UnixTime::since_unix_epoch(std::time::Duration::from_secs(100_000_000_000));
    assert_eq!(
        verifier.check(&good.chain, &name, far_future),
        Err(Reason::CertificateExpired)
    );
    let stranger = pki("gw.test");
    assert_eq!(
        verifier.check(&stranger.chain, &name, now),
        Err(Reason::CertificateNotTrusted)
    );
    assert_eq!(
        verifier.check(&[], &name, now),
        Err(Reason::ValidationFailure)
    );
    let no_roots = ChainVerifier::new(RootCertStore::empty(), &policy);
    assert_eq!(
        no_roots.check(&good.chain, &name, now),
        Err(Reason::CertificateNotTrusted)
    );
}

/// A handshake with `client_config` against `server_config`, delivering the server's
/// session tickets; returns how the handshake went.
fn handshake_kind(
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
) -> Option<rustls::HandshakeKind> {
    let mut client = ClientConnection::new(client_config, "gw.test".try_into().unwrap()).unwrap();
    let mut server = ServerConnection::new(server_config).unwrap();
    let mut buf = Vec::new();
    for _ in 0..4 {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    client.handshake_kind()
}

#[test]
fn sessions_are_forgotten_when_the_tlsa_set_changes() {
    use crate::dane::Tlsa;
    let pki = pki("gw.test");
    let server = policy(KxGroup::DEFAULT)
        .server(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    let sessions = SessionCache::new(16);
    let client = policy(KxGroup::DEFAULT)
        .unauthenticated_client_with(Some(sessions.clone()))
        .unwrap();
    let name: ServerName<'_> = "gw.test".try_into().unwrap();
    let record = |byte| Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![byte; 32],
    };
    let (first, second) = ([record(1), record(2)], [record(2), record(1)]);
    let changed = [record(3)];
    use rustls::HandshakeKind::{Full, Resumed};

    sessions.note_tlsa(&name, &first);
    assert_eq!(handshake_kind(client.clone(), server.clone()), Some(Full));
    // The same set, in another order: the session is resumed.
    sessions.note_tlsa(&name, &second);
    assert_eq!(
        handshake_kind(client.clone(), server.clone()),
        Some(Resumed)
    );
    // A new set: the peer's sessions are gone, the next handshake is full.
    sessions.note_tlsa(&name, &changed);
    assert_eq!(handshake_kind(client.clone(), server.clone()), Some(Full));
    assert_eq!(handshake_kind(client, server), Some(Resumed));
}
