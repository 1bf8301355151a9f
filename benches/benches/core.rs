//! Benches of the sans-IO core: first-byte classification, in-memory TLS handshakes with
//! osgate's crypto policy, and the record path (encrypt + decrypt) at relay buffer sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::io::{Read, Write};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::detect::classify_client_hello;
use rcgen::{CertificateParams, KeyPair};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::PrivateKeyDer;

struct Pair {
    client: ClientConnection,
    server: ServerConnection,
}

fn configs(
    groups: &[KxGroup],
) -> (
    std::sync::Arc<rustls::ClientConfig>,
    std::sync::Arc<rustls::ServerConfig>,
) {
    let policy = CryptoPolicy::new(groups, TlsFloor::Tls12).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["gw.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = policy
        .server(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (policy.unauthenticated_client().unwrap(), server)
}

fn transfer(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8]), buf: &mut Vec<u8>) {
    buf.clear();
    from(buf);
    to(buf);
}

fn handshake(
    client_config: &std::sync::Arc<rustls::ClientConfig>,
    server_config: &std::sync::Arc<rustls::ServerConfig>,
) -> Pair {
    let mut pair = Pair {
        client: ClientConnection::new(client_config.clone(), "gw.test".try_into().unwrap())
            .unwrap(),
        server: ServerConnection::new(server_config.clone()).unwrap(),
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    while pair.client.is_handshaking() || pair.server.is_handshaking() {
        let (client, server) = (&mut pair.client, &mut pair.server);
        transfer(
            &mut |b| {
                client.write_tls(b).unwrap();
            },
            &mut |b| {
                server.read_tls(&mut &b[..]).unwrap();
                server.process_new_packets().unwrap();
            },
            &mut buf,
        );
        transfer(
            &mut |b| {
                server.write_tls(b).unwrap();
            },
            &mut |b| {
                client.read_tls(&mut &b[..]).unwrap();
                client.process_new_packets().unwrap();
            },
            &mut buf,
        );
    }
    pair
}

fn bench_classify(c: &mut Criterion) {
    let (client_config, _) = configs(KxGroup::DEFAULT);
    let mut conn = ClientConnection::new(client_config, "gw.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    c.bench_function("classify_client_hello", |b| {
        b.iter(|| classify_client_hello(black_box(&hello)))
    });
}

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake_full");
    for (name, groups) in [
        ("x25519mlkem768", &[KxGroup::X25519Mlkem768][..]),
        ("x25519", &[KxGroup::X25519][..]),
    ] {
        let (client_config, server_config) = configs(groups);
        // Full handshakes only: without a session store the client cannot resume.
        let mut no_resumption = (*client_config).clone();
        no_resumption.resumption = rustls::client::Resumption::disabled();
        let client_config = std::sync::Arc::new(no_resumption);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| handshake(&client_config, &server_config))
        });
    }
    group.finish();
}

fn bench_records(c: &mut Criterion) {
    let (client_config, server_config) = configs(KxGroup::DEFAULT);
    let mut pair = handshake(&client_config, &server_config);
    pair.client.set_buffer_limit(None);
    let mut group = c.benchmark_group("record_path");
    for size in [16 * 1024, 128 * 1024] {
        let plaintext = vec![0x5a; size];
        let mut wire = Vec::with_capacity(size + 1024);
        let mut out = vec![0; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                pair.client.writer().write_all(&plaintext).unwrap();
                wire.clear();
                while pair.client.wants_write() {
                    pair.client.write_tls(&mut wire).unwrap();
                }
                let mut input = &wire[..];
                let mut got = 0;
                while !input.is_empty() || got < size {
                    if !input.is_empty() {
                        pair.server.read_tls(&mut input).unwrap();
                        pair.server.process_new_packets().unwrap();
                    }
                    match pair.server.reader().read(&mut out[got..]) {
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                black_box(got)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_classify, bench_handshake, bench_records);
criterion_main!(benches);
