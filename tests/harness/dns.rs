//! A DNSSEC testbed on loopback: zones signed with ldns (ldns-keygen, ldns-signzone), served
//! by nsd on a port of its own, and a trust anchor file for a root zone of its own.
//!
//! Layout: `.` (its KSK is the trust anchor) delegates to `test.` with a DS; `test.` is
//! signed; `ins.test.` is delegated without a DS (insecure); `bogus.test.` is signed, but the
//! DS in `test.` names another key (bogus).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

use crate::certs::Pem;
use crate::node::free_port;

/// A running nsd with the zones; killed on drop.
pub struct Testbed {
    child: Child,
    pub addr: SocketAddr,
    pub anchor: PathBuf,
}

/// Records to add, as zone-file lines relative to their zone's origin.
#[derive(Default)]
pub struct Zones {
    /// Records in the signed zone `test.`.
    pub secure: Vec<String>,
    /// Records in the unsigned zone `ins.test.`.
    pub insecure: Vec<String>,
    /// Records in the zone `bogus.test.`.
    pub bogus: Vec<String>,
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} is needed for the DNSSEC testbed (apt-get install nsd ldnsutils): {e}"
            )
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn zone(origin: &str, records: &[String], extra: &str) -> String {
    let mut text = format!(
        "$ORIGIN {origin}\n$TTL 60\n@ IN SOA ns.test. admin.test. 1 3600 600 86400 60\n@ IN NS ns.test.\n{extra}"
    );
    for r in records {
        let _ = writeln!(text, "{r}");
    }
    text
}

fn keys(dir: &Path, origin: &str) -> (String, String) {
    let ksk = run(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", origin]);
    let zsk = run(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", origin]);
    (ksk, zsk)
}

impl Testbed {
    pub fn start(dir: &Path, zones: &Zones) -> Self {
        let dir = dir.join("dns");
        std::fs::create_dir_all(&dir).unwrap();
        // bogus.test: signed, but the parent's DS is for an unrelated key.
        let (bogus_ksk, bogus_zsk) = keys(&dir, "bogus.test.");
        std::fs::write(
            dir.join("bogus.zone"),
            zone("bogus.test.", &zones.bogus, ""),
        )
        .unwrap();
        run(
            &dir,
            "ldns-signzone",
            &["-n", "bogus.zone", &bogus_ksk, &bogus_zsk],
        );
        let (decoy, _) = keys(&dir, "bogus.test.");
        let wrong_ds = std::fs::read_to_string(dir.join(format!("{decoy}.ds"))).unwrap();

        std::fs::write(dir.join("ins.zone"), zone("ins.test.", &zones.insecure, "")).unwrap();

        let (ksk, zsk) = keys(&dir, "test.");
        let delegations = format!(
            "ns IN A 127.0.0.1\nins IN NS ns.test.\nbogus IN NS ns.test.\n{}\n",
            wrong_ds.trim()
        );
        std::fs::write(
            dir.join("test.zone"),
            zone("test.", &zones.secure, &delegations),
        )
        .unwrap();
        run(&dir, "ldns-signzone", &["-n", "test.zone", &ksk, &zsk]);
        let test_ds = std::fs::read_to_string(dir.join(format!("{ksk}.ds"))).unwrap();

        // A root of our own, delegating to `test.` with a DS: the trust anchor is its KSK.
        let (root_ksk, root_zsk) = keys(&dir, ".");
        let root = format!(
            "$ORIGIN .\n$TTL 60\n. IN SOA ns.test. admin.test. 1 3600 600 86400 60\n. IN NS ns.test.\ntest. IN NS ns.test.\nns.test. IN A 127.0.0.1\n{}\n",
            test_ds.trim()
        );
        std::fs::write(dir.join("root.zone"), root).unwrap();
        run(
            &dir,
            "ldns-signzone",
            &["-n", "root.zone", &root_ksk, &root_zsk],
        );

        // The trust anchor: the root KSK's DNSKEY, as a zone-file line with a TTL.
        let key = std::fs::read_to_string(dir.join(format!("{root_ksk}.key"))).unwrap();
        let dnskey = key
            .split(';')
            .next()
            .unwrap()
            .trim()
            .replacen("\tIN\t", " 3600 IN ", 1);
        let anchor = dir.join("anchor.key");
        std::fs::write(&anchor, format!("{dnskey}\n")).unwrap();

        let addr = free_port();
        let conf = dir.join("nsd.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  username: \"\"\n  chroot: \"\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\nzone:\n  name: \".\"\n  zonefile: \"root.zone.signed\"\nzone:\n  name: \"test.\"\n  zonefile: \"test.zone.signed\"\nzone:\n  name: \"ins.test.\"\n  zonefile: \"ins.zone\"\nzone:\n  name: \"bogus.test.\"\n  zonefile: \"bogus.zone.signed\"\n",
                ip = addr.ip(),
                port = addr.port(),
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("nsd")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsd is installed");
        let testbed = Self {
            child,
            addr,
            anchor,
        };
        testbed.wait_serving();
        testbed
    }

    /// nsd answers over TCP once it serves the zones.
    fn wait_serving(&self) {
        let deadline = std::time::Instant::now() + crate::WAIT;
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "nsd did not start");
            std::thread::yield_now();
        }
    }

    /// The `[dns]` section pointing a node at this testbed.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nservers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout_ms = 1000\n",
            self.addr,
            self.anchor.display()
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hex SHA-256 of the SubjectPublicKeyInfo in `pem` (TLSA `3 1 1` data).
pub fn spki_sha256_hex(pem: &Pem) -> String {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(&pem.cert).unwrap();
    let parsed = rustls::server::ParsedCertificate::try_from(&cert).unwrap();
    let digest = Sha256::digest(parsed.subject_public_key_info().as_ref());
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
