//! One spelling per peer: `host:port` with the host lower-cased and a trailing dot removed,
//! applied at every API entry so an admin's `Mail.Example.:25` and a node's report of
//! `mail.example:25` are the same peer.

use std::collections::BTreeSet;

/// The canonical spelling of `peer` (`host:port` or `[v6]:port`); unchanged if it has no port.
pub fn canonical(peer: &str) -> String {
    let peer = peer.trim();
    match peer.rsplit_once(':') {
        Some((host, port)) => {
            let host = host.strip_suffix('.').unwrap_or(host);
            format!("{}:{port}", host.to_ascii_lowercase())
        }
        None => peer.to_ascii_lowercase(),
    }
}

/// Canonical, sorted and without duplicates.
pub fn canonical_set(peers: &[String]) -> Vec<String> {
    let set: BTreeSet<String> = peers.iter().map(|p| canonical(p)).collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_trailing_dot_do_not_make_another_peer() {
        assert_eq!(canonical("Mail.Example.:25"), "mail.example:25");
        assert_eq!(canonical("mail.example:25"), "mail.example:25");
        assert_eq!(canonical("[2001:DB8::1]:443"), "[2001:db8::1]:443");
        assert_eq!(
            canonical_set(&["B.example:1".into(), "b.example.:1".into(), "a:2".into()]),
            ["a:2", "b.example:1"]
        );
    }
}
