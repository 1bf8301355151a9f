#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn keys(dir: &Path) {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for stem in ["controlplane", "admin"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["cp.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join(format!("keys/{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("keys/{stem}.key")), key.serialize_pem()).unwrap();
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let path = dir.path().join("cp.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

const BASE: &str = "[controlplane]\nlisten = \"127.0.0.1:7400\"\ncertificate = \"keys/controlplane.crt\"\nprivate_key = \"keys/controlplane.key\"\n";

#[test]
fn the_example_config_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/controlplane/controlplane.toml");
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let copy = dir.path().join("controlplane/controlplane.toml");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&example, &copy).unwrap();
    let config = Config::load(&copy).unwrap();
    assert_eq!(config.admins.len(), 1);
    assert!(matches!(config.admins[0].credential, Credential::Key(_)));
    assert!(config.database.starts_with("sqlite://"));
    assert_eq!(config.ratchet, Duration::from_secs(720 * 3600));
    assert!(config.dns.is_none(), "the example's [dns] is commented out");
    // The commented [dns] section is real config: uncommented (less the anchor file, which
    // this machine may lack) it loads with the values it shows.
    let text = std::fs::read_to_string(&example).unwrap();
    let (head, dns) = text.split_once("#[dns]").unwrap();
    let dns: String = dns
        .lines()
        .filter(|l| l.starts_with('#') && !l.starts_with("#trust_anchor"))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    std::fs::write(&copy, format!("{head}[dns]\n{dns}")).unwrap();
    let dns = Config::load(&copy).unwrap().dns.unwrap();
    assert_eq!(dns.resolver.servers, ["127.0.0.1:53".parse().unwrap()]);
    assert_eq!(dns.refresh_max, Duration::from_secs(3600));
}

#[test]
fn errors_name_the_file_the_key_and_the_reason() {
    let cases = [
        (
            format!("{BASE}colour = \"blue\"\n"),
            "controlplane.colour",
            "unknown field `colour`",
        ),
        (
            BASE.replace("127.0.0.1:7400", "nowhere"),
            "controlplane.listen",
            "not an address:port",
        ),
        (
            format!("{BASE}corroboration = 0\n"),
            "controlplane.corroboration",
            "at least 1",
        ),
        (
            format!("{BASE}[[admin]]\nname = \"x\"\nrole = \"root\"\ntoken_sha256 = \"00\"\n"),
            "admin[0].role",
            "not admin or viewer",
        ),
        (
            format!("{BASE}[[admin]]\nname = \"x\"\nrole = \"admin\"\ntoken_sha256 = \"00\"\n"),
            "admin[0].token_sha256",
            "64 hex digits",
        ),
        (
            format!("{BASE}[[admin]]\nname = \"x\"\nrole = \"admin\"\n"),
            "admin[0]",
            "exactly one of",
        ),
        (
            BASE.replace("keys/controlplane.key", "keys/missing.key"),
            "controlplane.private_key",
            "missing.key",
        ),
        (
            format!("{BASE}next_certificate = \"keys/admin.crt\"\n"),
            "controlplane.next_private_key",
            "needs its private key",
        ),
        (
            format!("{BASE}next_private_key = \"keys/admin.key\"\n"),
            "controlplane.next_certificate",
            "needs its certificate",
        ),
        (
            format!(
                "{BASE}next_certificate = \"keys/gone.crt\"\nnext_private_key = \"keys/admin.key\"\n"
            ),
            "controlplane.next_certificate",
            "gone.crt",
        ),
    ];
    for (text, key, reason) in cases {
        let error = load(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"));
        let shown = error.to_string();
        assert!(shown.contains("cp.toml"), "{shown}");
        assert_eq!(error.key, key, "{shown}");
        assert!(error.reason.contains(reason), "{shown}");
    }
}

#[test]
fn a_postgres_url_is_kept_and_a_path_becomes_an_sqlite_url() {
    let pg = load(&format!("{BASE}database = \"postgres://u@db/osgate\"\n")).unwrap();
    assert_eq!(pg.database, "postgres://u@db/osgate");
    let file = load(&format!("{BASE}database = \"state/cp.db\"\n")).unwrap();
    assert!(file.database.starts_with("sqlite://") && file.database.contains("state/cp.db"));
}

#[test]
fn connection_caps_have_defaults_and_are_checked() {
    let config = load(BASE).unwrap();
    assert_eq!(
        (config.max_connections, config.max_connections_per_source),
        (16_384, 512)
    );
    let low = load(&format!(
        "{BASE}max_connections = 8\nmax_connections_per_source = 2\n"
    ))
    .unwrap();
    assert_eq!(
        (low.max_connections, low.max_connections_per_source),
        (8, 2)
    );
    let small = load(&format!("{BASE}max_connections = 8\n")).unwrap();
    assert_eq!(small.max_connections_per_source, 8);
    let err = load(&format!(
        "{BASE}max_connections = 2\nmax_connections_per_source = 3\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "controlplane.max_connections_per_source: must be between 1 and max_connections (2)"
        ),
        "{err}"
    );
    assert!(load(&format!("{BASE}max_connections = 0\n")).is_err());
}

#[test]
fn the_drain_timeout_has_a_default_and_the_next_key_is_optional() {
    let config = load(BASE).unwrap();
    assert_eq!(config.drain_timeout, Duration::from_secs(10));
    assert!(config.next_chain.is_none());
    let set = load(&format!(
        "{BASE}drain_timeout_ms = 2500\nnext_certificate = \"keys/admin.crt\"\nnext_private_key = \"keys/admin.key\"\n"
    ))
    .unwrap();
    assert_eq!(set.drain_timeout, Duration::from_millis(2500));
    assert_eq!(set.next_chain.map(|c| c.len()), Some(1));
}
