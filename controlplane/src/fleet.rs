//! The fleet service: nodes watch for updates (a snapshot, then deltas; each answered with
//! ACK or NACK), report what they learned, and enrol.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use osgate_proto::pb::fleet_server::Fleet;
use osgate_proto::pb::{self, watch_request::Msg};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, PeerKey, caller};
use crate::ctx::{Ctx, storage};
use crate::metrics as m;
use crate::peer::canonical_set;
use crate::{capabilities, enroll, pins};

/// A node must say hello this soon after opening a stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a draining stream waits to queue its final status.
const DRAIN_SEND_TIMEOUT: Duration = Duration::from_secs(1);
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

impl FleetService {
    /// The reported pins a node may speak for: well formed, and for a peer an admin
    /// assigned to it (CONFORMANCE J.57). Others are refused and counted.
    fn admitted(&self, node: &str, reported: Vec<pb::LearnedPin>) -> Vec<pb::LearnedPin> {
        let assigned = self.assigned(node);
        let mut out = Vec::new();
        for mut pin in reported {
            pin.peer = crate::peer::canonical(&pin.peer);
            let check = pb::FleetPin {
                peer: pin.peer.clone(),
                spki: pin.spki.clone(),
                state: "learned".into(),
                ..Default::default()
            };
            let reason = match () {
                _ if osgate_proto::validate::pin(&check).is_err() => "malformed",
                _ if !assigned.contains(&pin.peer) => "unassigned-peer",
                _ => {
                    out.push(pin);
                    continue;
                }
            };
            counter!(m::PIN_REPORTS_REFUSED, "reason" => reason).increment(1);
            tracing::warn!(node, peer = pin.peer, reason, "pin report refused");
        }
        out
    }

    /// The peers an admin assigned to `node`.
    fn assigned(&self, node: &str) -> BTreeSet<String> {
        self.ctx
            .state
            .get("node", node)
            .and_then(|r| match &r.kind {
                Some(pb::resource::Kind::Node(n)) => Some(n.peers.iter().cloned().collect()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The TLS sightings a node may speak for: for a peer an admin assigned to it
    /// (CONFORMANCE J.57), one per peer. Others are refused and counted.
    fn admitted_sightings(
        &self,
        node: &str,
        reported: Vec<pb::ObservedTls>,
    ) -> Vec<pb::ObservedTls> {
        let assigned = self.assigned(node);
        let mut out: Vec<pb::ObservedTls> = Vec::new();
        for mut seen in reported {
            seen.peer = crate::peer::canonical(&seen.peer);
            let labels_ok = [&seen.tls_version, &seen.group].iter().all(|l| {
                l.len() <= 32
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            });
            let reason = match () {
                _ if osgate_proto::validate::peer_ok("capability", &seen.peer).is_err()
                    || !labels_ok =>
                {
                    "malformed"
                }
                _ if !assigned.contains(&seen.peer) => "unassigned-peer",
                _ if out.iter().any(|o| o.peer == seen.peer) => "malformed",
                _ => {
                    out.push(seen);
                    continue;
                }
            };
            counter!(m::CAPABILITY_REPORTS_REFUSED, "reason" => reason).increment(1);
            tracing::warn!(node, peer = seen.peer, reason, "capability report refused");
        }
        out
    }
}

/// What a node stream ends with when the control plane stops.
fn draining_status() -> Status {
    Status::unavailable(
        "control plane draining (stopping); reconnect, to another replica if there is one",
    )
}

type Updates = Pin<Box<dyn Stream<Item = Result<pb::Update, Status>> + Send>>;

/// One node's stream.
struct Session {
    ctx: Arc<Ctx>,
    node: String,
    /// The key the stream was opened with: when it no longer names this node (deleted, or
    /// registered again with another key), the stream is cut (CONFORMANCE J.58).
    key: String,
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

    /// Whether the stream's key still belongs to its node.
    fn authorised(&self) -> bool {
        self.ctx.state.node_named_by_key(&self.key).as_deref() == Some(self.node.as_str())
    }

    /// Ends the stream of a node that lost its registration, before it sees another update.
    fn cut(&self) {
        counter!(m::STREAMS_CUT).increment(1);
        tracing::warn!(
            node = self.node,
            key = self.key,
            "node stream cut: the node was deleted or its key replaced"
        );
        let status = Status::permission_denied(format!(
            "node `{}` was deleted or registered with another key; this key no longer has a fleet stream",
            self.node
        ));
        // Never waits on a node that stopped reading: with the queue full the stream just ends.
        let _ = self.out.try_send(Err(status));
    }

    /// Ends the stream because this replica is stopping: UNAVAILABLE is what a gRPC client
    /// retries, and the node reconnects with backoff (to another replica behind the address).
    async fn drained(&self) {
        tracing::info!(node = self.node, "node stream ended: draining");
        // A node that stopped reading gets a plain end of stream instead, a moment later.
        let send = self.out.send(Err(draining_status()));
        let _ = tokio::time::timeout(DRAIN_SEND_TIMEOUT, send).await;
    }

    async fn run(mut self) {
        let lifecycle = self.ctx.lifecycle.clone();
        let mut revisions = self.ctx.state.subscribe();
        revisions.mark_unchanged();
        let mut open = self.authorised();
        if open {
            let snapshot = self.ctx.state.snapshot();
            open = self.send(snapshot).await;
        } else {
            self.cut();
        }
        while open {
            tokio::select! {
                () = lifecycle.drain_begun() => {
                    self.drained().await;
                    open = false;
                }
                changed = revisions.changed() => {
                    let current = *revisions.borrow_and_update();
                    open = changed.is_ok();
                    if open && !self.authorised() {
                        self.cut();
                        open = false;
                    } else if open && current > self.sent {
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
        if self.ctx.lifecycle.is_draining() {
            return Err(draining_status());
        }
        let key = req
            .extensions()
            .get::<PeerKey>()
            .and_then(|k| k.0)
            .map(|k| k.to_string())
            .ok_or_else(|| Status::unauthenticated("a node stream needs the node's key"))?;
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
            .connected(&node, hello.version, canonical_set(&hello.peers), stored);
        let (out, rx) = mpsc::channel(4);
        let session = Session {
            ctx: self.ctx.clone(),
            node,
            key,
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
        crate::tlsrpt::store(&self.ctx, &node, &batch.tlsrpt).await?;
        if batch.pins.len() > MAX_REPORTED_PINS || batch.capabilities.len() > MAX_REPORTED_PINS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORTED_PINS} pins and {MAX_REPORTED_PINS} capabilities per report"
            )));
        }
        let sightings = self.admitted_sightings(&node, batch.capabilities);
        if !sightings.is_empty() {
            capabilities::record(&self.ctx, &caller, &node, sightings).await?;
        }
        if batch.pins.is_empty() {
            // Outcome counts only: kept in memory, stored with the node's status.
            return Ok(Response::new(pb::ReportReply { accepted: 0 }));
        }
        let pins = self.admitted(&node, batch.pins);
        let accepted = u32::try_from(pins.len()).unwrap_or(u32::MAX);
        if !pins.is_empty() {
            pins::record(&self.ctx, &caller, &node, pins).await?;
        }
        counter!(m::PINS_REPORTED).increment(u64::from(accepted));
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
