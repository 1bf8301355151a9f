//! The admin service: policies, pins, nodes and the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;

use metrics::counter;
use osgate_core::fleet::PinState;
use osgate_core::pin::SpkiPin;
use osgate_core::policy::PolicySet;
use osgate_proto::features;
use osgate_proto::pb::admin_server::Admin;
use osgate_proto::pb::{self, resource::Kind};
use osgate_proto::validate::{self, Invalid};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, caller};
use crate::ctx::{Ctx, put, storage};
use crate::db::Write;
use crate::metrics as m;
use crate::{blast, capabilities, enroll, nodes, pins};

#[derive(Debug, Clone)]
pub struct AdminService {
    pub ctx: Arc<Ctx>,
}

fn counted<T>(method: &'static str, result: Result<T, Status>) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => "Ok".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    counter!(m::ADMIN_REQUESTS, "method" => method, "code" => code).increment(1);
    result.map(Response::new)
}

fn bad(e: Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

fn policy_of(r: &pb::Resource) -> Option<&pb::Policy> {
    match &r.kind {
        Some(Kind::Policy(p)) => Some(p),
        _ => None,
    }
}

fn policy_set(policies: &BTreeMap<String, pb::Policy>) -> Result<PolicySet, Status> {
    let rules = policies
        .values()
        .map(validate::policy_fields)
        .collect::<Result<Vec<_>, _>>();
    rules.map(PolicySet::new).map_err(bad)
}

/// Two listener client policies for one listener are contradictory and refused
/// (CONFORMANCE G.49).
fn one_policy_per_listener(after: &BTreeMap<String, pb::InboundPolicy>) -> Result<(), Status> {
    let mut listeners = BTreeMap::new();
    for (name, i) in after {
        let (listener, _) = validate::inbound_fields(i).map_err(bad)?;
        if let Some(other) = listeners.insert(listener.clone(), name) {
            return Err(Status::invalid_argument(format!(
                "inbound policies `{other}` and `{name}` both name listener {listener}"
            )));
        }
    }
    Ok(())
}

/// The changes and writes that take the `kind` resources from `before` to `after`; returns
/// those created or updated.
fn diff<'a, T: PartialEq + Clone>(
    kind: &'static str,
    before: &BTreeMap<String, T>,
    after: &'a BTreeMap<String, T>,
    wrap: fn(T) -> Kind,
    changes: &mut Vec<pb::Change>,
    writes: &mut Vec<Write>,
) -> Vec<&'a T> {
    let mut changed = Vec::new();
    for (name, item) in after {
        let action = match before.get(name) {
            None => "created",
            Some(old) if old == item => "unchanged",
            Some(_) => "updated",
        };
        changes.push(change(kind, name, action));
        if action != "unchanged" {
            let resource = pb::Resource {
                kind: Some(wrap(item.clone())),
            };
            writes.push(put(kind, name.clone(), &resource));
            changed.push(item);
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        changes.push(change(kind, name, "deleted"));
        writes.push(Write::Delete {
            kind,
            name: name.clone(),
        });
    }
    changed
}

fn change(kind: &str, name: &str, action: &str) -> pb::Change {
    pb::Change {
        kind: kind.into(),
        name: name.into(),
        action: action.into(),
    }
}

/// A proposed set of policies, against the current one.
struct Plan {
    changes: Vec<pb::Change>,
    writes: Vec<Write>,
    reply: pb::ApplyReply,
}

impl AdminService {
    fn current_policies(&self) -> BTreeMap<String, pb::Policy> {
        let resources = self.ctx.state.list("policy");
        let policies = resources.iter().filter_map(|r| policy_of(r));
        policies.map(|p| (p.name.clone(), p.clone())).collect()
    }

    fn current_inbound(&self) -> BTreeMap<String, pb::InboundPolicy> {
        let resources = self.ctx.state.list("inbound");
        let inbound = resources.iter().filter_map(|r| match &r.kind {
            Some(Kind::Inbound(i)) => Some((i.name.clone(), i.clone())),
            _ => None,
        });
        inbound.collect()
    }

    /// Changes, blast radius and warnings of going from the current policies to `after`.
    async fn plan(
        &self,
        after: BTreeMap<String, pb::Policy>,
        inbound: BTreeMap<String, pb::InboundPolicy>,
    ) -> Result<Plan, Status> {
        let before = self.current_policies();
        let mut changes = Vec::new();
        let mut writes = Vec::new();
        let mut warnings = Vec::new();
        one_policy_per_listener(&inbound)?;
        let current = self.current_inbound();
        diff(
            "inbound",
            &current,
            &inbound,
            Kind::Inbound,
            &mut changes,
            &mut writes,
        );
        for p in diff(
            "policy",
            &before,
            &after,
            Kind::Policy,
            &mut changes,
            &mut writes,
        ) {
            let rule = validate::policy_fields(p).map_err(bad)?;
            warnings.extend(blast::danger(&rule));
        }
        let statuses = nodes::serving(&self.ctx).await?;
        let (old, new) = (policy_set(&before)?, policy_set(&after)?);
        let affected = blast::affected(&old, &new, &statuses);
        warnings.extend(blast::lowered(
            &old,
            &new,
            &statuses,
            self.ctx.confirm_nodes,
        ));
        Ok(Plan {
            changes: changes.clone(),
            writes,
            reply: pb::ApplyReply {
                revision: 0,
                changes,
                affected,
                warnings,
            },
        })
    }

    /// Stores a plan unless it is a dry run or needs a confirmation it did not get.
    async fn carry_out(
        &self,
        caller: &Caller,
        action: &str,
        plan: Plan,
        dry_run: bool,
        confirm: bool,
    ) -> Result<pb::ApplyReply, Status> {
        let mut reply = plan.reply;
        if dry_run {
            return Ok(reply);
        }
        if !reply.warnings.is_empty() && !confirm {
            return Err(Status::failed_precondition(format!(
                "{} ({} peer(s) on their nodes affected; see --dry-run); repeat with --confirm to apply",
                reply.warnings.join("; "),
                reply.affected.len()
            )));
        }
        let detail = plan
            .changes
            .iter()
            .filter(|c| c.action != "unchanged")
            .map(|c| format!("{} {}/{}", c.action, c.kind, c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let writes = plan.writes;
        let mutation = self.ctx.begin().await?;
        let writes = (!writes.is_empty()).then_some(writes);
        reply.revision = self
            .ctx
            .finish(mutation, caller, action, detail, writes)
            .await?;
        Ok(reply)
    }

    async fn apply(
        &self,
        caller: Caller,
        req: pb::ApplyPoliciesRequest,
    ) -> Result<pb::ApplyReply, Status> {
        let mut after = self.current_policies();
        for mut p in req.policies {
            validate::policy_fields(&p).map_err(bad)?;
            if p.requires.is_empty() {
                p.requires.push("policy.v1".into());
            }
            after.insert(p.name.clone(), p);
        }
        blast::ambiguous(&after)?;
        let mut inbound = self.current_inbound();
        for mut i in req.inbound {
            if i.requires.is_empty() {
                i.requires.push(features::INBOUND_CLIENTS.into());
            }
            inbound.insert(i.name.clone(), i);
        }
        let plan = self.plan(after, inbound).await?;
        self.carry_out(&caller, "policies.apply", plan, req.dry_run, req.confirm)
            .await
    }

    async fn delete(
        &self,
        caller: Caller,
        req: pb::DeletePoliciesRequest,
    ) -> Result<pb::ApplyReply, Status> {
        let mut after = self.current_policies();
        let mut inbound = self.current_inbound();
        if req.all {
            after.clear();
            inbound.clear();
        }
        for name in &req.names {
            let policy = after.remove(name).is_some();
            if !(inbound.remove(name).is_some() || policy) {
                return Err(Status::not_found(format!(
                    "no policy or inbound policy named `{name}` (osgatectl get policies)"
                )));
            }
        }
        let mut plan = self.plan(after, inbound).await?;
        if req.all && !plan.writes.is_empty() {
            plan.reply
                .warnings
                .push(format!("this deletes all {} policies", plan.writes.len()));
        }
        self.carry_out(&caller, "policies.delete", plan, req.dry_run, req.confirm)
            .await
    }

    async fn list_pins(&self, req: pb::ListRequest) -> Result<pb::PinList, Status> {
        let mut conn = self.ctx.db.pool.acquire().await.map_err(storage)?;
        let name = crate::peer::canonical(&req.name);
        let peer = (!req.name.is_empty()).then_some(name.as_str());
        let all = pins::observed(&mut conn, peer).await.map_err(storage)?;
        let mut rows = Vec::new();
        for (peer, keys) in &all {
            for s in pins::standings(peer, keys, self.ctx.corroboration) {
                rows.push(pb::PinRow {
                    pin: Some(s.pin),
                    conflict: s.conflict,
                });
            }
        }
        Ok(pb::PinList { pins: rows })
    }

    /// Records an operator decision on a key and re-derives the peer's distributed pins.
    async fn decide(
        &self,
        caller: Caller,
        action: &str,
        peer: String,
        spki: String,
        state: PinState,
        next: String,
    ) -> Result<pb::ApplyReply, Status> {
        // Stored as reports are, so a decision and the reports it rules on meet.
        let peer = crate::peer::canonical(&peer);
        let check = pb::FleetPin {
            peer: peer.clone(),
            spki: spki.clone(),
            state: state.as_str().into(),
            next: next.clone(),
            ..Default::default()
        };
        validate::pin(&check).map_err(bad)?;
        let corroboration = self.ctx.corroboration;
        let state_ref = &self.ctx.state;
        let detail = format!(
            "{peer} {spki} -> {}{}",
            state.as_str(),
            if next.is_empty() {
                String::new()
            } else {
                format!(" (next {next})")
            }
        );
        let mut m = self.ctx.begin().await?;
        sqlx::query(
            "INSERT INTO pin_decisions (peer, spki, state, next) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (peer, spki) DO UPDATE SET state = excluded.state, next = excluded.next",
        )
        .bind(&peer)
        .bind(&spki)
        .bind(state.as_str())
        .bind(&next)
        .execute(&mut *m.tx)
        .await
        .map_err(storage)?;
        let writes = pins::sync_peer(&mut m.tx, state_ref, &peer, corroboration)
            .await
            .map_err(storage)?;
        let revision = self
            .ctx
            .finish(m, &caller, action, detail, Some(writes))
            .await?;
        pins::count_conflicts(&self.ctx).await;
        Ok(pb::ApplyReply {
            revision,
            changes: vec![change(
                "pin",
                &validate::pin_name(&check.peer, &check.spki),
                state.as_str(),
            )],
            ..Default::default()
        })
    }

    async fn delete_pins(
        &self,
        caller: Caller,
        req: pb::DeletePinsRequest,
    ) -> Result<pb::ApplyReply, Status> {
        if req.all && !req.confirm {
            return Err(Status::failed_precondition(
                "deleting every pin of the fleet makes every pinned peer unknown again; repeat with --confirm",
            ));
        }
        if !req.all && req.peer.is_empty() {
            return Err(Status::invalid_argument(
                "name a peer (host:port), or --all",
            ));
        }
        let peer = match req.peer.as_str() {
            "" => String::new(),
            p => crate::peer::canonical(p),
        };
        let corroboration = self.ctx.corroboration;
        let state_ref = &self.ctx.state;
        let detail = if req.all {
            "all pins".to_owned()
        } else {
            format!("pins of {peer}")
        };
        let mut m = self.ctx.begin().await?;
        for table in ["pin_reports", "pin_decisions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE $1 = '' OR peer = $1"))
                .bind(&peer)
                .execute(&mut *m.tx)
                .await
                .map_err(storage)?;
        }
        let mut peers: Vec<String> = state_ref
            .list("pin")
            .iter()
            .filter_map(|r| match &r.kind {
                Some(Kind::Pin(p)) if peer.is_empty() || p.peer == peer => Some(p.peer.clone()),
                _ => None,
            })
            .collect();
        peers.dedup();
        let mut writes = Vec::new();
        for p in peers {
            writes.extend(
                pins::sync_peer(&mut m.tx, state_ref, &p, corroboration)
                    .await
                    .map_err(storage)?,
            );
        }
        let revision = self
            .ctx
            .finish(m, &caller, "pins.delete", detail, Some(writes))
            .await?;
        Ok(pb::ApplyReply {
            revision,
            ..Default::default()
        })
    }

    async fn list_nodes(&self, req: pb::ListRequest) -> Result<pb::NodeList, Status> {
        self.ctx
            .nodes
            .flush(&self.ctx.db, false)
            .await
            .map_err(storage)?;
        let statuses = nodes::stored(&self.ctx.db).await.map_err(storage)?;
        let mut out = Vec::new();
        for r in self.ctx.state.list("node") {
            let Some(Kind::Node(key)) = &r.kind else {
                continue;
            };
            if !req.name.is_empty() && key.name != req.name {
                continue;
            }
            let s = statuses.get(&key.name).cloned().unwrap_or_default();
            out.push(pb::NodeStatus {
                key: Some(key.clone()),
                connected: s.connected,
                acked_revision: s.acked,
                nacked_revision: s.nacked,
                nack_error: s.nack_error,
                last_seen: s.last_seen,
                version: s.version,
                peers: s.peers,
                outcomes: s
                    .outcomes
                    .iter()
                    .filter_map(|(key, count)| {
                        let mut labels = key.split(' ');
                        Some(pb::OutcomeCount {
                            direction: labels.next()?.into(),
                            level: labels.next()?.into(),
                            method: labels.next()?.into(),
                            reason: labels.next()?.into(),
                            count: *count,
                        })
                    })
                    .collect(),
            });
        }
        if !req.name.is_empty() && out.is_empty() {
            return Err(Status::not_found(format!(
                "no node named `{}` (osgatectl get nodes)",
                req.name
            )));
        }
        Ok(pb::NodeList {
            nodes: out,
            revision: self.ctx.state.revision(),
        })
    }

    async fn register(
        &self,
        caller: Caller,
        req: pb::RegisterNodeRequest,
    ) -> Result<pb::ApplyReply, Status> {
        let mut key = req
            .key
            .ok_or_else(|| Status::invalid_argument("key is missing"))?;
        if key.requires.is_empty() {
            key.requires.push("node-key.v1".into());
        }
        let revision =
            enroll::register(&self.ctx, &caller, "nodes.register", key.clone(), "").await?;
        Ok(pb::ApplyReply {
            revision,
            changes: vec![change("node", &key.name, "registered")],
            ..Default::default()
        })
    }

    async fn delete_node(
        &self,
        caller: Caller,
        req: pb::ListRequest,
    ) -> Result<pb::ApplyReply, Status> {
        if self.ctx.state.get("node", &req.name).is_none() {
            return Err(Status::not_found(format!("no node named `{}`", req.name)));
        }
        let name = req.name.clone();
        let mut m = self.ctx.begin().await?;
        // Its streams are cut when this revision loads (fleet.rs); its pin reports go now.
        let mut writes =
            pins::forget_reporter(&mut m.tx, &self.ctx.state, &name, self.ctx.corroboration)
                .await
                .map_err(storage)?;
        let pin_changes = writes.len();
        let ttl = self.ctx.ratchet_secs;
        let facts = capabilities::forget_reporter(&mut m.tx, &self.ctx.state, &name, ttl)
            .await
            .map_err(storage)?;
        let detail = format!(
            "node/{name}: key, streams, {pin_changes} pin change(s) and {} capability change(s) from its reports",
            facts.len()
        );
        writes.extend(facts);
        writes.push(Write::Delete { kind: "node", name });
        let writes = Some(writes);
        let revision = self
            .ctx
            .finish(m, &caller, "nodes.delete", detail, writes)
            .await?;
        Ok(pb::ApplyReply {
            revision,
            changes: vec![change("node", &req.name, "deleted")],
            ..Default::default()
        })
    }

    async fn audit(&self, req: pb::AuditRequest) -> Result<pb::AuditList, Status> {
        let limit = match req.limit {
            0 => 100,
            n => n.min(10_000),
        };
        let rows = self
            .ctx
            .db
            .audit(req.since_revision, limit)
            .await
            .map_err(storage)?;
        let entries = rows
            .into_iter()
            .map(|r| pb::AuditEntry {
                revision: r.revision,
                at: r.at,
                who: r.who,
                action: r.action,
                detail: r.detail,
            })
            .collect();
        Ok(pb::AuditList { entries })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_policies(
        &self,
        req: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        counted("ApplyPolicies", self.apply(caller, req.into_inner()).await)
    }

    async fn delete_policies(
        &self,
        req: Request<pb::DeletePoliciesRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        counted(
            "DeletePolicies",
            self.delete(caller, req.into_inner()).await,
        )
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::PolicyList>, Status> {
        let name = req.into_inner().name;
        let policies = self
            .current_policies()
            .into_values()
            .filter(|p| name.is_empty() || p.name == name);
        let inbound = self
            .current_inbound()
            .into_values()
            .filter(|i| name.is_empty() || i.name == name);
        let list = pb::PolicyList {
            policies: policies.collect(),
            revision: self.ctx.state.revision(),
            inbound: inbound.collect(),
        };
        counted("ListPolicies", Ok(list))
    }

    async fn list_pins(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::PinList>, Status> {
        counted(
            "ListPins",
            AdminService::list_pins(self, req.into_inner()).await,
        )
    }

    async fn approve_pin(
        &self,
        req: Request<pb::PinRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        counted(
            "ApprovePin",
            self.decide(
                caller,
                "pins.approve",
                r.peer,
                r.spki,
                PinState::Approved,
                String::new(),
            )
            .await,
        )
    }

    async fn revoke_pin(
        &self,
        req: Request<pb::PinRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        counted(
            "RevokePin",
            self.decide(
                caller,
                "pins.revoke",
                r.peer,
                r.spki,
                PinState::Revoked,
                String::new(),
            )
            .await,
        )
    }

    async fn vouch_pin(
        &self,
        req: Request<pb::VouchRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        if SpkiPin::parse(&r.next).is_err() {
            return counted(
                "VouchPin",
                Err(Status::invalid_argument(
                    "next: expected sha256/<base64 SPKI digest>",
                )),
            );
        }
        counted(
            "VouchPin",
            self.decide(
                caller,
                "pins.vouch",
                r.peer,
                r.spki,
                PinState::Approved,
                r.next,
            )
            .await,
        )
    }

    async fn delete_pins(
        &self,
        req: Request<pb::DeletePinsRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        counted(
            "DeletePins",
            AdminService::delete_pins(self, caller, req.into_inner()).await,
        )
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::NodeList>, Status> {
        counted(
            "ListNodes",
            AdminService::list_nodes(self, req.into_inner()).await,
        )
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        counted(
            "RegisterNode",
            self.register(caller, req.into_inner()).await,
        )
    }

    async fn delete_node(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        counted(
            "DeleteNode",
            AdminService::delete_node(self, caller, req.into_inner()).await,
        )
    }

    async fn create_enroll_token(
        &self,
        req: Request<pb::EnrollTokenRequest>,
    ) -> Result<Response<pb::EnrollTokenReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        counted(
            "CreateEnrollToken",
            enroll::create_token(&self.ctx, &caller, r).await,
        )
    }

    async fn list_audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditList>, Status> {
        counted("ListAudit", self.audit(req.into_inner()).await)
    }

    async fn get_capabilities(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::CapabilityList>, Status> {
        let peer = req.into_inner().name;
        counted(
            "GetCapabilities",
            capabilities::list(&self.ctx, &peer).await,
        )
    }

    async fn clear_capability(
        &self,
        req: Request<pb::ClearCapabilityRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let reply = capabilities::clear(&self.ctx, &caller, &r.peer, r.dry_run).await;
        counted("ClearCapability", reply)
    }

    async fn get_tlsrpt_report(
        &self,
        req: Request<pb::TlsrptReportRequest>,
    ) -> Result<Response<pb::TlsrptReportReply>, Status> {
        counted(
            "GetTlsrptReport",
            crate::tlsrpt::report(&self.ctx, req.into_inner()).await,
        )
    }
}
