//! Connection caps on the gRPC listener (CONFORMANCE G.47): connections over the global or
//! the per-source cap are closed at accept, before a TLS byte is read, and counted, so a
//! flood cannot starve the live node streams of descriptors, memory or handshake CPU.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{counter, gauge};

use crate::metrics as m;

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub struct Caps {
    global: usize,
    per_source: usize,
    open: Mutex<Open>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<Caps>,
    source: IpAddr,
}

/// An IPv4 client of a dual-stack listener is one source, however it is spelled.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Caps {
    pub fn new(global: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            global,
            per_source,
            open: Mutex::default(),
        })
    }

    /// A place for a connection from `ip`, or the cap it would exceed (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let source = source(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        let refused = match () {
            _ if open.total >= self.global => Some("global"),
            _ if from_source >= self.per_source => Some("per-source"),
            _ => None,
        };
        if let Some(reason) = refused {
            counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
            return Err(reason);
        }
        open.total += 1;
        open.by_source.insert(source, from_source + 1);
        gauge!(m::CONNECTIONS).set(open.total as f64);
        Ok(Slot {
            caps: self.clone(),
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
        gauge!(m::CONNECTIONS).set(open.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_refuses_the_excess_and_a_closed_connection_frees_its_place() {
        let caps = Caps::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(a);
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(a);
        let first = caps.admit(a);
        let second = caps.admit(mapped);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(caps.admit(a).err(), Some("per-source"));
        let third = caps.admit(b);
        assert!(third.is_ok());
        assert_eq!(caps.admit(b).err(), Some("global"));
        drop(first);
        assert!(caps.admit(a).is_ok());
        drop((second, third));
    }
}
