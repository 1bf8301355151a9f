//! A throwaway PostgreSQL cluster on a loopback port: initdb, pg_ctl start, and stop on drop.
//! As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::node::free_port;

pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub addr: SocketAddr,
    options: String,
    log: PathBuf,
}

/// The server binaries of the newest installed PostgreSQL.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries under /usr/lib/postgresql/*/bin: apt-get install postgresql",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs `program` from the PostgreSQL bin dir, as `postgres` when we are root.
fn pg(bin: &Path, program: &str, args: &[&str]) {
    let path = bin.join(program);
    let output = match is_root() {
        true => Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&path)
            .args(args)
            .output(),
        false => Command::new(&path).args(args).output(),
    }
    .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Postgres {
    /// A new cluster with a database `osgate` owned by user `osgate`, trusted on loopback.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let addr = free_port();
        let data_text = data.to_str().unwrap();
        pg(
            &bin,
            "initdb",
            &[
                "-D",
                data_text,
                "-U",
                "osgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on -c max_connections=200",
            addr.port(),
            dir.path().display()
        );
        let log = dir.path().join("postgres.log");
        pg(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data_text,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        Postgres {
            _dir: dir,
            data,
            bin,
            addr,
            options,
            log,
        }
    }

    /// `psql` on the database `name`, as its owner, quiet and without a psqlrc.
    pub fn psql(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(self.as_owner())
            .arg(name);
        command
    }

    /// The client options that reach this server as the test databases' owner.
    fn as_owner(&self) -> [String; 6] {
        let port = self.addr.port().to_string();
        ["-h", "127.0.0.1", "-p", &port, "-U", "osgate"].map(str::to_owned)
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping its data.
    pub fn stop(&self) {
        let data = self.data.to_str().unwrap();
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", data, "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn start_again(&self) {
        let data = self.data.to_str().unwrap();
        let log = self.log.to_str().unwrap();
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", data, "-o", &self.options, "-l", log, "-w", "start"],
        );
    }

    /// The URL of the database `name`, created if needed.
    pub fn database(&self, name: &str) -> String {
        let mut args = self.as_owner().to_vec();
        args.push(name.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pg(&self.bin, "createdb", &args);
        format!("postgres://osgate@{}/{name}", self.addr)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        let path = self.bin.join("pg_ctl");
        let mut command = match is_root() {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            false => Command::new(path),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// Which store a control-plane scenario runs against.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// A database for one test: an SQLite file, or a fresh PostgreSQL cluster (kept alive by
/// the returned guard, which must outlive the control plane).
pub fn database(store: Store, dir: &Path) -> (Option<Postgres>, String) {
    match store {
        Store::Sqlite => (None, dir.join("cp.db").to_str().unwrap().to_owned()),
        Store::Postgres => {
            let pg = Postgres::start();
            let url = pg.database("osgate");
            (Some(pg), url)
        }
    }
}

/// Runs each scenario against both stores: `per_store!(name, ...)`.
#[macro_export]
macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::postgres::Store::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::postgres::Store::Postgres) })*
        }
    };
}
