//! The capability store: TOFU pins and the ratchet, in one durable file.
//!
//! Durable means: every change is written to a temporary file, fsynced, renamed over the
//! store and the folder fsynced, so a kill -9 at any point leaves the old or the new store,
//! never a torn one. The last line is a SHA-256 of everything before it, so truncation and
//! corruption are detected at load. A store that is missing, truncated or corrupt is
//! *unavailable*: peers that TOFU would check are refused (never "verification off") until
//! it is repaired (`osgate pins init` creates an empty one).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use osgate_core::auth::Tofu;
use osgate_core::fleet::PinState;
use osgate_core::pin::SpkiPin;
pub use osgate_core::plan::PinUpdate;

const HEADER: &str = "# osgate capability store v1";

/// One peer's pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinRecord {
    pub pin: SpkiPin,
    pub first_seen: u64,
    pub last_seen: u64,
    pub state: PinState,
    /// A next key an operator vouched for (planned rotation): accepted alongside `pin`, and
    /// promoted when the peer first presents it.
    pub next: Option<SpkiPin>,
    /// The last key refused as `key-changed`, and when: what `osgate pins show` puts next to
    /// the pinned key (CONFORMANCE D.25).
    pub refused: Option<(SpkiPin, u64)>,
}

/// The store's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// By `host:port`.
    pub pins: BTreeMap<String, PinRecord>,
    /// `host:port` → Unix time until which TLS is mandatory.
    pub ratchet: BTreeMap<String, u64>,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: cannot read the capability store: {source} (create one with `osgate pins init`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the capability store is corrupt or truncated: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: cannot write the capability store: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Contents {
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|why| StoreError::Corrupt {
            path: path.to_owned(),
            why,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .ok_or("no checksum line")?;
        let (body, last) = text.split_at(body_end + 1);
        let checksum = last
            .trim_end()
            .strip_prefix("checksum ")
            .ok_or("no checksum line")?;
        if checksum != SpkiPin::of_spki(body.as_bytes()).to_string() {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err("unknown header".into());
        }
        let mut contents = Self::default();
        for (n, line) in lines.enumerate() {
            contents
                .parse_line(line)
                .ok_or_else(|| format!("line {} is malformed", n + 2))?;
        }
        Ok(contents)
    }

    fn parse_line(&mut self, line: &str) -> Option<()> {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["pin", peer, pin, first, last, state] => {
                let record = PinRecord {
                    pin: SpkiPin::parse(pin).ok()?,
                    first_seen: first.parse().ok()?,
                    last_seen: last.parse().ok()?,
                    state: PinState::from_name(state)?,
                    next: None,
                    refused: None,
                };
                self.pins.insert((*peer).to_owned(), record);
            }
            ["next", peer, pin] => {
                self.pins.get_mut(*peer)?.next = Some(SpkiPin::parse(pin).ok()?);
            }
            ["refused", peer, pin, at] => {
                let refused = (SpkiPin::parse(pin).ok()?, at.parse().ok()?);
                self.pins.get_mut(*peer)?.refused = Some(refused);
            }
            ["ratchet", peer, until] => {
                self.ratchet.insert((*peer).to_owned(), until.parse().ok()?);
            }
            _ => return None,
        }
        Some(())
    }

    fn render(&self) -> String {
        let mut body = format!("{HEADER}\n");
        for (peer, r) in &self.pins {
            let _ = writeln!(
                body,
                "pin {peer} {} {} {} {}",
                r.pin,
                r.first_seen,
                r.last_seen,
                r.state.as_str()
            );
        }
        for (peer, next) in self.pins.iter().filter_map(|(p, r)| Some((p, r.next?))) {
            let _ = writeln!(body, "next {peer} {next}");
        }
        for (peer, (key, at)) in self.pins.iter().filter_map(|(p, r)| Some((p, r.refused?))) {
            let _ = writeln!(body, "refused {peer} {key} {at}");
        }
        for (peer, until) in &self.ratchet {
            let _ = writeln!(body, "ratchet {peer} {until}");
        }
        // A SHA-256 of the body, written in the same form as pins.
        let checksum = SpkiPin::of_spki(body.as_bytes());
        body + &format!("checksum {checksum}\n")
    }

    /// Writes the store atomically (temp file, fsync, rename, fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        crate::durable::write_atomic(path, self.render().as_bytes()).map_err(|source| {
            StoreError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// What the store holds for one peer, as the decision reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// An operator's pin (`osgate pins add`) and its vouched successor.
    pub operator: Vec<SpkiPin>,
    pub tofu: Tofu,
    pub ratchet: bool,
}

/// The store as a running node uses it.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: Mutex<Loaded>,
    ratchet_ttl_secs: u64,
}

/// The store as last read, and when the file was last looked at.
#[derive(Debug)]
struct Loaded {
    /// `None`: unavailable (logged loudly).
    contents: Option<Contents>,
    /// The file's identity when `contents` was read or written.
    version: Option<Version>,
}

/// A file's identity: every save renames a new file over the store, so the inode changes.
type Version = (u64, std::time::SystemTime, u64);

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.modified().ok()?, meta.len()))
}

impl Store {
    pub fn open(path: PathBuf, ratchet_ttl_secs: u64) -> (Self, Option<StoreError>) {
        let (contents, error) = match Contents::load(&path) {
            Ok(contents) => (Some(contents), None),
            Err(e) => (None, Some(e)),
        };
        let loaded = Loaded {
            contents,
            version: version(&path),
        };
        let store = Self {
            path,
            state: Mutex::new(loaded),
            ratchet_ttl_secs,
        };
        (store, error)
    }

    /// Whether the store is usable now (re-read first if the file changed).
    pub fn check(&self) -> Result<(), String> {
        match self.lock().is_some() {
            true => Ok(()),
            false => Err(format!("{} cannot be read", self.path.display())),
        }
    }

    /// What the store knows of `peer` at `now`. An unavailable store commits every peer to
    /// TLS and checks every key against nothing (never "verification off").
    pub fn lookup(&self, peer: &str, now: u64) -> Known {
        let guard = self.lock();
        let Some(c) = &*guard else {
            return Known {
                operator: Vec::new(),
                tofu: Tofu::StoreUnavailable,
                ratchet: true,
            };
        };
        let record = c.pins.get(peer);
        let operator = match record {
            Some(r) if r.state == PinState::Approved => {
                [Some(r.pin), r.next].into_iter().flatten().collect()
            }
            _ => Vec::new(),
        };
        let tofu = match record {
            None => Tofu::Unknown,
            Some(r) if r.state == PinState::Revoked => Tofu::Revoked,
            // An operator's pin is evidence of its own, above DANE, not a TOFU pin.
            Some(r) if r.state == PinState::Approved => Tofu::Unknown,
            Some(PinRecord {
                pin,
                next: Some(next),
                ..
            }) => Tofu::Rotating {
                current: *pin,
                next: *next,
            },
            Some(r) => Tofu::Pinned(r.pin),
        };
        let ratchet = c.ratchet.get(peer).is_some_and(|until| *until > now);
        Known {
            operator,
            tofu,
            ratchet,
        }
    }

    /// Remembers `key` as the last key `peer` presented and was refused for (`key-changed`).
    pub fn record_refused(&self, peer: &str, key: SpkiPin, now: u64) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let Some(record) = guard.as_mut().and_then(|c| c.pins.get_mut(peer)) else {
            return Ok(());
        };
        if record.refused.is_some_and(|(k, _)| k == key) {
            return Ok(());
        }
        record.refused = Some((key, now));
        self.save(&mut guard)
    }

    /// Pins this node learned itself (not those an operator set), for reporting to the
    /// control plane: `(peer, key, first seen)`.
    pub fn learned(&self) -> Vec<(String, SpkiPin, u64)> {
        let guard = self.lock();
        let Some(c) = &*guard else { return Vec::new() };
        c.pins
            .iter()
            .filter(|(_, r)| r.state == PinState::Learned)
            .map(|(peer, r)| (peer.clone(), r.pin, r.first_seen))
            .collect()
    }

    /// Records a TLS connection to `peer` at `now`: extends the ratchet, and updates the pin
    /// as `update` says. Persists only when something changed.
    pub fn record_tls(
        &self,
        peer: &str,
        pin: Option<SpkiPin>,
        update: PinUpdate,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let Some(contents) = guard.as_mut() else {
            return Ok(());
        };
        let mut changed = false;
        if self.ratchet_ttl_secs > 0 {
            let until = now.saturating_add(self.ratchet_ttl_secs);
            let old = contents.ratchet.insert(peer.to_owned(), until);
            // Rewrite the file only when the expiry moves by more than a tenth of the TTL.
            changed |= old.is_none_or(|o| until.saturating_sub(o) > self.ratchet_ttl_secs / 10);
        }
        if let Some(record) = contents.pins.get_mut(peer) {
            // The vouched next key showed up: the rotation is done.
            if pin.is_some() && record.next == pin {
                if let Some(next) = record.next.take() {
                    record.pin = next;
                    record.last_seen = now;
                    changed = true;
                }
            }
            // A secure TLSA record vouched for a new key: it replaces the pin, so the peer
            // stays reachable if its TLSA records are later withdrawn.
            if let (Some(pin), PinUpdate::VouchedByDane) = (pin, update) {
                // Only an operator changes an operator's pin, or lifts a revocation.
                let learned = matches!(record.state, PinState::Learned | PinState::Corroborated);
                if record.pin != pin && learned {
                    tracing::info!(target: "osgate::store", peer, old = %record.pin, new = %pin, "pin rotated: the new key was vouched for by DANE");
                    record.pin = pin;
                    record.next = None;
                    record.last_seen = now;
                    changed = true;
                }
            }
        }
        if let (Some(pin), PinUpdate::Learn) = (pin, update) {
            if !contents.pins.contains_key(peer) {
                contents.pins.insert(
                    peer.to_owned(),
                    PinRecord {
                        pin,
                        first_seen: now,
                        last_seen: now,
                        state: PinState::Learned,
                        next: None,
                        refused: None,
                    },
                );
                changed = true;
            }
        }
        if changed {
            self.save(&mut guard)
        } else {
            Ok(())
        }
    }

    /// The current contents, re-read when an operator changed the file with `osgate pins` —
    /// or repaired or broke it. One stat(2) per lookup: small next to a TLS handshake.
    fn lock(&self) -> ContentsGuard<'_> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = version(&self.path);
        if now != state.version {
            state.version = now;
            state.contents = match Contents::load(&self.path) {
                Ok(contents) => Some(contents),
                Err(e) => {
                    tracing::error!(target: "osgate::store", error = %e, "capability store unavailable after a change on disk");
                    None
                }
            };
            metrics::gauge!(crate::metrics::PIN_STORE_AVAILABLE).set(if state.contents.is_some() {
                1.0
            } else {
                0.0
            });
        }
        ContentsGuard(state)
    }

    /// Writes `contents` and remembers the new modification time, so our own writes do not
    /// trigger a re-read.
    fn save(&self, guard: &mut ContentsGuard<'_>) -> Result<(), StoreError> {
        if let Some(contents) = &guard.0.contents {
            contents.save(&self.path)?;
            guard.0.version = version(&self.path);
        }
        Ok(())
    }
}

/// Access to the loaded contents under the store's lock.
struct ContentsGuard<'a>(std::sync::MutexGuard<'a, Loaded>);

impl std::ops::Deref for ContentsGuard<'_> {
    type Target = Option<Contents>;

    fn deref(&self) -> &Self::Target {
        &self.0.contents
    }
}

impl std::ops::DerefMut for ContentsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0.contents
    }
}

impl Store {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> SpkiPin {
        SpkiPin::of_spki(&[n])
    }

    /// A new empty store file in `dir`, opened with `ratchet_ttl_secs`.
    fn empty_store(dir: &Path, ratchet_ttl_secs: u64) -> (PathBuf, Store, Option<StoreError>) {
        let path = dir.join("store");
        Contents::default().save(&path).unwrap();
        let (store, error) = Store::open(path.clone(), ratchet_ttl_secs);
        (path, store, error)
    }

    #[test]
    fn round_trips_and_detects_truncation_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut contents = Contents::default();
        contents.pins.insert(
            "a.test:443".into(),
            PinRecord {
                pin: pin(1),
                first_seen: 10,
                last_seen: 20,
                state: PinState::Learned,
                next: Some(pin(2)),
                refused: Some((pin(3), 30)),
            },
        );
        contents.ratchet.insert("a.test:443".into(), 99);
        contents.save(&path).unwrap();
        assert_eq!(Contents::load(&path).unwrap(), contents);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 10]).unwrap();
        assert!(matches!(
            Contents::load(&path),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(&path, text.replace("learned", "approved")).unwrap();
        assert!(matches!(
            Contents::load(&path),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            Contents::load(&path),
            Err(StoreError::Read { .. })
        ));
    }

    #[test]
    fn an_unavailable_store_never_turns_verification_off() {
        let dir = tempfile::tempdir().unwrap();
        let (store, error) = Store::open(dir.path().join("missing"), 3600);
        assert!(error.is_some());
        let known = store.lookup("a.test:443", 0);
        assert_eq!((known.tofu, known.ratchet), (Tofu::StoreUnavailable, true));
    }

    #[test]
    fn learns_once_and_ratchets_with_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, error) = empty_store(dir.path(), 100);
        assert!(error.is_none());
        let known = store.lookup("a.test:443", 1000);
        assert_eq!((known.tofu, known.ratchet), (Tofu::Unknown, false));
        store
            .record_tls("a.test:443", Some(pin(1)), PinUpdate::Learn, 1000)
            .unwrap();
        store
            .record_tls("a.test:443", Some(pin(2)), PinUpdate::Learn, 1001)
            .unwrap();
        let known = store.lookup("a.test:443", 1099);
        assert_eq!(
            (known.tofu, known.ratchet),
            (Tofu::Pinned(pin(1)), true),
            "never silently re-pinned"
        );
        assert!(
            !store.lookup("a.test:443", 1101).ratchet,
            "the ratchet expired"
        );
        let reloaded = Contents::load(&path).unwrap();
        assert_eq!(reloaded.pins["a.test:443"].pin, pin(1));
    }

    #[test]
    fn a_key_vouched_for_by_dane_replaces_the_pin_unless_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, _) = empty_store(dir.path(), 0);
        store
            .record_tls("a.test:443", Some(pin(1)), PinUpdate::Learn, 1)
            .unwrap();
        store
            .record_tls("a.test:443", Some(pin(2)), PinUpdate::Keep, 2)
            .unwrap();
        assert_eq!(store.lookup("a.test:443", 2).tofu, Tofu::Pinned(pin(1)));
        store
            .record_tls("a.test:443", Some(pin(2)), PinUpdate::VouchedByDane, 3)
            .unwrap();
        assert_eq!(store.lookup("a.test:443", 3).tofu, Tofu::Pinned(pin(2)));
        assert_eq!(
            Contents::load(&path).unwrap().pins["a.test:443"].pin,
            pin(2)
        );

        let mut revoked = Contents::load(&path).unwrap();
        revoked.pins.get_mut("a.test:443").unwrap().state = PinState::Revoked;
        revoked.save(&path).unwrap();
        store
            .record_tls("a.test:443", Some(pin(3)), PinUpdate::VouchedByDane, 4)
            .unwrap();
        assert_eq!(store.lookup("a.test:443", 4).tofu, Tofu::Revoked);
    }

    #[test]
    fn an_operator_pin_is_operator_evidence_and_dane_never_rewrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut contents = Contents::default();
        let approved = PinRecord {
            pin: pin(1),
            first_seen: 1,
            last_seen: 1,
            state: PinState::Approved,
            next: None,
            refused: None,
        };
        contents.pins.insert("a.test:443".into(), approved);
        contents.save(&path).unwrap();
        let (store, _) = Store::open(path.clone(), 0);
        let known = store.lookup("a.test:443", 1);
        assert_eq!((known.operator, known.tofu), (vec![pin(1)], Tofu::Unknown));
        store
            .record_tls("a.test:443", Some(pin(2)), PinUpdate::VouchedByDane, 2)
            .unwrap();
        let record = Contents::load(&path).unwrap().pins["a.test:443"];
        assert_eq!((record.pin, record.state), (pin(1), PinState::Approved));
    }

    #[test]
    fn the_last_refused_key_is_kept_next_to_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, _) = empty_store(dir.path(), 0);
        store
            .record_tls("a.test:443", Some(pin(1)), PinUpdate::Learn, 1)
            .unwrap();
        store.record_refused("a.test:443", pin(2), 5).unwrap();
        let record = Contents::load(&path).unwrap().pins["a.test:443"];
        assert_eq!((record.pin, record.refused), (pin(1), Some((pin(2), 5))));
        store.record_refused("b.test:443", pin(2), 5).unwrap();
        assert!(
            !Contents::load(&path)
                .unwrap()
                .pins
                .contains_key("b.test:443")
        );
    }
}
