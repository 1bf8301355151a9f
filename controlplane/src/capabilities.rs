//! The fleet ratchet (DESIGN.md, "Capability caches"): what nodes saw of the peers assigned to
//! them, merged per peer into "TLS-capable until T" for every node. It only tightens: a
//! report extends it, nothing a node sends can shorten it; only an operator's clear does,
//! and reports from before a clear no longer count (CONFORMANCE J.59).

use std::collections::{BTreeMap, BTreeSet};

use osgate_proto::features;
use osgate_proto::pb::{self, resource::Kind};
use sqlx::Row;
use tonic::Status;

use crate::auth::Caller;
use crate::ctx::{Ctx, put, storage, unix_now};
use crate::db::{Tx, Write, from_db, to_db};
use crate::state::State;

/// One node's report of one peer, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub node: String,
    pub tls_version: String,
    pub group: String,
    pub starttls: bool,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// The fleet fact for `peer` from its reports newer than `cleared_at`, with its reporters;
/// `None` when no report counts. The newest report decides how long TLS stays mandatory.
pub fn merge(
    peer: &str,
    reports: &[Seen],
    cleared_at: u64,
    ttl_secs: u64,
) -> Option<pb::Capability> {
    let live: Vec<&Seen> = reports
        .iter()
        .filter(|s| s.last_seen > cleared_at)
        .collect();
    let newest = live.iter().max_by_key(|s| s.last_seen)?;
    let reporters: BTreeSet<&str> = live.iter().map(|s| s.node.as_str()).collect();
    Some(pb::Capability {
        peer: peer.to_owned(),
        tls_until: newest.last_seen.saturating_add(ttl_secs),
        tls_version: live
            .iter()
            .map(|s| s.tls_version.clone())
            .max()
            .unwrap_or_default(),
        group: newest.group.clone(),
        starttls: live.iter().any(|s| s.starttls),
        first_seen: live.iter().map(|s| s.first_seen).min().unwrap_or(0),
        last_seen: newest.last_seen,
        reporters: reporters.into_iter().map(str::to_owned).collect(),
        requires: vec![features::CAPABILITY.into()],
    })
}

/// Whether `new` is worth a revision over what nodes hold: a first fact, another version,
/// group or STARTTLS, or an extension by more than a tenth of the TTL (a busy peer must not
/// cost a revision per report).
fn material(old: Option<&pb::Capability>, new: &pb::Capability, ttl_secs: u64) -> bool {
    let Some(old) = old else { return true };
    (old.tls_version.as_str(), old.group.as_str(), old.starttls)
        != (new.tls_version.as_str(), new.group.as_str(), new.starttls)
        || new.tls_until.saturating_sub(old.tls_until) > ttl_secs / 10
}

/// The peer's reports and last clear.
async fn read(conn: &mut sqlx::AnyConnection, peer: &str) -> Result<(Vec<Seen>, u64), sqlx::Error> {
    let all = read_all(conn, Some(peer)).await?;
    Ok(all.get(peer).cloned().unwrap_or_default())
}

/// Reports and clears by peer (all peers for `None`).
pub async fn read_all(
    conn: &mut sqlx::AnyConnection,
    peer: Option<&str>,
) -> Result<BTreeMap<String, (Vec<Seen>, u64)>, sqlx::Error> {
    let filter = peer.unwrap_or("");
    let rows = sqlx::query(
        "SELECT peer, node, tls_version, grp, starttls, first_seen, last_seen FROM capability_reports \
         WHERE $1 = '' OR peer = $1 ORDER BY peer, node",
    )
    .bind(filter)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: BTreeMap<String, (Vec<Seen>, u64)> = BTreeMap::new();
    for r in &rows {
        let seen = Seen {
            node: r.try_get(1)?,
            tls_version: r.try_get(2)?,
            group: r.try_get(3)?,
            starttls: r.try_get::<i64, _>(4)? != 0,
            first_seen: from_db(r.try_get(5)?),
            last_seen: from_db(r.try_get(6)?),
        };
        out.entry(r.try_get(0)?).or_default().0.push(seen);
    }
    let clears =
        sqlx::query("SELECT peer, cleared_at FROM capability_clears WHERE $1 = '' OR peer = $1")
            .bind(filter)
            .fetch_all(&mut *conn)
            .await?;
    for r in &clears {
        out.entry(r.try_get(0)?).or_default().1 = from_db(r.try_get(1)?);
    }
    Ok(out)
}

/// The write that makes the distributed fact of `peer` match storage, if one is due.
async fn sync_peer(
    tx: &mut Tx<'static>,
    state: &State,
    peer: &str,
    ttl_secs: u64,
) -> Result<Option<Write>, sqlx::Error> {
    let (reports, cleared_at) = read(tx, peer).await?;
    let held = state.get("capability", peer);
    let old = match held.as_deref().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Capability(c)) => Some(c),
        _ => None,
    };
    Ok(match merge(peer, &reports, cleared_at, ttl_secs) {
        Some(mut new) if material(old, &new, ttl_secs) => {
            // Which nodes reported it stays here; nodes need the fact.
            new.reporters.clear();
            let resource = pb::Resource {
                kind: Some(Kind::Capability(new)),
            };
            Some(put("capability", peer.to_owned(), &resource))
        }
        Some(_) => None,
        None if old.is_some() => Some(Write::Delete {
            kind: "capability",
            name: peer.to_owned(),
        }),
        None => None,
    })
}

/// Stores `node`'s reports (peers already admitted and canonical) and brings each peer's
/// fleet fact up to date: one revision, audited with the node as who, when any changed.
pub async fn record(
    ctx: &Ctx,
    caller: &Caller,
    node: &str,
    reported: Vec<pb::ObservedTls>,
) -> Result<(), Status> {
    let now = unix_now();
    let mut m = ctx.begin().await?;
    for seen in &reported {
        sqlx::query(
            "INSERT INTO capability_reports (peer, node, tls_version, grp, starttls, first_seen, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (peer, node) DO UPDATE SET \
             tls_version = excluded.tls_version, grp = excluded.grp, starttls = excluded.starttls, \
             last_seen = excluded.last_seen",
        )
        .bind(&seen.peer)
        .bind(node)
        .bind(&seen.tls_version)
        .bind(&seen.group)
        .bind(i64::from(seen.starttls))
        .bind(to_db(seen.first_seen.min(now)))
        // A node's clock is not trusted to extend the ratchet into the future.
        .bind(to_db(seen.last_seen.min(now)))
        .execute(&mut *m.tx)
        .await
        .map_err(storage)?;
    }
    let mut writes = Vec::new();
    let peers: BTreeSet<&str> = reported.iter().map(|s| s.peer.as_str()).collect();
    for peer in &peers {
        let write = sync_peer(&mut m.tx, &ctx.state, peer, ctx.ratchet_secs).await;
        writes.extend(write.map_err(storage)?);
    }
    let changed: Vec<String> = writes.iter().map(Write::name).collect();
    let detail = format!("TLS seen by {node} for {}", changed.join(", "));
    let writes = match writes.is_empty() {
        // The reports are stored either way; no fact changed, so no revision.
        true => {
            m.tx.commit().await.map_err(storage)?;
            return Ok(());
        }
        false => Some(writes),
    };
    ctx.finish(m, caller, "capabilities.report", detail, writes)
        .await?;
    counted("reported");
    Ok(())
}

/// Forgets a deleted node's reports (its word counts no more) and returns the writes that
/// re-derive the facts of the peers it had reported.
pub async fn forget_reporter(
    tx: &mut Tx<'static>,
    state: &State,
    node: &str,
    ttl_secs: u64,
) -> Result<Vec<Write>, sqlx::Error> {
    let rows = sqlx::query("DELETE FROM capability_reports WHERE node = $1 RETURNING peer")
        .bind(node)
        .fetch_all(&mut **tx)
        .await?;
    let mut writes = Vec::new();
    for row in &rows {
        let peer: String = row.try_get(0)?;
        writes.extend(sync_peer(tx, state, &peer, ttl_secs).await?);
    }
    Ok(writes)
}

/// `capabilities clear`: the peer really dropped TLS. Reports up to now stop counting, the
/// fact is withdrawn from every node; the reply's `affected` is the blast radius.
pub async fn clear(
    ctx: &Ctx,
    caller: &Caller,
    peer: &str,
    dry_run: bool,
) -> Result<pb::ApplyReply, Status> {
    let peer = crate::peer::canonical(peer);
    if let Err(e) = osgate_proto::validate::peer_ok("capability", &peer) {
        return Err(Status::invalid_argument(e.reason));
    }
    let held = ctx.state.get("capability", &peer);
    let before = match held.as_deref().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Capability(c)) => format!("TLS required until {}", c.tls_until),
        _ => "no fleet ratchet".to_owned(),
    };
    let affected: Vec<pb::Affected> = serving(ctx, &peer)
        .await?
        .into_iter()
        .map(|node| pb::Affected {
            node,
            peer: peer.clone(),
            before: before.clone(),
            after: "no fleet ratchet".into(),
        })
        .collect();
    let mut reply = pb::ApplyReply {
        changes: vec![pb::Change {
            kind: "capability".into(),
            name: peer.clone(),
            action: if held.is_some() {
                "deleted"
            } else {
                "unchanged"
            }
            .into(),
        }],
        affected,
        ..Default::default()
    };
    if dry_run {
        return Ok(reply);
    }
    let mut m = ctx.begin().await?;
    sqlx::query(
        "INSERT INTO capability_clears (peer, cleared_at) VALUES ($1, $2) \
         ON CONFLICT (peer) DO UPDATE SET cleared_at = excluded.cleared_at",
    )
    .bind(&peer)
    .bind(to_db(unix_now()))
    .execute(&mut *m.tx)
    .await
    .map_err(storage)?;
    let mut writes = Vec::new();
    if held.is_some() {
        writes.push(Write::Delete {
            kind: "capability",
            name: peer.clone(),
        });
    }
    let nodes: Vec<&str> = reply.affected.iter().map(|a| a.node.as_str()).collect();
    let detail = format!(
        "capability/{peer}: {before} cleared; nodes serving it: [{}]",
        nodes.join(",")
    );
    reply.revision = ctx
        .finish(m, caller, "capabilities.clear", detail, Some(writes))
        .await?;
    counted("cleared");
    Ok(reply)
}

/// The nodes that serve `peer`, by name.
async fn serving(ctx: &Ctx, peer: &str) -> Result<Vec<String>, Status> {
    let statuses = crate::nodes::serving(ctx).await?;
    let mut nodes: Vec<String> = statuses
        .into_iter()
        .filter(|(_, s)| s.peers.iter().any(|p| p == peer))
        .map(|(name, _)| name)
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// `get capabilities`: per peer, the ratchet with its reporters, the DANE cache, who serves it.
pub async fn list(ctx: &Ctx, peer: &str) -> Result<pb::CapabilityList, Status> {
    let filter = (!peer.is_empty()).then(|| crate::peer::canonical(peer));
    let mut conn = ctx.db.pool.acquire().await.map_err(storage)?;
    let reports = read_all(&mut conn, filter.as_deref())
        .await
        .map_err(storage)?;
    drop(conn);
    let statuses = crate::nodes::serving(ctx).await?;
    // Every peer the fleet holds anything for, and every peer a node serves.
    let mut peers: BTreeSet<String> = reports.keys().cloned().collect();
    peers.extend(statuses.values().flat_map(|s| s.peers.iter().cloned()));
    for r in ctx.state.list("dane").iter().chain(&ctx.state.list("sts")) {
        match &r.kind {
            Some(Kind::Dane(d)) => peers.insert(d.peer.clone()),
            Some(Kind::Sts(s)) => peers.insert(format!("{}:25", s.domain)),
            _ => false,
        };
    }
    let errors = ctx.dane_errors();
    let rows = peers
        .into_iter()
        .filter(|p| filter.as_ref().is_none_or(|f| f == p))
        .map(|p| {
            let (seen, cleared_at) = reports.get(&p).cloned().unwrap_or_default();
            let dane = match ctx
                .state
                .get("dane", &p)
                .as_deref()
                .and_then(|r| r.kind.clone())
            {
                Some(Kind::Dane(d)) => Some(d),
                _ => None,
            };
            let mut nodes: Vec<String> = statuses
                .iter()
                .filter(|(_, s)| s.peers.contains(&p))
                .map(|(n, _)| n.clone())
                .collect();
            nodes.sort();
            let sts = p.rsplit_once(':').and_then(|(host, _)| {
                match ctx
                    .state
                    .get("sts", host)
                    .as_deref()
                    .and_then(|r| r.kind.clone())
                {
                    Some(Kind::Sts(s)) => Some(s),
                    _ => None,
                }
            });
            pb::CapabilityRow {
                sts,
                tls: merge(&p, &seen, cleared_at, ctx.ratchet_secs),
                dane,
                dane_error: errors.get(&p).cloned().unwrap_or_default(),
                nodes,
                cleared_at,
                peer: p,
            }
        })
        .collect();
    Ok(pb::CapabilityList {
        capabilities: rows,
        revision: ctx.state.revision(),
    })
}

fn counted(change: &'static str) {
    metrics::counter!(crate::metrics::CAPABILITY_CHANGES, "change" => change).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(node: &str, version: &str, last_seen: u64) -> Seen {
        Seen {
            node: node.into(),
            tls_version: version.into(),
            group: "X25519".into(),
            starttls: false,
            first_seen: last_seen - 5,
            last_seen,
        }
    }

    #[test]
    fn the_newest_report_sets_the_deadline_and_a_clear_hides_older_ones() {
        let reports = [seen("a", "1.2", 100), seen("b", "1.3", 200)];
        let fact = merge("p:443", &reports, 0, 50).unwrap();
        assert_eq!((fact.tls_until, fact.tls_version.as_str()), (250, "1.3"));
        assert_eq!(fact.reporters, ["a", "b"]);
        let after_clear = merge("p:443", &reports, 150, 50).unwrap();
        assert_eq!(after_clear.reporters, ["b"]);
        assert!(
            merge("p:443", &reports, 200, 50).is_none(),
            "nothing newer than the clear"
        );
    }

    /// The fact only tightens: for every pair of report sets where the second adds reports or
    /// newer sightings to the first, the deadline never moves back.
    #[test]
    fn more_reports_never_shorten_the_ratchet() {
        let times = [1u64, 50, 100];
        for a in times {
            for b in times {
                for extra in times {
                    let before = [seen("a", "1.2", a), seen("b", "1.2", b)];
                    let after = [
                        seen("a", "1.2", a.max(extra)),
                        seen("b", "1.2", b),
                        seen("c", "1.2", extra),
                    ];
                    let t0 = merge("p", &before, 0, 10).map_or(0, |c| c.tls_until);
                    let t1 = merge("p", &after, 0, 10).map_or(0, |c| c.tls_until);
                    assert!(t1 >= t0, "{a} {b} {extra}");
                }
            }
        }
    }

    #[test]
    fn small_extensions_cost_no_revision() {
        let old = merge("p", &[seen("a", "1.3", 100)], 0, 1000).unwrap();
        let soon = merge("p", &[seen("a", "1.3", 150)], 0, 1000).unwrap();
        let later = merge("p", &[seen("a", "1.3", 201)], 0, 1000).unwrap();
        assert!(!material(Some(&old), &soon, 1000));
        assert!(material(Some(&old), &later, 1000));
        assert!(material(None, &soon, 1000));
    }
}
