//! A DNSSEC testbed on loopback: zones signed with ldns (ldns-keygen, ldns-signzone) the ways
//! real operators sign them, served by nsd on a port of its own, and a trust anchor file for a
//! root zone of its own.
//!
//! Layout: `.` (its KSK is the trust anchor) delegates to `test.` with a DS; `test.` is
//! signed as [`Zones::signing`] says and delegates to `ins.test.` without a DS (insecure), to
//! `bogus.test.` with a DS naming another key (bogus), and to each of [`Zones::children`].

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
    test_zone: TestZone,
}

/// Records to add, as zone-file lines relative to their zone's origin.
#[derive(Default)]
pub struct Zones {
    /// Records in the signed zone `test.`.
    pub secure: Vec<String>,
    /// How `test.` is signed.
    pub signing: Signing,
    /// How the root is signed.
    pub root: Signing,
    /// Records in the unsigned zone `ins.test.`.
    pub insecure: Vec<String>,
    /// Records in the zone `bogus.test.`.
    pub bogus: Vec<String>,
    /// More zones delegated from `test.`.
    pub children: Vec<Zone>,
}

/// A zone `<label>.test.`, signed (with a DS in `test.`) or not.
pub struct Zone {
    pub label: &'static str,
    pub records: Vec<String>,
    pub signing: Option<Signing>,
}

/// DNSSEC algorithms (RFC 8624 §3.1: the two a signer should use today).
#[derive(Clone, Copy, Debug)]
pub enum Alg {
    EcdsaP256,
    Ed25519,
}

impl Alg {
    fn ldns(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ECDSAP256SHA256",
            Self::Ed25519 => "ED25519",
        }
    }
}

/// Authenticated denial of existence: NSEC (RFC 4034 §4) or NSEC3 (RFC 5155).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Denial {
    Nsec,
    #[default]
    Nsec3,
}

/// How a zone is signed: its keys, its denial, the validity of its signatures.
#[derive(Clone, Debug)]
pub struct Signing {
    ksks: Vec<Alg>,
    zsks: Vec<Alg>,
    denial: Denial,
    /// Every RRset signed with every algorithm (RFC 4035 §2.2), not only by the ZSKs.
    every_algorithm: bool,
    /// The signatures' validity (RFC 4034 §3.1.5): (inception, expiration) as ldns-signzone
    /// reads them; ldns's default (now, four weeks on) when `None`.
    validity: Option<(String, String)>,
}

impl Default for Signing {
    /// One ECDSA P-256 KSK and one ZSK, NSEC3.
    fn default() -> Self {
        Self::keys(&[Alg::EcdsaP256], &[Alg::EcdsaP256])
    }
}

impl Signing {
    pub fn keys(ksks: &[Alg], zsks: &[Alg]) -> Self {
        Self {
            ksks: ksks.to_vec(),
            zsks: zsks.to_vec(),
            denial: Denial::default(),
            every_algorithm: false,
            validity: None,
        }
    }

    /// A double-signature ZSK rollover (RFC 6781 §4.1.1.2): every RRset signed by two ZSKs.
    pub fn two_zsks() -> Self {
        Self::keys(&[Alg::EcdsaP256], &[Alg::EcdsaP256, Alg::EcdsaP256])
    }

    /// An algorithm rollover (RFC 6781 §4.1.4): KSK and ZSK of both algorithms, every RRset
    /// signed with both.
    pub fn algorithm_rollover() -> Self {
        Self {
            every_algorithm: true,
            ..Self::keys(
                &[Alg::EcdsaP256, Alg::Ed25519],
                &[Alg::EcdsaP256, Alg::Ed25519],
            )
        }
    }

    pub fn denial(mut self, denial: Denial) -> Self {
        self.denial = denial;
        self
    }

    pub fn expired(mut self) -> Self {
        self.validity = Some(("20200101000000".into(), "20200201000000".into()));
        self
    }

    /// Signatures valid from a minute ago until `until` (unix seconds): a zone whose
    /// signatures run out while a test runs.
    pub fn expiring_at(mut self, until: u64) -> Self {
        let from = unix_now().saturating_sub(60);
        self.validity = Some((from.to_string(), until.to_string()));
        self
    }

    /// Signs `<file>` for `origin` in `dir` into `<file>.signed` with new keys; the names of
    /// all its keys, KSKs first.
    fn sign(&self, dir: &Path, origin: &str, file: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for alg in &self.ksks {
            keys.push(run(dir, "ldns-keygen", &["-a", alg.ldns(), "-k", origin]));
        }
        for alg in &self.zsks {
            keys.push(run(dir, "ldns-keygen", &["-a", alg.ldns(), origin]));
        }
        self.sign_with(dir, file, &keys);
        keys
    }

    /// Signs `<file>` into `<file>.signed` with the existing `keys`.
    fn sign_with(&self, dir: &Path, file: &str, keys: &[String]) {
        // -A: the DNSKEY RRset signed by every key, as most signers do.
        let mut args = vec!["-A"];
        if self.denial == Denial::Nsec3 {
            args.push("-n");
        }
        if self.every_algorithm {
            args.push("-U");
        }
        if let Some((inception, expiration)) = &self.validity {
            args.extend(["-i", inception, "-e", expiration]);
        }
        args.push(file);
        args.extend(keys.iter().map(String::as_str));
        run(dir, "ldns-signzone", &args);
    }

    /// The KSKs among the key names [`Signing::sign`] returned.
    fn ksks<'a>(&self, keys: &'a [String]) -> &'a [String] {
        &keys[..self.ksks.len()]
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `.<ext>` files ldns-keygen wrote for `keys`, one after the other.
fn key_files(dir: &Path, keys: &[String], ext: &str) -> String {
    keys.iter()
        .map(|k| std::fs::read_to_string(dir.join(format!("{k}.{ext}"))).unwrap())
        .collect()
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

fn zone_text(origin: &str, records: &[String], extra: &str) -> String {
    zone_text_serial(origin, 1, records, extra)
}

fn zone_text_serial(origin: &str, serial: u32, records: &[String], extra: &str) -> String {
    let mut text = format!(
        "$ORIGIN {origin}\n$TTL 60\n@ IN SOA ns.test. admin.test. {serial} 3600 600 86400 60\n@ IN NS ns.test.\n{extra}"
    );
    for r in records {
        let _ = writeln!(text, "{r}");
    }
    text
}

/// Writes the zone `origin` to `<file>` and signs it if asked: the file nsd serves, the DS
/// records for the parent, and the names of the keys that signed it.
fn write_zone(
    dir: &Path,
    origin: &str,
    file: &str,
    text: &str,
    signing: Option<&Signing>,
) -> (String, String, Vec<String>) {
    std::fs::write(dir.join(file), text).unwrap();
    match signing {
        None => (file.to_owned(), String::new(), Vec::new()),
        Some(s) => {
            let keys = s.sign(dir, origin, file);
            let ds = key_files(dir, s.ksks(&keys), "ds");
            (format!("{file}.signed"), ds, keys)
        }
    }
}

/// What republishing `test.` needs: the zone's delegations, how it is signed and its keys
/// (new keys would need a new DS in the root), and its serial.
struct TestZone {
    dir: PathBuf,
    delegations: String,
    signing: Signing,
    keys: Vec<String>,
    serial: u32,
}

impl Testbed {
    pub fn start(dir: &Path, zones: &Zones) -> Self {
        let dir = dir.join("dns");
        std::fs::create_dir_all(&dir).unwrap();
        // (origin, file served)
        let mut served = Vec::new();
        let mut delegations = String::from("ns IN A 127.0.0.1\n");

        // bogus.test: signed, but the parent's DS is for an unrelated key.
        let signing = Signing::default();
        let text = zone_text("bogus.test.", &zones.bogus, "");
        let (file, _, _) = write_zone(&dir, "bogus.test.", "bogus.zone", &text, Some(&signing));
        served.push(("bogus.test.".to_owned(), file));
        let decoy = run(
            &dir,
            "ldns-keygen",
            &["-a", "ECDSAP256SHA256", "-k", "bogus.test."],
        );
        let decoy = std::fs::read_to_string(dir.join(format!("{decoy}.ds"))).unwrap();
        let _ = writeln!(delegations, "bogus IN NS ns.test.\n{}", decoy.trim());

        let text = zone_text("ins.test.", &zones.insecure, "");
        let (file, _, _) = write_zone(&dir, "ins.test.", "ins.zone", &text, None);
        served.push(("ins.test.".to_owned(), file));
        delegations.push_str("ins IN NS ns.test.\n");

        for child in &zones.children {
            let origin = format!("{}.test.", child.label);
            let text = zone_text(&origin, &child.records, "");
            let name = format!("{}.zone", child.label);
            let (file, ds, _) = write_zone(&dir, &origin, &name, &text, child.signing.as_ref());
            served.push((origin, file));
            let _ = writeln!(delegations, "{} IN NS ns.test.\n{}", child.label, ds.trim());
        }

        let text = zone_text("test.", &zones.secure, &delegations);
        let (file, test_ds, keys) =
            write_zone(&dir, "test.", "test.zone", &text, Some(&zones.signing));
        served.push(("test.".to_owned(), file));
        let test_zone = TestZone {
            dir: dir.clone(),
            delegations,
            signing: zones.signing.clone(),
            keys,
            serial: 1,
        };

        // A root of our own, delegating to `test.` with a DS: the trust anchor is its KSK.
        let root = format!(
            "$ORIGIN .\n$TTL 60\n. IN SOA ns.test. admin.test. 1 3600 600 86400 60\n. IN NS ns.test.\ntest. IN NS ns.test.\nns.test. IN A 127.0.0.1\n{}\n",
            test_ds.trim()
        );
        std::fs::write(dir.join("root.zone"), root).unwrap();
        let root_keys = zones.root.sign(&dir, ".", "root.zone");
        served.push((".".to_owned(), "root.zone.signed".to_owned()));

        // The trust anchor: the root KSKs' DNSKEYs, as zone-file lines with a TTL.
        let anchor = dir.join("anchor.key");
        let dnskeys: String = key_files(&dir, zones.root.ksks(&root_keys), "key")
            .lines()
            .filter_map(|line| line.split(';').next())
            .filter(|rr| !rr.trim().is_empty())
            .map(|rr| format!("{}\n", rr.trim().replacen("\tIN\t", " 3600 IN ", 1)))
            .collect();
        std::fs::write(&anchor, dnskeys).unwrap();

        let addr = free_port();
        let conf = dir.join("nsd.conf");
        std::fs::write(&conf, nsd_conf(&dir, addr, &served)).unwrap();
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
            test_zone,
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

    /// Replaces the records of `test.` with `secure` (a new serial, signed again with the same
    /// keys, as an operator publishes a change), has nsd reload it (SIGHUP), and waits until
    /// nsd serves the new serial.
    pub fn republish(&mut self, secure: &[String]) {
        let zone = &mut self.test_zone;
        zone.serial += 1;
        let text = zone_text_serial("test.", zone.serial, secure, &zone.delegations);
        std::fs::write(zone.dir.join("test.zone"), text).unwrap();
        zone.signing.sign_with(&zone.dir, "test.zone", &zone.keys);
        let pid = i32::try_from(self.child.id()).unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        let deadline = std::time::Instant::now() + crate::WAIT;
        while self.serial() != Some(self.test_zone.serial) {
            assert!(
                std::time::Instant::now() < deadline,
                "nsd did not load serial {}",
                self.test_zone.serial
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The serial of `test.` nsd serves now (drill, from ldnsutils).
    fn serial(&self) -> Option<u32> {
        let port = self.addr.port().to_string();
        let server = format!("@{}", self.addr.ip());
        let out = Command::new("drill")
            .args(["-p", &port, "test.", &server, "SOA"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let soa = text
            .lines()
            .filter(|l| !l.starts_with(';'))
            .find(|l| l.split_whitespace().nth(3) == Some("SOA"))?;
        soa.split_whitespace().nth(6)?.parse().ok()
    }

    /// The `[dns]` section pointing a node at this testbed.
    pub fn config(&self) -> String {
        self.config_via(self.addr)
    }

    /// The `[dns]` section pointing a node at `server` (a forwarder in front of this testbed).
    pub fn config_via(&self, server: SocketAddr) -> String {
        format!(
            "[dns]\nservers = [\"{server}\"]\ntrust_anchor = \"{}\"\ntimeout_ms = 1000\n",
            self.anchor.display()
        )
    }
}

fn nsd_conf(dir: &Path, addr: SocketAddr, served: &[(String, String)]) -> String {
    let mut conf = format!(
        "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  username: \"\"\n  chroot: \"\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\n",
        ip = addr.ip(),
        port = addr.port(),
        d = dir.display()
    );
    for (origin, file) in served {
        let _ = write!(
            conf,
            "zone:\n  name: \"{origin}\"\n  zonefile: \"{file}\"\n"
        );
    }
    conf
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
