//! TLS-RPT (RFC 8460) on the node: every outbound SMTP session is counted into the
//! aggregate of its policy domain and UTC day, in memory; a background thread writes the
//! changed days to `<state_dir>/tlsrpt/YYYY-MM-DD.json` and expires days past the retention.
//! The control-plane client sends the changed days (a node's whole day aggregate per domain,
//! so a resent one replaces, never adds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use osgate_core::tlsrpt::{Day, DayAggregate, SessionResult};

pub(crate) mod cli;
mod files;
#[cfg(test)]
mod tests;

/// Days kept in the state folder.
pub(crate) const KEEP_DAYS: u32 = 30;
/// How often changed days are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Policy domains counted per day: a bound on memory, far above a busy relay's day.
pub(crate) const MAX_DOMAINS_PER_DAY: usize = 100_000;
/// The folder under the state folder.
pub(crate) const FOLDER: &str = "tlsrpt";

/// Counts sessions; shared by every worker (`ctx::Node::tlsrpt`).
#[derive(Debug)]
pub(crate) struct Recorder {
    dir: PathBuf,
    keep_days: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The days touched since start (and the two loaded at start), by domain.
    days: BTreeMap<Day, files::Domains>,
    /// Days whose file was merged in: writing them cannot lose what the file held.
    loaded: BTreeSet<Day>,
    /// Days changed since they were last written.
    dirty: BTreeSet<Day>,
    /// (day, domain) changed since the control plane last accepted it, with a change count.
    unsent: BTreeMap<(Day, String), u64>,
}

/// One domain's day as the control plane gets it, with the change count it was taken at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub day: Day,
    pub domain: String,
    pub aggregate: DayAggregate,
    pub version: u64,
}

fn today(now: u64) -> Day {
    Day::of_unix(now)
}

impl Recorder {
    /// Opens `dir`, loading today and yesterday (`now` in Unix seconds), which are sent to
    /// the control plane again: the node cannot know what it accepted before a restart, and
    /// a resend replaces.
    pub fn open(dir: PathBuf, keep_days: u32, now: u64) -> Arc<Self> {
        let mut inner = Inner::default();
        let today = today(now);
        for day in [Day(today.0.saturating_sub(1)), today] {
            match files::load(&dir, day) {
                Ok(domains) => {
                    for domain in domains.keys() {
                        inner.unsent.insert((day, domain.clone()), 0);
                    }
                    inner.days.insert(day, domains);
                    inner.loaded.insert(day);
                }
                Err(e) => {
                    tracing::error!(target: "osgate::tlsrpt", error = e, "cannot read a TLS-RPT day; its file is kept and not written over")
                }
            }
        }
        Arc::new(Self {
            dir,
            keep_days,
            inner: Mutex::new(inner),
        })
    }

    /// `<state_dir>/tlsrpt`.
    pub fn folder(state_dir: &Path) -> PathBuf {
        state_dir.join(FOLDER)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one session: a map update under a short lock, no I/O.
    pub fn record(&self, s: SessionResult) {
        let day = today(s.at);
        let domain = osgate_core::tlsrpt::domain_key(&s.policy_domain);
        let mut inner = self.lock();
        let domains = inner.days.entry(day).or_default();
        if domains.len() >= MAX_DOMAINS_PER_DAY && !domains.contains_key(&domain) {
            drop(inner);
            tracing::warn!(target: "osgate::tlsrpt", domain, "TLS-RPT: {MAX_DOMAINS_PER_DAY} policy domains today already; this session is not counted");
            return;
        }
        domains.entry(domain.clone()).or_default().add(&s);
        inner.dirty.insert(day);
        *inner.unsent.entry((day, domain)).or_default() += 1;
    }

    /// Writes the changed days, and expires old ones; `now` in Unix seconds.
    pub fn flush(&self, now: u64) {
        let dirty = std::mem::take(&mut self.lock().dirty);
        for day in dirty {
            if let Err(e) = self.write_day(day) {
                tracing::error!(target: "osgate::tlsrpt", error = e, "cannot write a TLS-RPT day; will retry");
                self.lock().dirty.insert(day);
            }
        }
        let today = today(now);
        files::expire(&self.dir, Day(today.0.saturating_sub(self.keep_days)));
        // Older days live on in their files only (sent from there when still unsent).
        let mut inner = self.lock();
        let keep_from = Day(today.0.saturating_sub(1));
        let clean: Vec<Day> = inner
            .days
            .keys()
            .filter(|d| **d < keep_from && !inner.dirty.contains(d))
            .copied()
            .collect();
        for day in clean {
            inner.days.remove(&day);
            inner.loaded.remove(&day);
        }
    }

    fn write_day(&self, day: Day) -> Result<(), String> {
        if !self.lock().loaded.contains(&day) {
            // Counted before its file was read (a clock step back to an older day): merge
            // the file in first. A file that cannot be read is left alone.
            let on_disk = files::load(&self.dir, day)?;
            let mut inner = self.lock();
            let domains = inner.days.entry(day).or_default();
            for (domain, aggregate) in on_disk {
                domains.entry(domain).or_default().merge(&aggregate);
            }
            inner.loaded.insert(day);
        }
        let domains = self.lock().days.get(&day).cloned().unwrap_or_default();
        files::save(&self.dir, day, &domains)
    }

    /// At most `limit` domain days changed since the control plane last accepted them.
    pub fn pending(&self, limit: usize) -> Vec<Pending> {
        let wanted: Vec<((Day, String), u64)> = self
            .lock()
            .unsent
            .iter()
            .take(limit)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut out = Vec::with_capacity(wanted.len());
        let mut from_disk: BTreeMap<Day, files::Domains> = BTreeMap::new();
        for ((day, domain), version) in wanted {
            let in_memory = self
                .lock()
                .days
                .get(&day)
                .and_then(|d| d.get(&domain))
                .cloned();
            let aggregate = match in_memory {
                Some(a) => Some(a),
                None => from_disk
                    .entry(day)
                    .or_insert_with(|| files::load(&self.dir, day).unwrap_or_default())
                    .get(&domain)
                    .cloned(),
            };
            match aggregate {
                Some(aggregate) => out.push(Pending {
                    day,
                    domain,
                    aggregate,
                    version,
                }),
                // Expired, or its file unreadable: nothing left to send.
                None => self.accepted(&[(day, domain, version)]),
            }
        }
        out
    }

    /// The control plane stored these: unsent unless changed since they were taken.
    pub fn accepted(&self, sent: &[(Day, String, u64)]) {
        let mut inner = self.lock();
        for (day, domain, version) in sent {
            let key = (*day, domain.clone());
            if inner.unsent.get(&key) == Some(version) {
                inner.unsent.remove(&key);
            }
        }
    }

    /// Flushes every `every` until the recorder is gone.
    pub fn start_flusher(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("osgate-tlsrpt".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(recorder) = weak.upgrade() else {
                        return;
                    };
                    recorder.flush(unix_now());
                }
            })
            .map(drop)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
