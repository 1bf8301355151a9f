//! Build policy: crypto comes from aws-lc-rs alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `ring` and `openssl-sys` are not compiled into anything the workspace builds.
///
/// Cargo.lock may still *list* `ring`: Cargo records optional dependencies that are only
/// named through weak features (rustls-webpki's `alloc = ["ring?/alloc"]`) even when nothing
/// enables them. The resolved build graph is what links, so that is what this checks.
#[test]
fn ring_and_openssl_are_not_in_the_build_graph() {
    for krate in ["ring", "openssl-sys", "openssl"] {
        let out = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args([
                "tree",
                "--workspace",
                "--all-targets",
                "--target",
                "all",
                "-e",
                "normal,build,dev",
                "-i",
                krate,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.trim().is_empty(),
            "{krate} is in the build graph:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn cargo_lock_has_no_openssl_sys() {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    assert!(!lock.contains("name = \"openssl-sys\""));
}
