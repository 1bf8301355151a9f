//! Whether the node should get traffic (`/ready`), and what it tells its service manager
//! (sd_notify: READY, RELOADING, STOPPING, WATCHDOG).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sd_notify::NotifyState;

use crate::controlplane::Shared;
use crate::ctx::Node;

/// The readiness facts the supervisor keeps current.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Every configured listener is bound and handed to the workers.
    pub listening: AtomicBool,
    pub draining: AtomicBool,
    /// Why the state folder could not be written at the last start or reload, if it could not.
    pub state: Mutex<Option<String>>,
    /// The node state and, with `[controlplane]`, the client's view.
    pub current: Mutex<Option<Current>>,
}

/// The node state readiness looks at.
type Current = (Arc<Node>, Option<Arc<Shared>>);

impl Health {
    /// `/ready`: listeners bound, state usable, the fleet state known (or no control plane
    /// configured), not draining.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listeners are not bound yet".into());
        }
        if let Some(why) = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(why);
        }
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((node, controlplane)) = current.as_ref() else {
            return Err("starting".into());
        };
        if let Some(store) = &node.store {
            store
                .check()
                .map_err(|e| format!("the pin store is unreadable: {e}"))?;
        }
        match controlplane {
            Some(cp) if !cp.known.load(Ordering::Relaxed) => Err(
                "no control-plane state yet (no last-known-good, no answer from the control plane)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    pub fn set_current(&self, node: Arc<Node>, controlplane: Option<Arc<Shared>>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((node, controlplane));
    }
}

/// Tells systemd (when it started us with `Type=notify`) how the node is doing. Without
/// `$NOTIFY_SOCKET` this does nothing.
pub(crate) fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(target: "osgate::node", error = %e, "cannot notify the service manager");
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd requires for it.
pub(crate) fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}
