//! A real Postfix instance on a loopback port, in a temporary folder of its own
//! (`config_directory`, `queue_directory`, `data_directory`, its log and its maildirs), run as
//! root with `postfix -c DIR` and stopped on drop. The system instance (/etc/postfix, port
//! 25) is never touched: the only file read from /etc/postfix is the packaged metadata.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::certs::Pem;
use crate::node::free_port;

/// The domain a destination instance delivers into its maildir; `user@` it has a mailbox.
pub const DOMAIN: &str = "example.test";
pub const MAILBOX: &str = "user@example.test";

/// The uid/gid the virtual delivery agent writes maildirs as (it refuses root).
const NOBODY: (u32, u32) = (65534, 65534);

/// What an instance is for.
pub enum Role<'a> {
    /// Accepts mail for [`DOMAIN`] on its smtpd and delivers it into a maildir; offers
    /// STARTTLS with `tls` (cert and key), or no TLS at all.
    Destination { tls: Option<&'a Pem> },
    /// Relays every message it is given on its smtpd to `relayhost` with
    /// `smtp_tls_security_level = tls_level` (`none`, `may`, `encrypt`).
    Sender {
        relayhost: SocketAddr,
        tls_level: &'a str,
    },
}

/// A running instance; `postfix stop` on drop.
pub struct Postfix {
    dir: tempfile::TempDir,
    /// Its smtpd (SMTP in: the destination's inbox, or the sender's submission).
    pub smtpd: SocketAddr,
}

impl Postfix {
    pub fn start(role: &Role<'_>) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Postfix's daemons run as `postfix` and `nobody`: they must reach into the folder.
        set_mode(root, 0o755);
        for sub in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        chown(&root.join("data"), "postfix");
        std::os::unix::fs::chown(root.join("mail"), Some(NOBODY.0), Some(NOBODY.1)).unwrap();
        let smtpd = free_port();
        std::fs::write(root.join("etc/main.cf"), main_cf(root, role)).unwrap();
        std::fs::write(root.join("etc/master.cf"), master_cf(smtpd, role)).unwrap();
        std::fs::write(root.join("etc/vmailbox"), format!("{MAILBOX} user/\n")).unwrap();
        // Postfix waits (300 ms at a time) for a main.cf written this very second to settle.
        for file in ["etc/main.cf", "etc/master.cf"] {
            let past = std::time::SystemTime::now() - Duration::from_secs(10);
            let file = std::fs::File::options().write(true).open(root.join(file));
            file.unwrap().set_modified(past).unwrap();
        }
        let postfix = Postfix { dir, smtpd };
        postfix.control("start");
        postfix.wait_listening();
        postfix
    }

    /// The instance's config_directory (for `postfix -c`, `postqueue -c`, `sendmail -C`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn control(&self, command: &str) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg(command)
            .output()
            .expect("postfix is installed (apt-get install postfix)");
        assert!(
            out.status.success(),
            "postfix {command}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// `master -w` returns once the master runs; the smtpd socket then accepts.
    fn wait_listening(&self) {
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(self.smtpd).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its `maillog_file` so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `needles`; returns that line.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} after {WAIT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the queue manager to retry deferred mail now (`postqueue -f`).
    pub fn flush(&self) {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-f")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The messages delivered into the maildir so far, oldest first.
    pub fn messages(&self) -> Vec<PathBuf> {
        let new = self.dir.path().join("mail/user/new");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&new) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
    }

    /// Waits until the maildir holds `count` messages (polling, with the harness deadline);
    /// returns the newest one's bytes.
    pub fn wait_messages(&self, count: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let files = self.messages();
            if files.len() >= count {
                return std::fs::read(files[count - 1].clone()).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{count} message(s) not delivered after {WAIT:?} (have {}):\n{}",
                files.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg("stop")
            .output();
        // `stop` returns before the master has exited: wait for it before the folder goes.
        let pid = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .unwrap_or_default();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = Instant::now() + WAIT;
        while !pid.trim().is_empty() && proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A message as stored: its header lines unfolded (RFC 5322 §2.2.3) and its body.
pub fn split_message(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let text = String::from_utf8_lossy(message);
    let (head, _) = text.split_once("\n\n").unwrap_or((&text, ""));
    let body_at = message
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(message.len(), |i| i + 2);
    let mut headers: Vec<String> = Vec::new();
    for line in head.lines() {
        match (line.starts_with([' ', '\t']), headers.last_mut()) {
            (true, Some(last)) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => headers.push(line.to_owned()),
        }
    }
    (headers, message[body_at..].to_vec())
}

/// The `Received:` headers of `message`, newest (topmost) first.
pub fn received(message: &[u8]) -> Vec<String> {
    split_message(message)
        .0
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().starts_with("received:"))
        .collect()
}

fn main_cf(root: &Path, role: &Role<'_>) -> String {
    let d = root.display();
    let mut cf = format!(
        "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
         inet_interfaces = loopback-only\ninet_protocols = ipv4\nmydestination =\n\
         maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\nalias_maps =\nalias_database =\n\
         smtpd_banner = $myhostname ESMTP\n"
    );
    match role {
        Role::Destination { tls } => {
            let _ = write!(
                cf,
                "myhostname = dest.{DOMAIN}\nvirtual_mailbox_domains = {DOMAIN}\n\
                 virtual_mailbox_base = {d}/mail\nvirtual_mailbox_maps = texthash:{d}/etc/vmailbox\n\
                 virtual_uid_maps = static:{}\nvirtual_gid_maps = static:{}\n",
                NOBODY.0, NOBODY.1
            );
            if let Some(pem) = tls {
                let _ = write!(
                    cf,
                    "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\n\
                     smtpd_tls_key_file = {}\nsmtpd_tls_received_header = yes\nsmtpd_tls_loglevel = 1\n",
                    pem.cert.display(),
                    pem.key.display()
                );
            } else {
                cf.push_str("smtpd_tls_security_level = none\n");
            }
        }
        Role::Sender {
            relayhost,
            tls_level,
        } => {
            let _ = write!(
                cf,
                "myhostname = sender.test\nrelayhost = [{}]:{}\nsmtp_tls_security_level = {tls_level}\n\
                 smtp_tls_loglevel = 1\nsmtpd_tls_security_level = none\n\
                 smtp_connection_cache_on_demand = no\n",
                relayhost.ip(),
                relayhost.port()
            );
        }
    }
    cf
}

/// Only the services the role needs, none chrooted (the folder is not a jail).
fn master_cf(smtpd: SocketAddr, role: &Role<'_>) -> String {
    let mut cf = format!("{smtpd} inet n - n - - smtpd\n");
    cf.push_str(
        "cleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
         rewrite unix - - n - - trivial-rewrite\nbounce unix - - n - 0 bounce\n\
         defer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\nerror unix - - n - - error\n\
         retry unix - - n - - error\nanvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
         proxymap unix - - n - - proxymap\ntlsmgr unix - - n 1000? 1 tlsmgr\n\
         postlog unix-dgram n - n - 1 postlogd\n",
    );
    match role {
        Role::Destination { .. } => cf.push_str("virtual unix - n n - - virtual\n"),
        Role::Sender { .. } => {
            cf.push_str("smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n");
        }
    }
    cf
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, user: &str) {
    let out = Command::new("chown").arg(user).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
