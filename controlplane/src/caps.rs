//! Connection caps on the gRPC listener (CONFORMANCE G.47): connections over the global or
//! the per-source cap are closed at accept, before a TLS byte is read, and counted, so a
//! flood cannot starve the live node streams of descriptors, memory or handshake CPU. The
//! table is the core's, shared with the node.

use std::net::IpAddr;
use std::sync::Arc;

use metrics::{counter, gauge};
use osgate_core::caps::{Caps, Limits, Refusal, Slot};

use crate::metrics as m;

/// The listener's caps.
pub fn new(global: usize, per_source: usize) -> Arc<Caps> {
    Caps::new(Limits {
        total: global,
        per_source,
    })
}

/// A place for a connection from `ip`, or the cap it would exceed (counted).
pub fn admit(caps: &Arc<Caps>, ip: IpAddr) -> Result<Counted, Refusal> {
    match caps.admit(ip) {
        Ok(slot) => {
            gauge!(m::CONNECTIONS).set(caps.open() as f64);
            Ok(Counted {
                slot: Some(slot),
                caps: Arc::clone(caps),
            })
        }
        Err(refusal) => {
            counter!(m::CONNECTIONS_REFUSED, "reason" => refusal.as_str()).increment(1);
            Err(refusal)
        }
    }
}

/// An admitted connection; dropping it frees its place and updates the gauge.
#[derive(Debug)]
pub struct Counted {
    slot: Option<Slot>,
    caps: Arc<Caps>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        drop(self.slot.take());
        gauge!(m::CONNECTIONS).set(self.caps.open() as f64);
    }
}
