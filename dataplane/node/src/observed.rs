//! The peers this node completed TLS with, for the control plane's fleet ratchet: one node's
//! experience protects every node on first contact. Process-wide, bounded, reported in
//! batches; a failed report keeps them for the next one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use osgate_core::outcome::TlsParams;

/// Peers remembered between reports; beyond it, new peers wait for the next report.
const MAX_PEERS: usize = 10_000;
/// A peer seen again within this many seconds is not reported again.
const RESEND_AFTER_SECS: u64 = 60;

/// What this node saw of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub tls_version: &'static str,
    pub group: &'static str,
    pub starttls: bool,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Changed since the control plane accepted it.
    dirty: bool,
}

static SEEN: Mutex<Option<HashMap<String, Seen>>> = Mutex::new(None);

/// "1.3" for `TLSv1_3`: the names the control plane stores.
fn version(params: &TlsParams) -> &'static str {
    match params.version {
        v if v.ends_with("1_3") || v.ends_with("1.3") => "1.3",
        v if v.ends_with("1_2") || v.ends_with("1.2") => "1.2",
        _ => "unknown",
    }
}

/// Notes a completed TLS session with `peer` at `now`.
pub fn saw(peer: &str, params: &TlsParams, starttls: bool, now: u64) {
    let mut guard = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = guard.get_or_insert_with(HashMap::new);
    let version = version(params);
    let room = seen.len() < MAX_PEERS;
    match seen.get_mut(peer) {
        Some(s) => {
            let newer = version > s.tls_version || starttls != s.starttls;
            if newer || now >= s.last_seen.saturating_add(RESEND_AFTER_SECS) {
                s.tls_version = s.tls_version.max(version);
                s.group = params.group;
                s.starttls |= starttls;
                s.last_seen = now;
                s.dirty = true;
            }
        }
        None if room => {
            let s = Seen {
                tls_version: version,
                group: params.group,
                starttls,
                first_seen: now,
                last_seen: now,
                dirty: true,
            };
            seen.insert(peer.to_owned(), s);
        }
        None => {}
    }
}

/// The peers changed since the last accepted report, at most `limit`.
pub fn pending(limit: usize) -> Vec<(String, Seen)> {
    let guard = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    guard
        .iter()
        .flatten()
        .filter(|(_, s)| s.dirty)
        .take(limit)
        .map(|(peer, s)| (peer.clone(), s.clone()))
        .collect()
}

/// The control plane took these: clean unless seen again since.
pub fn accepted(sent: &[(String, Seen)]) {
    let mut guard = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    for (peer, sent) in sent {
        if let Some(s) = guard.as_mut().and_then(|seen| seen.get_mut(peer)) {
            if s.last_seen == sent.last_seen {
                s.dirty = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(version: &'static str) -> TlsParams {
        TlsParams {
            version,
            suite: "s",
            group: "X25519",
            resumed: false,
        }
    }

    #[test]
    fn reports_once_until_seen_again_later_or_better() {
        saw("o.test:1", &params("TLSv1_2"), false, 100);
        let first = pending(usize::MAX);
        let mine: Vec<_> = first
            .iter()
            .filter(|(p, _)| p == "o.test:1")
            .cloned()
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].1.tls_version, "1.2");
        accepted(&mine);
        saw("o.test:1", &params("TLSv1_2"), false, 110);
        assert!(!pending(usize::MAX).iter().any(|(p, _)| p == "o.test:1"));
        saw("o.test:1", &params("TLSv1_3"), false, 120);
        let again: Vec<_> = pending(usize::MAX)
            .into_iter()
            .filter(|(p, _)| p == "o.test:1")
            .collect();
        assert_eq!(again[0].1.tls_version, "1.3");
        assert_eq!((again[0].1.first_seen, again[0].1.last_seen), (100, 120));
    }
}
