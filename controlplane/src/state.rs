//! The replica's in-memory copy of the resources, refreshed from storage after every write
//! (its own, or another replica's announced by NOTIFY). Node streams are served from here,
//! so a thousand nodes catching up cost the store one query, not a thousand (CONFORMANCE
//! G.46).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use osgate_proto::pb;
use prost::Message;
use tokio::sync::{Mutex, watch};

use crate::db::Db;

type Key = (String, String);

#[derive(Debug, Default)]
struct Inner {
    revision: u64,
    /// Live resources and tombstones, with the revision that last wrote them.
    resources: BTreeMap<Key, (u64, Option<Arc<pb::Resource>>)>,
    /// Which resources each revision wrote.
    by_revision: BTreeMap<u64, Vec<Key>>,
    /// Registered node names by key (pin text), for authenticating node requests.
    nodes_by_key: HashMap<String, String>,
}

#[derive(Debug)]
pub struct State {
    inner: RwLock<Inner>,
    refreshing: Mutex<()>,
    published: watch::Sender<u64>,
}

impl State {
    pub fn new() -> Self {
        Self {
            inner: RwLock::default(),
            refreshing: Mutex::new(()),
            published: watch::Sender::new(0),
        }
    }

    /// Follows revisions as they are loaded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn revision(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision
    }

    /// Loads what storage has beyond the current revision and publishes it.
    pub async fn refresh(&self, db: &Db) -> Result<u64, sqlx::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        let since = self.revision();
        // The counter first, then the rows: a commit landing in between shows up in the rows
        // (and is counted by its row's revision) or not at all, never counted but unloaded.
        let stored = db.revision().await?;
        let rows = db.changes_since(since).await?;
        let newest_row = rows.iter().map(|r| r.revision).max().unwrap_or(0);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            // Rows are written by this build after validation; one that does not decode is
            // kept out rather than streamed.
            let resource = match row.body {
                Some(body) => match pb::Resource::decode(body.as_slice()) {
                    Ok(r) => Some(Arc::new(r)),
                    Err(e) => {
                        tracing::error!(kind = row.kind, name = row.name, error = %e, "stored resource does not decode");
                        continue;
                    }
                },
                None => None,
            };
            let key = (row.kind, row.name);
            inner
                .by_revision
                .entry(row.revision)
                .or_default()
                .push(key.clone());
            inner.resources.insert(key, (row.revision, resource));
        }
        inner.revision = inner.revision.max(stored).max(newest_row);
        inner.nodes_by_key = inner
            .resources
            .values()
            .filter_map(|(_, r)| match r.as_deref()?.kind.as_ref()? {
                pb::resource::Kind::Node(n) => Some((n.spki.clone(), n.name.clone())),
                _ => None,
            })
            .collect();
        let revision = inner.revision;
        drop(inner);
        self.published.send_replace(revision);
        Ok(revision)
    }
}

/// A resource as nodes receive it: a node's assigned peers stay in the control plane.
fn distributed(r: &pb::Resource) -> pb::Resource {
    match &r.kind {
        Some(pb::resource::Kind::Node(n)) if !n.peers.is_empty() => pb::Resource {
            kind: Some(pb::resource::Kind::Node(pb::NodeKey {
                peers: Vec::new(),
                ..n.clone()
            })),
        },
        _ => r.clone(),
    }
}

impl State {
    /// Everything live, as one snapshot update.
    pub fn snapshot(&self) -> pb::Update {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let upserts = inner
            .resources
            .values()
            .filter_map(|(_, r)| r.as_deref().map(distributed))
            .collect();
        pb::Update {
            revision: inner.revision,
            snapshot: true,
            upserts,
            deletes: Vec::new(),
            requires: Vec::new(),
        }
    }

    /// What changed after `since`.
    pub fn delta(&self, since: u64) -> pb::Update {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let touched: BTreeSet<&Key> = inner
            .by_revision
            .range(since.saturating_add(1)..)
            .flat_map(|(_, keys)| keys)
            .collect();
        let mut update = pb::Update {
            revision: inner.revision,
            ..Default::default()
        };
        for key in touched {
            match inner.resources.get(key) {
                Some((_, Some(r))) => update.upserts.push(distributed(r)),
                _ => update.deletes.push(pb::ResourceRef {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                }),
            }
        }
        update
    }

    /// The live resources of one kind.
    pub fn list(&self, kind: &str) -> Vec<Arc<pb::Resource>> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner
            .resources
            .iter()
            .filter(|((k, _), _)| k == kind)
            .filter_map(|(_, (_, r))| r.clone())
            .collect()
    }

    /// The registered node whose key is `pin`.
    pub fn node_named_by_key(&self, pin: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.nodes_by_key.get(pin).cloned()
    }

    /// One live resource.
    pub fn get(&self, kind: &str, name: &str) -> Option<Arc<pb::Resource>> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner
            .resources
            .get(&(kind.to_owned(), name.to_owned()))
            .and_then(|(_, r)| r.clone())
    }
}
