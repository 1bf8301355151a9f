use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/osgate/osgate.toml"))
}

const OUT: &str = "[[outbound]]\nlisten = \"127.0.0.1:7001\"\npeer = \"gw.example.net:7443\"\n";

#[test]
fn defaults_are_opportunistic_with_post_quantum_first() {
    let config = parse(OUT).unwrap();
    let out = &config.outbound[0];
    assert_eq!(
        (out.level, out.allow_cleartext_fallback),
        (Level::Opportunistic, true)
    );
    assert!(config.policy.is_empty());
    // TOFU and the ratchet are on by default, with the store in the state folder.
    let tofu = config.tofu.as_ref().unwrap();
    assert!(tofu.enforce && tofu.default_store);
    assert_eq!(
        tofu.store,
        config.node.state_dir.join(super::DEFAULT_PIN_STORE)
    );
    assert_eq!(config.node.drain_timeout, Duration::from_secs(25));
    assert_eq!(tofu.ratchet, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        out.peer,
        HostPort {
            host: Host::Name("gw.example.net".into()),
            port: 7443
        }
    );
    assert_eq!(config.node.io, IoChoice::Auto);
    assert_eq!(config.node.tls_groups, KxGroup::DEFAULT);
    assert_eq!(config.node.timeouts.peek, Duration::from_secs(3));
    assert!(config.node.metrics_listen.is_none());
}

#[test]
fn peers_may_be_addresses_including_ipv6() {
    let config = parse(&OUT.replace("gw.example.net:7443", "[::1]:7443")).unwrap();
    assert_eq!(
        config.outbound[0].peer.host,
        Host::Ip("::1".parse().unwrap())
    );
    assert_eq!(config.outbound[0].peer.to_string(), "[::1]:7443");
}

#[test]
fn errors_name_file_key_and_reason() {
    let err = parse(&format!(
        "{OUT}[[outbound]]\nlisten = \"127.0.0.1:7001\"\npeer = \"x.test:1\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/osgate/osgate.toml: outbound[1].listen: 127.0.0.1:7001 is configured twice"
    );
    let err = parse(&format!("[node]\nidle_timeout_ms = 0\n{OUT}")).unwrap_err();
    assert_eq!(err.key, "node.idle_timeout_ms");
    let err = parse(&format!("[node]\ntls_groups = []\n{OUT}")).unwrap_err();
    assert_eq!(
        (err.key.as_str(), err.reason.as_str()),
        ("node.tls_groups", "at least one group is needed")
    );
    let err = parse("[node]\nworkers = -1\n").unwrap_err();
    assert_eq!(err.key, "node.workers");
    // Before: `ratchet_hours * 3600` wrapped to a ratchet of a few seconds.
    let huge = format!("{OUT}[tofu]\nratchet_hours = {}\n", u64::MAX / 1000);
    let err = parse(&huge).unwrap_err();
    assert_eq!(err.key, "tofu.ratchet_hours", "{err}");
    let twins = "[[policy]]\nmatch = \"*.b.test\"\nlevel = \"encrypt\"\n[[policy]]\nmatch = \"*.B.test.\"\nlevel = \"cleartext\"\n";
    let err = parse(&format!("{OUT}{twins}")).unwrap_err();
    assert_eq!(err.key, "policy[1]", "{err}");
    let same_level = twins.replace("cleartext", "encrypt");
    parse(&format!("{OUT}{same_level}")).unwrap();
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let validator = Validator {
        path: Path::new("/etc/osgate/osgate.toml"),
        files: Default::default(),
    };
    assert_eq!(
        validator.resolve("keys/node.crt"),
        Path::new("/etc/osgate/keys/node.crt")
    );
    assert_eq!(
        validator.resolve("/abs/node.crt"),
        Path::new("/abs/node.crt")
    );
}

/// Every example under deploy/examples parses, with keys made for it where it names some.
#[test]
fn every_deploy_example_parses() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for key in ["node", "controlplane"] {
        crate::keygen::generate(
            &["gw.test".into()],
            &dir.path().join(format!("keys/{key}.crt")),
            &dir.path().join(format!("keys/{key}.key")),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("keys/trust-anchor.key"),
        ". 3600 IN DNSKEY 257 3 13 9HVjWlF2BTVAX4VyfVahw+ReTOEnilNmJ03bT+LvtvV3ehZGjgSrUNLaK4gLB/OCHbN/6RChNOf7wEQmLpbn1g==\n",
    )
    .unwrap();
    let mut parsed = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let copy = dir.path().join(path.file_name().unwrap());
            if let Err(e) = Config::parse(&text, &copy) {
                panic!("{}: {e}", path.display());
            }
            parsed += 1;
        }
    }
    assert!(parsed >= 3, "found {parsed} examples");
}

#[test]
fn tofu_and_the_ratchet_can_be_turned_off_together() {
    let text = "[[outbound]]\nlisten = \"127.0.0.1:7001\"\npeer = \"127.0.0.1:7443\"\n\n[tofu]\nmode = \"off\"\nratchet_hours = 0\n";
    let config = Config::parse(text, Path::new("/etc/osgate/node.toml")).unwrap();
    assert!(config.tofu.is_none());
    let ratchet_only = text.replace("ratchet_hours = 0", "ratchet_hours = 1");
    let config = Config::parse(&ratchet_only, Path::new("/etc/osgate/node.toml")).unwrap();
    let tofu = config.tofu.unwrap();
    assert!(!tofu.enforce && tofu.store == config.node.state_dir.join("pins"));
}

#[test]
fn dane_is_on_by_default_with_the_system_resolvers_and_the_root_anchor() {
    let config = parse(OUT).unwrap();
    let dns = config.dns.unwrap();
    assert!(!dns.explicit && dns.servers.is_empty() && dns.trust_anchor.is_none());
    assert_eq!(dns.anchor_zone, ".");
    let off = parse(&format!("{OUT}\n[dns]\ndane = false\n")).unwrap();
    assert!(off.dns.is_none());
    let servers_only = parse(&format!("{OUT}\n[dns]\nservers = [\"192.0.2.53\"]\n")).unwrap();
    let dns = servers_only.dns.unwrap();
    assert!(dns.explicit && dns.trust_anchor.is_none());
    assert_eq!(
        dns.servers,
        ["192.0.2.53:53".parse::<SocketAddr>().unwrap()]
    );
}

/// CONFORMANCE F.36: connection caps, with defaults, validated.
#[test]
fn connection_caps_have_defaults_and_are_validated() {
    let caps = parse(OUT).unwrap().node.caps;
    assert_eq!((caps.total, caps.per_source), (10_000, 1_000));
    let set = "[node]\nmax_connections = 5\nmax_connections_per_source = 2\n";
    let caps = parse(&format!("{set}{OUT}")).unwrap().node.caps;
    assert_eq!((caps.total, caps.per_source), (5, 2));
    let err = parse(&format!("[node]\nmax_connections = 0\n{OUT}")).unwrap_err();
    assert_eq!(
        (err.key.as_str(), err.reason.as_str()),
        ("node.max_connections", "must be at least 1")
    );
    for per_source in [0, 6] {
        let text = format!(
            "[node]\nmax_connections = 5\nmax_connections_per_source = {per_source}\n{OUT}"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.reason.as_str()),
            (
                "node.max_connections_per_source",
                "must be between 1 and node.max_connections (5)"
            )
        );
    }
}

#[test]
fn state_lives_in_the_state_folder_never_beside_a_read_only_config() {
    let config = parse(&format!("[node]\nstate_dir = \"/srv/osgate\"\n{OUT}")).unwrap();
    assert_eq!(config.node.state_dir, Path::new("/srv/osgate"));
    assert_eq!(config.tofu.unwrap().store, Path::new("/srv/osgate/pins"));
    let relative = parse(&format!("[node]\nstate_dir = \"state\"\n{OUT}")).unwrap();
    assert_eq!(relative.node.state_dir, Path::new("/etc/osgate/state"));
}

#[test]
fn the_state_folder_defaults_to_systemds_then_the_installed_one() {
    // Read, not set: setting the environment would race the other tests' threads.
    let default = parse(OUT).unwrap().node.state_dir;
    match std::env::var_os("STATE_DIRECTORY") {
        Some(dirs) => {
            let first = dirs.to_string_lossy().split(':').next().unwrap().to_owned();
            assert_eq!(default, Path::new(&first));
        }
        None => assert_eq!(default, Path::new("/var/lib/osgate")),
    }
}

#[test]
fn a_next_key_comes_with_both_files_and_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
    crate::keygen::generate(&["next.test".into()], &cert, &key).unwrap();
    let inbound = |next: &str| {
        format!(
            "[[inbound]]\nlisten = \"127.0.0.1:7443\"\nbackend = \"127.0.0.1:80\"\ncertificate = \"{c}\"\nprivate_key = \"{k}\"\n{next}",
            c = cert.display(),
            k = key.display()
        )
    };
    let both = format!(
        "next_certificate = \"{}\"\nnext_private_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let config = parse(&inbound(&both)).unwrap();
    assert!(config.inbound[0].next_identity.is_some());
    assert_eq!(config.files.len(), 4, "{:?}", config.files);
    let only_cert = format!("next_certificate = \"{}\"\n", cert.display());
    let err = parse(&inbound(&only_cert)).unwrap_err();
    assert_eq!(err.key, "inbound[0].next_private_key", "{err}");
    let err = parse(&format!("[node]\ndrain_timeout_ms = 0\n{}", inbound(""))).unwrap_err();
    assert_eq!(err.key, "node.drain_timeout_ms", "{err}");
}

const SMTP_IN: &str = "[[inbound]]\nlisten = \"127.0.0.1:2525\"\nbackend = \"127.0.0.1:10026\"\n\
    certificate = \"c.pem\"\nprivate_key = \"k.pem\"\nprotocol = \"smtp\"\n";

#[test]
fn smtp_outbound_by_mx_defaults_to_port_25_and_rfc_timeouts() {
    let config = parse(
        "[smtp]\nhelo_name = \"relay.example.org\"\n[[outbound]]\nlisten = \"127.0.0.1:10025\"\n\
         peer = \"mx:Example.NET\"\nprotocol = \"smtp\"\n",
    )
    .unwrap();
    let out = &config.outbound[0];
    let smtp = out.smtp.as_ref().unwrap();
    assert!(smtp.by_mx);
    assert_eq!(smtp.helo, "relay.example.org");
    assert_eq!(smtp.timeouts.greeting, Duration::from_secs(300));
    assert_eq!(out.peer.to_string(), "example.net:25");
    let config = parse(
        "[[outbound]]\nlisten = \"127.0.0.1:10025\"\npeer = \"mx:example.net:2526\"\n\
         protocol = \"smtp\"\nhelo_name = \"gw.example.org\"\ncommand_timeout_ms = 1500\n",
    )
    .unwrap();
    let smtp = config.outbound[0].smtp.as_ref().unwrap();
    assert_eq!(config.outbound[0].peer.port, 2526);
    assert_eq!(
        (smtp.helo.as_str(), smtp.timeouts.command),
        ("gw.example.org", Duration::from_millis(1500))
    );
}

#[test]
fn smtp_keys_are_refused_on_tcp_listeners_and_cleartext_on_smtp_ones() {
    let cases = [
        (
            format!("{OUT}starttls = \"offer\"\n"),
            "outbound[0].starttls: unknown field `starttls`",
        ),
        (
            OUT.replace("gw.example.net:7443", "mx:example.net"),
            "outbound[0].peer: only with protocol = \"smtp\"",
        ),
        (
            format!("{OUT}helo_name = \"a.example\"\n"),
            "outbound[0].helo_name: only with protocol = \"smtp\"",
        ),
        (
            format!("{SMTP_IN}cleartext = \"allow\"\n"),
            "inbound[0].cleartext: an SMTP listener always starts in cleartext",
        ),
        (
            format!("{SMTP_IN}starttls = \"maybe\"\n"),
            "inbound[0].starttls: unknown variant `maybe`",
        ),
        (
            "[smtp]\nhelo_name = \"not a name\"\n".to_owned() + OUT,
            "smtp.helo_name: `not a name` is not a domain name",
        ),
        (
            "[dns]\ndane = false\n[[outbound]]\nlisten = \"127.0.0.1:1\"\npeer = \"mx:a.example\"\nprotocol = \"smtp\"\n".to_owned(),
            "outbound[0].peer: `mx:` peers need [dns]'s resolver",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}\n  expected: {expected}");
    }
}
