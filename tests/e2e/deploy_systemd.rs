//! The systemd units in deploy/systemd: `systemd-analyze verify` has nothing to say about
//! them, and their `systemd-analyze security` exposure does not rise above what was measured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use osgate_tests::node::bin;

/// Exposure scores measured with systemd 252 when the units were written (0 best, 10
/// worst). What is left is inherent: host network, no IP allow list, the node's
/// CAP_NET_BIND_SERVICE (deploy/systemd/README.md says why). A unit change that weakens
/// the sandbox fails here; one that strengthens it lowers the number.
const NODE_EXPOSURE: f64 = 1.4;
const CONTROLPLANE_EXPOSURE: f64 = 1.1;

fn unit_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name)
}

/// Runs systemd-analyze; its absence is a failure, not a skip (.ci/run installs `systemd`).
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(e) => panic!("systemd-analyze: {e}: install the `systemd` package (.ci/run does)"),
    }
}

/// The unit with its /usr/bin paths pointed at the binaries this test was built with, in a
/// folder of its own: verify checks that ExecStart and ExecReload name executables.
fn unit_with_built_binaries(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_file(name)).unwrap();
    let mut rewritten = text.clone();
    for binary in ["osgate-controlplane", "osgate"] {
        let from = format!("/usr/bin/{binary} ");
        let to = format!("{} ", bin(binary).display());
        rewritten = rewritten.replace(&from, &to);
    }
    assert_ne!(rewritten, text, "{name} names no /usr/bin binary");
    let path = dir.join(name);
    std::fs::write(&path, rewritten).unwrap();
    path
}

fn verify_is_silent(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binaries(name, dir.path());
    // --man=no: the man pages of Documentation= exist only once the .deb is installed
    // (deploy_deb verifies the installed units with them).
    let output = systemd_analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {name}: {}\n{complaints}",
        output.status
    );
}

/// The "Overall exposure level" that `systemd-analyze security --offline=yes` prints.
fn exposure(name: &str) -> f64 {
    let unit = unit_file(name);
    let output = systemd_analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "systemd-analyze security {name}: {}\n{report}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level for {name} in:\n{report}"));
    let value = line
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    value
        .parse()
        .unwrap_or_else(|_| panic!("`{line}`: no score"))
}

fn exposure_at_most(name: &str, limit: f64) {
    let score = exposure(name);
    assert!(
        score <= limit,
        "{name}: exposure {score} is above the {limit} measured when the unit was hardened"
    );
}

#[test]
fn the_node_unit_verifies_cleanly() {
    verify_is_silent("osgate.service");
}

#[test]
fn the_control_plane_unit_verifies_cleanly() {
    verify_is_silent("osgate-controlplane.service");
}

#[test]
fn the_node_unit_keeps_its_exposure_score() {
    exposure_at_most("osgate.service", NODE_EXPOSURE);
}

#[test]
fn the_control_plane_unit_keeps_its_exposure_score() {
    exposure_at_most("osgate-controlplane.service", CONTROLPLANE_EXPOSURE);
}

/// The node's default I/O driver is io_uring: its filter must let the three calls through
/// (a filter without them would push every node under systemd onto epoll).
#[test]
fn the_node_unit_lets_io_uring_through_its_system_call_filter() {
    let text = std::fs::read_to_string(unit_file("osgate.service")).unwrap();
    let filters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    let (denied, allowed): (Vec<&str>, Vec<&str>) =
        filters.iter().partition(|f| f.starts_with('~'));
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            allowed
                .iter()
                .any(|f| f.split_whitespace().any(|w| w == call)),
            "osgate.service: SystemCallFilter= does not allow {call}: {filters:?}"
        );
    }
    for deny in &denied {
        assert!(
            !deny.contains("io_uring") && !deny.contains("@aio"),
            "osgate.service: `SystemCallFilter={deny}` takes io_uring away"
        );
    }
}
