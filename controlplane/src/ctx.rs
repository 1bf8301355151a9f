//! What the services share: storage, the in-memory state, the node tracker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::gauge;
use osgate_proto::pb;
use prost::Message;
use tonic::Status;

use crate::auth::Caller;
use crate::db::{Audit, Db, Tx, Write};
use crate::lifecycle::Lifecycle;
use crate::metrics as m;
use crate::nodes::Tracker;
use crate::state::State;

/// A mutation in progress.
#[derive(Debug)]
pub struct Mutation {
    pub tx: Tx<'static>,
    pub revision: u64,
}

#[derive(Debug)]
pub struct Ctx {
    pub db: Db,
    pub state: Arc<State>,
    pub nodes: Tracker,
    pub corroboration: u32,
    /// A policy change lowering the level for peers of more nodes than this needs confirm.
    pub confirm_nodes: usize,
    pub lifecycle: Arc<Lifecycle>,
    /// How long one TLS sighting commits a peer to TLS fleet-wide (the node's ratchet TTL).
    pub ratchet_secs: u64,
    /// The last failed TLSA lookup of each peer, for `get capabilities`.
    pub dane_errors: Mutex<HashMap<String, String>>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Storage failures reach the client as `unavailable`, with the cause logged here.
pub fn storage(error: sqlx::Error) -> Status {
    tracing::error!(%error, "storage");
    Status::unavailable(format!("storage: {error}"))
}

pub fn put(kind: &'static str, name: String, resource: &pb::Resource) -> Write {
    Write::Put {
        kind,
        name,
        body: resource.encode_to_vec(),
    }
}

impl Ctx {
    pub fn dane_errors(&self) -> HashMap<String, String> {
        self.dane_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts a mutation: the transaction holds the next revision until [`Ctx::finish`].
    pub async fn begin(&self) -> Result<Mutation, Status> {
        let (tx, revision) = self.db.begin().await.map_err(storage)?;
        Ok(Mutation { tx, revision })
    }

    /// Commits `writes` with an audit row, or rolls back for `None` (nothing changed: no
    /// revision is used). Returns the new revision, or the current one.
    pub async fn finish(
        &self,
        mutation: Mutation,
        caller: &Caller,
        action: &str,
        detail: String,
        writes: Option<Vec<Write>>,
    ) -> Result<u64, Status> {
        let Mutation { tx, revision } = mutation;
        let Some(writes) = writes else {
            tx.rollback().await.map_err(storage)?;
            return Ok(self.state.revision());
        };
        let who = caller.who();
        let audit = Audit {
            who: &who,
            action,
            detail,
        };
        self.db
            .commit(tx, revision, &writes, audit, unix_now())
            .await
            .map_err(storage)?;
        tracing::info!(revision, who, action, "committed");
        self.refresh().await;
        Ok(revision)
    }

    /// Loads new revisions from storage and publishes them to this replica's streams.
    pub async fn refresh(&self) {
        match self.state.refresh(&self.db).await {
            Ok(revision) => {
                gauge!(m::REVISION).set(revision as f64);
            }
            Err(e) => tracing::error!(error = %e, "cannot load new revisions"),
        }
    }
}
