//! The `osgate` command line: config errors name the file, the key and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use osgate_tests::certs;
use osgate_tests::node::osgate;

fn check(dir: &std::path::Path, body: &str) -> (i32, String) {
    let path = dir.join("osgate.toml");
    std::fs::write(&path, body).unwrap();
    osgate(&["check-config", path.to_str().unwrap()])
}

const OUT: &str = "[[outbound]]\nlisten = \"127.0.0.1:7001\"\npeer = \"gw.example.net:7443\"\n";

#[test]
fn a_valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(dir.path(), OUT);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn config_errors_exit_64_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("osgate.toml");
    let file = file.display();
    let cases = [
        (format!("{OUT}colour = \"blue\"\n"), "outbound[0].colour: unknown field `colour`"),
        ("[node]\nworkerz = 2\n".to_owned() + OUT, "node.workerz: unknown field `workerz`"),
        (OUT.replace("127.0.0.1:7001", "localhost"), "outbound[0].listen: `localhost` is not an IP address with a port"),
        (OUT.replace("gw.example.net:7443", "gw example:x"), "outbound[0].peer: `x` is not a port number"),
        (format!("{OUT}policy = \"sometimes\"\n"), "outbound[0].policy: unknown policy `sometimes`"),
        (format!("{OUT}policy = \"encrypt\"\nallow_cleartext_fallback = true\n"), "outbound[0].allow_cleartext_fallback: only meaningful"),
        ("[node]\nio = \"kqueue\"\n".to_owned() + OUT, "node.io: unknown variant `kqueue`"),
        ("[node]\ntls_groups = [\"x448\"]\n".to_owned() + OUT, "node.tls_groups: unknown group `x448`"),
        (
            "[[inbound]]\nlisten = \"0.0.0.0:7443\"\nbackend = \"127.0.0.1:8080\"\ncertificate = \"missing.crt\"\nprivate_key = \"missing.key\"\n".to_owned(),
            "inbound[0].certificate: cannot read PEM certificates from",
        ),
        (format!("{OUT}[[policy]]\nmatch = \"a b\"\nlevel = \"deny\"\n"), "policy[0].match: `a b` is not a selector"),
        (format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"paranoid\"\n"), "policy[0].level: unknown level `paranoid`"),
        (format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"authenticate\"\n"), "policy[0]: level = \"authenticate\" needs at least one method"),
        (
            format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"authenticate\"\nmethods = [\"pkix\"]\nallow_cleartext_fallback = true\n"),
            "policy[0]: allow_cleartext_fallback is only meaningful with level = \"opportunistic\"",
        ),
        (format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"authenticate\"\nmethods = [\"pinned\"]\n"), "policy[0]: method \"pinned\" needs at least one pin"),
        (format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"encrypt\"\npins = [\"sha1/x\"]\n"), "policy[0].pins: `sha1/x` is not a pin"),
        (format!("{OUT}[[policy]]\nmatch = \"a.test\"\nlevel = \"encrypt\"\nmin_tls = \"1.1\"\n"), "policy[0].min_tls: `1.1` is not 1.2 or 1.3"),
        (format!("{OUT}[tofu]\nstore = \"x\"\nmode = \"sometimes\"\n"), "tofu.mode: unknown variant `sometimes`"),
        ("[[outbound]\n".to_owned(), "-: "),
        (String::new(), "-: no [[outbound]] or [[inbound]] listener is configured"),
    ];
    for (body, expected) in cases {
        let (code, err) = check(dir.path(), &body);
        assert_eq!(code, 64, "{body}\n{err}");
        let expected = format!("config error: {file}: {expected}");
        assert!(
            err.starts_with(&expected),
            "expected `{expected}`, got `{err}`"
        );
    }
}

#[test]
fn unreadable_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certs::self_signed(dir.path(), "node", "gw.test");
    std::fs::write(&pem.key, "not a key").unwrap();
    let body = "[[inbound]]\nlisten = \"0.0.0.0:7443\"\nbackend = \"127.0.0.1:8080\"\ncertificate = \"node.crt\"\nprivate_key = \"node.key\"\n";
    let (code, err) = check(dir.path(), body);
    assert_eq!(code, 64);
    assert!(
        err.contains("inbound[0].private_key: cannot read a PEM private key from"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_a_config_error() {
    let (code, err) = osgate(&["check-config", "/nonexistent/osgate.toml"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("/nonexistent/osgate.toml: -: cannot read the file"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = dir.path().join("osgate.toml");
    std::fs::write(
        &path,
        format!("[[outbound]]\nlisten = \"{addr}\"\npeer = \"127.0.0.1:9\"\n"),
    )
    .unwrap();
    let (code, err) = osgate(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "cannot listen on {addr}: the address is already in use by another process"
        )),
        "{err}"
    );
}

/// Logs carry colour escapes only for a person at a terminal, never into journald or a file.
#[test]
fn logs_are_coloured_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // A node whose config is missing logs one error and exits; a control plane logs as it
    // starts, and `timeout` stops it.
    let cp = osgate_tests::controlplane::ControlPlane::start(
        dir.path(),
        dir.path().join("cp.db").to_str().unwrap(),
        "",
    );
    let cp_config = cp.config.clone();
    drop(cp);
    let node = osgate_tests::node::bin("osgate");
    let controlplane = osgate_tests::node::bin("osgate-controlplane");
    let commands = [
        format!("{} run -c /nonexistent/osgate.toml", node.display()),
        format!(
            "timeout -s INT 2 {} run -c {}",
            controlplane.display(),
            cp_config.display()
        ),
    ];
    for command in commands {
        let piped = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&piped.stderr);
        assert!(
            text.contains("INFO") || text.contains("ERROR"),
            "{command}: {text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "{command} coloured a pipe: {text:?}"
        );
        // The same command under a pseudo-terminal (util-linux `script`) is coloured.
        let tty = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&tty.stdout);
        assert!(text.contains('\u{1b}'), "{command} on a terminal: {text:?}");
    }
}
