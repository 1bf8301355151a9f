//! The client session cache of connections where authentication is expected. A resumed
//! session proves nothing new about the peer's key, so it must not outlive the evidence it
//! was authenticated against: when a peer's TLSA set changes, its sessions are forgotten and
//! the next connection makes a full handshake against the new set (CONFORMANCE B.11).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls_pki_types::ServerName;

use crate::dane::Tlsa;

/// Sessions by server name, each tied to the TLSA set it was made under.
#[derive(Debug)]
pub struct SessionCache {
    inner: ClientSessionMemoryCache,
    /// The digest of the TLSA set last seen per server name.
    tlsa: Mutex<HashMap<ServerName<'static>, Vec<u8>>>,
}

/// A digest of a TLSA set that does not depend on the order DNS returned it in.
fn digest(records: &[Tlsa]) -> Vec<u8> {
    let mut encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let mut e = vec![r.usage, r.selector, r.matching];
            e.extend_from_slice(&r.data);
            e
        })
        .collect();
    encoded.sort();
    let mut all = Vec::new();
    for e in encoded {
        all.extend_from_slice(&u32::try_from(e.len()).unwrap_or(u32::MAX).to_be_bytes());
        all.extend_from_slice(&e);
    }
    super::sha::sha256(&all)
}

impl SessionCache {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(size),
            tlsa: Mutex::new(HashMap::new()),
        })
    }

    /// Records the TLSA set `name` is about to be authenticated against; forgets its
    /// sessions when the set differs from the last one seen.
    pub fn note_tlsa(&self, name: &ServerName<'_>, records: &[Tlsa]) {
        let now = digest(records);
        let changed = {
            let mut seen = self.tlsa.lock().unwrap_or_else(PoisonError::into_inner);
            let old = seen.insert(name.to_owned(), now.clone());
            old.is_some_and(|old| old != now)
        };
        if changed {
            self.forget(name);
        }
    }

    fn forget(&self, name: &ServerName<'_>) {
        let name = name.to_owned();
        self.inner.remove_tls12_session(&name);
        while self.inner.take_tls13_ticket(&name).is_some() {}
    }
}

impl ClientSessionStore for SessionCache {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}
