//! What each node connected to this replica last said: ACKed and NACKed revisions, the NACK
//! error, its version and peers. Kept in memory and flushed to storage in batches, so a
//! thousand ACKs cost one transaction and every replica can show every node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use metrics::{counter, gauge};
use sqlx::Row;

use crate::ctx::unix_now;
use crate::db::{Db, from_db, to_db};
use crate::metrics as m;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub connected: bool,
    pub acked: u64,
    pub nacked: u64,
    pub nack_error: String,
    pub last_seen: u64,
    pub version: String,
    pub peers: Vec<String>,
    /// Reported connections: `direction level method reason` → count.
    pub outcomes: BTreeMap<String, u64>,
}

/// The most outcome kinds kept per node: the labels are a small fixed vocabulary, so more
/// means a node sending garbage.
const MAX_OUTCOME_KINDS: usize = 256;

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 32
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `key=count;…`, as stored.
fn encode_outcomes(outcomes: &BTreeMap<String, u64>) -> String {
    outcomes
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_outcomes(text: &str) -> BTreeMap<String, u64> {
    text.split(';')
        .filter_map(|item| item.rsplit_once('='))
        .filter_map(|(k, n)| Some((k.to_owned(), n.parse().ok()?)))
        .collect()
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<String, Status>,
    dirty: HashSet<String>,
    connected: usize,
}

#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

impl Tracker {
    fn update(&self, node: &str, change: impl FnOnce(&mut Status)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let status = inner.nodes.entry(node.to_owned()).or_default();
        let was = status.connected;
        change(status);
        status.last_seen = unix_now();
        let now = status.connected;
        inner.dirty.insert(node.to_owned());
        if was != now {
            inner.connected = match now {
                true => inner.connected + 1,
                false => inner.connected.saturating_sub(1),
            };
            gauge!(m::NODES_CONNECTED).set(inner.connected as f64);
        }
    }

    /// A node opened a stream; `stored` is what storage held for it, which seeds a node this
    /// replica has not seen yet (so counts survive restarts and moves between replicas).
    pub fn connected(
        &self,
        node: &str,
        version: String,
        peers: Vec<String>,
        stored: Option<Status>,
    ) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if let (false, Some(stored)) = (inner.nodes.contains_key(node), stored) {
                let seed = Status {
                    connected: false,
                    ..stored
                };
                inner.nodes.insert(node.to_owned(), seed);
            }
        }
        self.update(node, |s| {
            s.connected = true;
            s.version = version;
            s.peers = peers;
        });
    }

    pub fn disconnected(&self, node: &str) {
        self.update(node, |s| s.connected = false);
    }

    pub fn ack(&self, node: &str, revision: u64) {
        counter!(m::ACKS).increment(1);
        self.update(node, |s| s.acked = s.acked.max(revision));
    }

    pub fn nack(&self, node: &str, revision: u64, error: String) {
        counter!(m::NACKS).increment(1);
        tracing::warn!(
            node,
            revision,
            error,
            "node refused an update and keeps its last-known-good"
        );
        self.update(node, |s| {
            s.nacked = revision;
            s.nack_error = error;
        });
    }

    /// Adds reported connection counts; malformed entries are dropped and counted.
    pub fn add_outcomes(&self, node: &str, counts: &[osgate_proto::pb::OutcomeCount]) -> usize {
        let mut accepted = 0;
        self.update(node, |s| {
            for c in counts {
                let labels = [&c.direction, &c.level, &c.method, &c.reason];
                if !labels.iter().all(|l| label_ok(l)) {
                    continue;
                }
                let key = format!("{} {} {} {}", c.direction, c.level, c.method, c.reason);
                if s.outcomes.len() >= MAX_OUTCOME_KINDS && !s.outcomes.contains_key(&key) {
                    continue;
                }
                let total = s.outcomes.entry(key).or_default();
                // A node's counts are input: saturate, never wrap or panic.
                *total = total.saturating_add(c.count);
                accepted += 1;
            }
        });
        accepted
    }

    /// Writes changed statuses; with `heartbeat`, also refreshes `last_seen` of every
    /// connected node (so other replicas can tell a live stream from a dead replica's).
    pub async fn flush(&self, db: &Db, heartbeat: bool) -> Result<(), sqlx::Error> {
        let batch: Vec<(String, Status)> = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let now = unix_now();
            let dirty = std::mem::take(&mut inner.dirty);
            inner
                .nodes
                .iter_mut()
                .filter(|(name, s)| (heartbeat && s.connected) || dirty.contains(*name))
                .map(|(name, s)| {
                    s.last_seen = now;
                    (name.clone(), s.clone())
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = db.pool.begin().await?;
        for (name, s) in batch {
            sqlx::query(
                "INSERT INTO node_status (node, connected, acked, nacked, nack_error, last_seen, version, peers, outcomes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (node) DO UPDATE SET \
                 connected = excluded.connected, acked = excluded.acked, nacked = excluded.nacked, \
                 nack_error = excluded.nack_error, last_seen = excluded.last_seen, \
                 version = excluded.version, peers = excluded.peers, outcomes = excluded.outcomes",
            )
            .bind(name)
            .bind(i64::from(s.connected))
            .bind(to_db(s.acked))
            .bind(to_db(s.nacked))
            .bind(s.nack_error)
            .bind(to_db(s.last_seen))
            .bind(s.version)
            .bind(s.peers.join(","))
            .bind(encode_outcomes(&s.outcomes))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

/// How long a replica may go without refreshing a connected node before the node counts as
/// disconnected (the replica died).
const STALE_AFTER_SECS: u64 = 15;

/// Every node's stored status, by name.
pub async fn stored(db: &Db) -> Result<HashMap<String, Status>, sqlx::Error> {
    stored_where(db, "").await
}

/// Every node's status, its peers being those it declared and those an admin assigned: who
/// a change for a peer reaches (the blast radius).
pub async fn serving(ctx: &crate::ctx::Ctx) -> Result<HashMap<String, Status>, tonic::Status> {
    use crate::ctx::storage;
    use osgate_proto::pb::resource::Kind;
    ctx.nodes.flush(&ctx.db, false).await.map_err(storage)?;
    let mut statuses = stored(&ctx.db).await.map_err(storage)?;
    for r in ctx.state.list("node") {
        if let Some(Kind::Node(key)) = &r.kind {
            let status = statuses.entry(key.name.clone()).or_default();
            for peer in &key.peers {
                if !status.peers.contains(peer) {
                    status.peers.push(peer.clone());
                }
            }
        }
    }
    Ok(statuses)
}

/// One node's stored status: a node connecting reads its own row, not the fleet's.
pub async fn stored_one(db: &Db, node: &str) -> Result<Option<Status>, sqlx::Error> {
    Ok(stored_where(db, node).await?.remove(node))
}

async fn stored_where(db: &Db, node: &str) -> Result<HashMap<String, Status>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node, connected, acked, nacked, nack_error, last_seen, version, peers, outcomes \
         FROM node_status WHERE $1 = '' OR node = $1",
    )
    .bind(node)
    .fetch_all(&db.pool)
    .await?;
    let now = unix_now();
    let mut out = HashMap::new();
    for r in rows {
        let last_seen = from_db(r.try_get(5)?);
        let peers: String = r.try_get(7)?;
        let status = Status {
            connected: r.try_get::<i64, _>(1)? != 0
                && now.saturating_sub(last_seen) < STALE_AFTER_SECS,
            acked: from_db(r.try_get(2)?),
            nacked: from_db(r.try_get(3)?),
            nack_error: r.try_get(4)?,
            last_seen,
            version: r.try_get(6)?,
            peers: peers
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            outcomes: decode_outcomes(&r.try_get::<String, _>(8)?),
        };
        out.insert(r.try_get(0)?, status);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_counts_saturate_instead_of_wrapping() {
        let tracker = Tracker::default();
        let count = |count| osgate_proto::pb::OutcomeCount {
            direction: "outbound".into(),
            level: "encrypted".into(),
            method: "none".into(),
            reason: "ok".into(),
            count,
        };
        assert_eq!(tracker.add_outcomes("n", &[count(u64::MAX - 1)]), 1);
        assert_eq!(tracker.add_outcomes("n", &[count(5)]), 1);
        let inner = tracker.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let total = inner.nodes["n"].outcomes["outbound encrypted none ok"];
        assert_eq!(total, u64::MAX);
    }
}
