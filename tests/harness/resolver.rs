//! A validating resolver (unbound) in front of the DNSSEC testbed, for programs that only ask
//! the system resolver and trust its AD bit (Postfix's DANE, RFC 7672 §2.1.1), and a way to run
//! such a program with that resolver as its /etc/resolv.conf: a mount namespace of its own
//! (`unshare --mount`) with a private resolv.conf bound over the real one, which stays as it is.
//!
//! glibc's resolver cannot name a port, so unbound listens on port 53 of a loopback address of
//! its own in 127.0.0.0/8 (one per resolver: suites run in parallel).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::dns::Testbed;

/// A running unbound validating against the testbed's trust anchor; killed on drop.
pub struct Resolver {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    /// A resolv.conf naming it (with `trust-ad`: glibc passes the AD bit on only then).
    pub resolv_conf: PathBuf,
}

impl Resolver {
    pub fn start(dir: &Path, testbed: &Testbed) -> Resolver {
        let dir = dir.join("unbound");
        std::fs::create_dir_all(&dir).unwrap();
        let addr = free_address();
        let conf = dir.join("unbound.conf");
        std::fs::write(&conf, unbound_conf(&dir, addr, testbed)).unwrap();
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unbound is installed (apt-get install unbound)");
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!(
                "nameserver {}\noptions trust-ad attempts:1 timeout:5\n",
                addr.ip()
            ),
        )
        .unwrap();
        let resolver = Resolver {
            child,
            dir: dir.clone(),
            addr,
            resolv_conf,
        };
        resolver.wait_serving(&dir);
        resolver
    }

    /// unbound answers over TCP once it serves.
    fn wait_serving(&self, dir: &Path) {
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(self.addr).is_err() {
            let log = std::fs::read_to_string(dir.join("unbound.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "unbound did not start: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// unbound's log so far (validation failures are logged at `val-log-level: 2`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
    }

    /// `program args` with this resolver as its /etc/resolv.conf (nothing else changes):
    /// (succeeded, stdout + stderr).
    pub fn run(&self, program: &str, args: &[String]) -> (bool, String) {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
            .arg("sh")
            .arg(&self.resolv_conf)
            .arg(program)
            .args(args)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Port 53 on a loopback address nobody else binds now.
fn free_address() -> SocketAddr {
    let seed = std::process::id() as u64 * 7919 + crate::node::unique() * 104_729;
    for i in 0..200u64 {
        let n = seed + i * 31;
        let ip = Ipv4Addr::new(127, 53, (n % 250 + 1) as u8, ((n / 250) % 250 + 1) as u8);
        let addr = SocketAddr::from((ip, 53));
        let free = UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok();
        if free {
            return addr;
        }
    }
    panic!("no free loopback address for a resolver on port 53");
}

fn unbound_conf(dir: &Path, addr: SocketAddr, testbed: &Testbed) -> String {
    let d = dir.display();
    format!(
        "server:\n  interface: {ip}@53\n  port: 53\n  do-ip6: no\n  do-not-query-localhost: no\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  verbosity: 1\n  val-log-level: 2\n  \
         trust-anchor-file: \"{anchor}\"\n  access-control: 127.0.0.0/8 allow\n  \
         qname-minimisation: no\n  local-zone: \"test.\" nodefault\n  \
         module-config: \"validator iterator\"\nremote-control:\n  control-enable: no\n\
         stub-zone:\n  name: \".\"\n  stub-addr: {nsd}\n",
        ip = addr.ip(),
        anchor = testbed.anchor.display(),
        nsd = format_args!("{}@{}", testbed.addr.ip(), testbed.addr.port()),
    )
}
