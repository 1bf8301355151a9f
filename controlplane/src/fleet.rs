//! The fleet service: nodes watch for updates (a snapshot, then deltas; each answered with
//! ACK or NACK), report what they learned, and enrol.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use osgate_api::pb::fleet_server::Fleet;
use osgate_api::pb::{self, watch_request::Msg};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, caller};
use crate::ctx::{Ctx, storage, unix_now};
use crate::db::to_db;
use crate::metrics as m;
use crate::{enroll, pins};

/// A node must say hello this soon after opening a stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most pins one report may carry.
const MAX_REPORTED_PINS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct FleetService {
    pub ctx: Arc<Ctx>,
}

fn node_name(caller: &Caller) -> Result<String, Status> {
    match caller {
        Caller::Node { name } => Ok(name.clone()),
        _ => Err(Status::permission_denied(
            "only registered nodes use this method",
        )),
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<pb::Update, Status>> + Send>>;

/// One node's stream.
struct Session {
    ctx: Arc<Ctx>,
    node: String,
    inbound: Streaming<pb::WatchRequest>,
    out: mpsc::Sender<Result<pb::Update, Status>>,
    /// The revision of the last update sent.
    sent: u64,
    /// The node refused an update: it holds an older state than `sent`, so the next update
    /// is a whole snapshot. Nothing is resent until the revision moves (a NACKed update
    /// would only be NACKed again).
    resync: bool,
}

impl Session {
    async fn send(&mut self, update: pb::Update) -> bool {
        self.sent = update.revision;
        self.out.send(Ok(update)).await.is_ok()
    }

    async fn run(mut self) {
        let mut revisions = self.ctx.state.subscribe();
        revisions.mark_unchanged();
        let snapshot = self.ctx.state.snapshot();
        let mut open = self.send(snapshot).await;
        while open {
            tokio::select! {
                changed = revisions.changed() => {
                    let current = *revisions.borrow_and_update();
                    open = changed.is_ok();
                    if open && current > self.sent {
                        let update = match self.resync {
                            true => self.ctx.state.snapshot(),
                            false => self.ctx.state.delta(self.sent),
                        };
                        self.resync = false;
                        open = self.send(update).await;
                    }
                }
                message = self.inbound.message() => match message {
                    Ok(Some(pb::WatchRequest { msg: Some(Msg::Ack(ack)) })) => self.ctx.nodes.ack(&self.node, ack.revision),
                    Ok(Some(pb::WatchRequest { msg: Some(Msg::Nack(nack)) })) => {
                        self.ctx.nodes.nack(&self.node, nack.revision, nack.error);
                        self.resync = true;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => open = false,
                },
            }
        }
        self.ctx.nodes.disconnected(&self.node);
        tracing::info!(node = self.node, "node stream closed");
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    type WatchStream = Updates;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Updates>, Status> {
        let node = node_name(&caller(&req)?)?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::WatchRequest {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            _ => return Err(Status::invalid_argument("a watch stream starts with Hello")),
        };
        tracing::info!(
            node,
            holds = hello.revision,
            version = hello.version,
            "node stream opened"
        );
        let stored = crate::nodes::stored_one(&self.ctx.db, &node)
            .await
            .map_err(storage)?;
        self.ctx
            .nodes
            .connected(&node, hello.version, hello.peers, stored);
        let (out, rx) = mpsc::channel(4);
        let session = Session {
            ctx: self.ctx.clone(),
            node,
            inbound,
            out,
            sent: 0,
            resync: false,
        };
        tokio::spawn(session.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report(
        &self,
        req: Request<pb::ReportBatch>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let caller = caller(&req)?;
        let node = node_name(&caller)?;
        let batch = req.into_inner();
        self.ctx.nodes.add_outcomes(&node, &batch.outcomes);
        if batch.pins.len() > MAX_REPORTED_PINS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORTED_PINS} pins per report"
            )));
        }
        // A node speaks only for itself, and only about peers it carries traffic to.
        let declared: BTreeSet<String> = self.ctx.nodes.peers(&node).into_iter().collect();
        let mut accepted = 0u32;
        let mut peers = BTreeSet::new();
        let now = unix_now();
        if batch.pins.is_empty() {
            // Outcome counts only: kept in memory, stored with the node's status.
            return Ok(Response::new(pb::ReportReply { accepted: 0 }));
        }
        let mut tx = self.ctx.db.pool.begin().await.map_err(storage)?;
        for pin in batch.pins {
            let check = pb::FleetPin {
                peer: pin.peer.to_ascii_lowercase(),
                spki: pin.spki.clone(),
                state: "learned".into(),
                ..Default::default()
            };
            if osgate_api::validate::pin(&check).is_err() || !declared.contains(&check.peer) {
                tracing::warn!(
                    node,
                    peer = check.peer,
                    "pin report refused: malformed, or a peer the node does not serve"
                );
                continue;
            }
            sqlx::query(
                "INSERT INTO pin_reports (peer, spki, node, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (peer, spki, node) DO UPDATE SET last_seen = excluded.last_seen",
            )
            .bind(&check.peer)
            .bind(&check.spki)
            .bind(&node)
            .bind(to_db(pin.first_seen.min(now)))
            .bind(to_db(now))
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            accepted += 1;
            peers.insert(check.peer);
        }
        tx.commit().await.map_err(storage)?;
        counter!(m::PINS_REPORTED).increment(u64::from(accepted));
        let corroboration = self.ctx.corroboration;
        let state = &self.ctx.state;
        for peer in peers {
            let detail = format!("pins of {peer} after a report");
            let mut m = self.ctx.begin().await?;
            let writes = pins::sync_peer(&mut m.tx, state, &peer, corroboration)
                .await
                .map_err(storage)?;
            let writes = (!writes.is_empty()).then_some(writes);
            self.ctx
                .finish(m, &caller, "pins.report", detail, writes)
                .await?;
        }
        pins::count_conflicts(&self.ctx).await;
        Ok(Response::new(pb::ReportReply { accepted }))
    }

    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let name = enroll::redeem(&self.ctx, &caller, &r.token, r.addresses).await?;
        Ok(Response::new(pb::EnrollReply { name }))
    }
}
