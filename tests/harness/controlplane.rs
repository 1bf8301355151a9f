//! A real control plane process (SQLite file or PostgreSQL), `osgatectl` against it, and
//! node keys and `[controlplane]` sections for real nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::node::{bin, free_port, unique};
use crate::process::{Process, sample, scrape};

/// The admin token of every harness control plane.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// A viewer token.
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests";

/// A key made with `osgate keygen`.
#[derive(Clone, Debug)]
pub struct Key {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `sha256/<base64>`.
    pub pin: String,
}

/// Makes a key pair named `stem` in `dir`.
pub fn keygen(dir: &Path, stem: &str) -> Key {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let mut command = Command::new(bin("osgate"));
    command
        .args([
            "keygen",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--cert",
        ])
        .arg(&cert)
        .arg("--key")
        .arg(&key);
    let pin = crate::process::stdout_of(&mut command).trim().to_owned();
    Key { cert, key, pin }
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `osgatectl` did.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "osgatectl failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap()
    }
}

/// A control plane process. Killed on drop.
pub struct ControlPlane {
    pub process: Process,
    pub addr: SocketAddr,
    pub key: Key,
    pub metrics: SocketAddr,
    /// Its config file, to start it again.
    pub config: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane in `dir` on `database` (a path for SQLite, or a PostgreSQL
    /// URL) with `extra` lines in `[controlplane]`. Its key is made once per `dir`.
    pub fn start(dir: &Path, database: &str, extra: &str) -> ControlPlane {
        // Port 0: the control plane binds and says where, so no other test can take the
        // port between choosing and binding it.
        Self::start_on(dir, database, "127.0.0.1:0", extra)
    }

    /// [`ControlPlane::start`], listening on `listen`.
    pub fn start_on(dir: &Path, database: &str, listen: &str, extra: &str) -> ControlPlane {
        Self::start_with_env(dir, database, listen, extra, &[])
    }

    /// [`ControlPlane::start_on`] with `env` set for the process.
    pub fn start_with_env(
        dir: &Path,
        database: &str,
        listen: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> ControlPlane {
        let key_path = dir.join("controlplane.crt");
        let key = match key_path.exists() {
            true => Key {
                cert: key_path,
                key: dir.join("controlplane.key"),
                pin: std::fs::read_to_string(dir.join("controlplane.pin")).unwrap(),
            },
            false => {
                let key = keygen(dir, "controlplane");
                std::fs::write(dir.join("controlplane.pin"), &key.pin).unwrap();
                key
            }
        };
        let metrics = free_port();
        let config = format!(
            "[controlplane]\nlisten = \"{listen}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
             metrics = \"{metrics}\"\ndatabase = \"{database}\"\n{extra}\n\n\
             [[admin]]\nname = \"ops\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n\n\
             [[admin]]\nname = \"auditor\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
            key.cert.display(),
            key.key.display(),
            hex_sha256(ADMIN_TOKEN),
            hex_sha256(VIEWER_TOKEN),
        );
        let path = dir.join(format!("controlplane-{}.toml", unique()));
        std::fs::write(&path, config).unwrap();
        Self::run(path, key, metrics, env)
    }

    fn run(config: PathBuf, key: Key, metrics: SocketAddr, env: &[(&str, &str)]) -> ControlPlane {
        let mut command = Command::new(bin("osgate-controlplane"));
        command
            .args(["--log-format", "json", "run", "-c"])
            .arg(&config)
            .env("OSGATE_LOG", "info")
            .envs(env.iter().copied());
        let mut process = Process::spawn(command);
        let serving = process.wait_for(|v| v["message"] == "control plane serving");
        let addr = serving["listen"].as_str().unwrap().parse().unwrap();
        ControlPlane {
            process,
            addr,
            key,
            metrics,
            config,
        }
    }

    /// The same control plane (config, database, metrics port) started again; it listens on
    /// a new port.
    pub fn restart(&mut self) {
        self.process.kill9();
        let again = Self::run(self.config.clone(), self.key.clone(), self.metrics, &[]);
        *self = again;
    }

    /// Runs `osgatectl` with `token` (if any) and `args`.
    pub fn ctl(&self, token: Option<&str>, args: &[&str]) -> Ctl {
        let mut command = Command::new(bin("osgatectl"));
        command
            .env_clear()
            .env("OSGATE_SERVER", self.addr.to_string())
            .env("OSGATE_SERVER_PIN", &self.key.pin)
            .args(args);
        if let Some(token) = token {
            command.env("OSGATE_TOKEN", token);
        }
        let out = command.output().unwrap();
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `osgatectl -o json ARGS` as the admin; fails the test if it fails.
    pub fn admin_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.ctl(Some(ADMIN_TOKEN), &all).json()
    }

    /// Applies a policy file with `body` (TOML `[[policy]]` tables) and returns the reply.
    pub fn apply(&self, dir: &Path, body: &str, flags: &[&str]) -> Ctl {
        let file = dir.join(format!("policy-{}.toml", unique()));
        std::fs::write(&file, body).unwrap();
        let mut args = vec!["-o", "json", "apply", "-f", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        self.ctl(Some(ADMIN_TOKEN), &args)
    }

    /// The rows of `osgatectl get pins`.
    pub fn pin_rows(&self) -> Vec<Value> {
        self.admin_json(&["get", "pins"])["pins"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Registers a node by key, serving `addresses` (and assigned no peers).
    pub fn register(&self, name: &str, key: &Key, addresses: &[SocketAddr]) -> u64 {
        self.register_serving(name, key, addresses, &[])
    }

    /// Registers a node by key: its key covers `addresses`, and it reports pins for `peers`.
    pub fn register_serving(
        &self,
        name: &str,
        key: &Key,
        addresses: &[SocketAddr],
        peers: &[SocketAddr],
    ) -> u64 {
        let mut args = vec![
            "nodes".to_owned(),
            "register".into(),
            name.into(),
            "--spki".into(),
            key.pin.clone(),
        ];
        for a in addresses {
            args.extend(["--address".into(), a.to_string()]);
        }
        for p in peers {
            args.extend(["--peer".into(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        revision(&self.admin_json(&args))
    }

    /// A one-time enrolment token for node `name`: `osgatectl nodes enroll NAME` with
    /// `flags` (`--address`, `--peer`, `--ttl`).
    pub fn enroll_token(&self, name: &str, flags: &[&str]) -> String {
        let mut args = vec!["nodes", "enroll", name];
        args.extend_from_slice(flags);
        let out = self.ctl(Some(ADMIN_TOKEN), &args);
        assert_eq!(out.code, 0, "osgatectl nodes enroll: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    /// The node named `name` as `osgatectl get nodes -o json` shows it, if registered.
    pub fn node(&self, name: &str) -> Option<Value> {
        let nodes = self.nodes();
        let list = nodes["nodes"].as_array()?;
        list.iter().find(|n| n["name"] == name).cloned()
    }

    /// The audit log's actions and details, oldest first.
    pub fn audit(&self) -> Vec<(String, String, String)> {
        let log = self.admin_json(&["get", "audit"]);
        let entries = log["entries"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or("").to_owned();
                (field("who"), field("action"), field("detail"))
            })
            .collect()
    }

    /// The node statuses `osgatectl get nodes` shows, and the control plane's revision.
    pub fn nodes(&self) -> Value {
        self.admin_json(&["get", "nodes"])
    }

    /// The `[controlplane]` section for a node with `key`, persisting to `state`.
    pub fn section(&self, key: &Key, state: &Path, extra: &str) -> String {
        format!(
            "[controlplane]\naddress = \"{}\"\nserver_pin = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nstate = \"{}\"\nkeepalive_ms = 1000\n{extra}\n",
            self.addr,
            self.key.pin,
            key.cert.display(),
            key.key.display(),
            state.display()
        )
    }

    /// `osgate-controlplane ARGS` on this control plane's config (`backup`, `restore`,
    /// `tlsa`): exit code, stdout, stderr.
    pub fn command(&self, args: &[&str]) -> Ctl {
        let out = Command::new(bin("osgate-controlplane"))
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .unwrap();
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&scrape(self.metrics), name, labels)
    }
}

/// The revision in an `osgatectl -o json` reply.
pub fn revision(reply: &Value) -> u64 {
    reply["revision"].as_u64().unwrap()
}

/// Waits until `node` logged that it applied `revision` (or a later one).
pub fn wait_applied(node: &mut crate::Node, revision: u64) {
    node.wait_for(|v| {
        v["message"] == "applied control plane update"
            && v["revision"].as_u64().is_some_and(|r| r >= revision)
    });
}
