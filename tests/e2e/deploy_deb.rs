//! The osgate .deb: built from the release binaries by deploy/debian/build-deb.sh, lintian
//! clean, installed with dpkg (root, on a disposable machine such as CI's), its default
//! configs valid for the service user, its units verified in place, purged afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use osgate_tests::node::bin;

const PACKAGE: &str = "osgate";

fn run(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) => panic!("{program}: {e} (.ci/run installs what this suite needs)"),
    }
}

/// Runs a command that must succeed, and returns its standard output.
fn must(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn require_root() {
    let uid = must("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this suite installs a package with dpkg -i: run it as root on a disposable machine (CI does)"
    );
}

/// build-deb.sh on the binaries this test was built with (no rebuild): the .deb's path.
fn build() -> PathBuf {
    let target = bin("osgate")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/build-deb.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}: {}\n{stdout}{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.exists(),
        "no .deb in: {stdout}"
    );
    deb
}

/// No error and no warning (overrides, each with its reason, are in deploy/debian/).
fn lintian_clean(deb: &Path) {
    let output = run(
        "lintian",
        &["--fail-on", "error,warning", deb.to_str().unwrap()],
    );
    let tags = String::from_utf8_lossy(&output.stdout);
    let complaints: Vec<&str> = tags
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "lintian {}: {}\n{tags}{}",
        deb.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The package is purged when the test ends, however it ends.
struct Installed;

impl Installed {
    fn new(deb: &Path) -> Installed {
        // A package left by an interrupted earlier run would hide what postinst does.
        let output = purge();
        assert!(
            output.status.success(),
            "dpkg --purge {PACKAGE}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        must("dpkg", &["-i", deb.to_str().unwrap()]);
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // No assertion here: a panic while unwinding would abort and hide the first failure.
        let _ = purge();
    }
}

/// Purging a package that is not installed succeeds too.
fn purge() -> Output {
    run("dpkg", &["--purge", PACKAGE])
}

/// Runs a command as the user the units run as.
fn as_service_user(args: &[&str]) -> Output {
    let mut full = vec!["-u", "osgate", "--"];
    full.extend_from_slice(args);
    run("runuser", &full)
}

fn config_checks(program: &str, config: &str) {
    let output = as_service_user(&[program, "check-config", config]);
    assert!(
        output.status.success(),
        "{program} check-config {config} as osgate: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stat(path: &str) -> String {
    must("stat", &["-c", "%U:%G %a", path]).trim().to_owned()
}

fn installed_as_packaged() {
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    for file in ["/etc/osgate/node.toml", "/etc/osgate/controlplane.toml"] {
        assert!(
            conffiles.contains(file),
            "{file} is not a conffile: {conffiles}"
        );
    }
    // A system user without a login shell, for the units' User=.
    let user = must("getent", &["passwd", "osgate"]);
    assert!(
        user.trim_end().ends_with(":/usr/sbin/nologin"),
        "osgate user: {user}"
    );
    for key in ["node", "controlplane"] {
        assert_eq!(
            stat(&format!("/etc/osgate/keys/{key}.key")),
            "root:osgate 640"
        );
    }
    for page in ["osgate", "osgate-controlplane", "osgatectl"] {
        must("man", &["-w", page]);
    }
}

/// In place, with the installed binaries and man pages: nothing rewritten, nothing skipped.
fn installed_units_verify() {
    let units = [
        "/usr/lib/systemd/system/osgate.service",
        "/usr/lib/systemd/system/osgate-controlplane.service",
    ];
    let output = run("systemd-analyze", &["verify", units[0], units[1]]);
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {units:?}: {}\n{complaints}",
        output.status
    );
}

/// Installing again (an upgrade runs the same postinst) keeps this host's keys.
fn reinstall_keeps_the_keys(deb: &Path) {
    let before = std::fs::read("/etc/osgate/keys/node.crt").unwrap();
    must("dpkg", &["-i", deb.to_str().unwrap()]);
    let after = std::fs::read("/etc/osgate/keys/node.crt").unwrap();
    assert!(
        before == after,
        "reinstalling replaced /etc/osgate/keys/node.crt"
    );
}

#[test]
fn the_package_is_lintian_clean_installs_and_its_default_configs_check() {
    require_root();
    let deb = build();
    lintian_clean(&deb);
    let _installed = Installed::new(&deb);
    installed_as_packaged();
    config_checks("/usr/bin/osgate", "/etc/osgate/node.toml");
    config_checks(
        "/usr/bin/osgate-controlplane",
        "/etc/osgate/controlplane.toml",
    );
    installed_units_verify();
    reinstall_keeps_the_keys(&deb);
}

/// `osgate keygen` as postinst runs it, into `dir/keys/NAME.{crt,key}`.
fn keygen(dir: &Path, name: &str) {
    let (cert, key) = (
        dir.join(format!("keys/{name}.crt")),
        dir.join(format!("keys/{name}.key")),
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let osgate = bin("osgate");
    must(
        osgate.to_str().unwrap(),
        &["keygen", "--cert", cert, "--key", key, "--name", "gw.test"],
    );
}

/// The configs the package installs, checked without installing (no root needed): beside
/// keys made as postinst makes them, under the same relative names.
#[test]
fn the_packaged_configs_are_valid_beside_keys_made_as_postinst_makes_them() {
    let dir = tempfile::tempdir().unwrap();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian");
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    keygen(dir.path(), "node");
    keygen(dir.path(), "controlplane");
    for (program, file) in [
        ("osgate", "node.toml"),
        ("osgate-controlplane", "controlplane.toml"),
    ] {
        let config = dir.path().join(file);
        std::fs::copy(sources.join(file), &config).unwrap();
        must(
            bin(program).to_str().unwrap(),
            &["check-config", config.to_str().unwrap()],
        );
    }
}
