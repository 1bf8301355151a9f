//! Connection caps (CONFORMANCE F.36, G.47): at most `total` open connections and
//! `per_source` from one source address. The node and the control plane close a connection
//! over a cap right after accept — before any peek, handshake or upstream connect — and count
//! it; connections already open are untouched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The caps, from the node's `[node]` or the control plane's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_source: usize,
}

/// Why a connection was refused, as the `reason` label of the refusal counters names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    GlobalCap,
    PerSourceCap,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::GlobalCap, Refusal::PerSourceCap];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GlobalCap => "global-cap",
            Self::PerSourceCap => "per-source-cap",
        }
    }
}

/// Open connections, process-wide (shared by every worker thread).
#[derive(Debug)]
pub struct Caps {
    open: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    limits: Limits,
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<Caps>,
    source: IpAddr,
}

impl Caps {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(Open {
                limits,
                total: 0,
                by_source: HashMap::new(),
            }),
        })
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Admits a connection from `source`, or says which cap it is over.
    /// New limits for the next admissions (a reload); open connections are untouched even
    /// when they are now over a cap.
    pub fn set_limits(&self, limits: Limits) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .limits = limits;
    }

    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d: one source.
        let source = source.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= open.limits.total {
            return Err(Refusal::GlobalCap);
        }
        let per_source = open.limits.per_source;
        let from_source = open.by_source.entry(source).or_default();
        if *from_source >= per_source {
            return Err(Refusal::PerSourceCap);
        }
        *from_source += 1;
        open.total += 1;
        Ok(Slot {
            caps: Arc::clone(self),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn the_per_source_cap_counts_one_address_and_frees_on_drop() {
        let caps = Caps::new(Limits {
            total: 10,
            per_source: 2,
        });
        let a = caps.admit(ip(1)).unwrap();
        let _b = caps.admit(ip(1)).unwrap();
        assert_eq!(caps.admit(ip(1)).err(), Some(Refusal::PerSourceCap));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(caps.admit(mapped).err(), Some(Refusal::PerSourceCap));
        assert!(caps.admit(ip(2)).is_ok(), "another source is not capped");
        drop(a);
        assert!(caps.admit(ip(1)).is_ok());
    }

    #[test]
    fn the_global_cap_counts_every_source() {
        let caps = Caps::new(Limits {
            total: 3,
            per_source: 3,
        });
        let held: Vec<Slot> = (1..=3).map(|i| caps.admit(ip(i)).unwrap()).collect();
        assert_eq!(caps.admit(ip(9)).err(), Some(Refusal::GlobalCap));
        drop(held);
        assert!(caps.admit(ip(9)).is_ok());
        assert!(
            caps.open.lock().unwrap().by_source.is_empty(),
            "freed sources are forgotten"
        );
    }
}
