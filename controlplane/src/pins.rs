//! Fleet pins (CONFORMANCE D.28, D.29): keys nodes report for their peers, and what the fleet
//! makes of them. A key reported by one node stays `learned`; it spreads as `corroborated`
//! once `corroboration` distinct nodes reported it and no other key is known for the peer;
//! an operator can approve or revoke any key. Conflicting keys are kept side by side and
//! shown, never resolved by whoever wrote last.

use std::collections::{BTreeMap, BTreeSet};

use osgate_core::fleet::PinState;
use osgate_proto::pb::{self, resource::Kind};
use osgate_proto::validate::pin_name;
use sqlx::Row;
use tonic::Status;

use crate::auth::Caller;
use crate::ctx::{Ctx, storage, unix_now};
use crate::db::{Tx, Write, to_db};
use crate::state::State;

/// What storage holds about one key of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub reporters: Vec<String>,
    /// An operator's decision: approved or revoked, and a vouched next key.
    pub decision: Option<(PinState, String)>,
}

/// One key's standing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub pin: pb::FleetPin,
    pub conflict: bool,
}

/// The standing of every key of one peer. A key is established once `corroboration`
/// nodes reported it; another key below that (one dissenting reporter) raises a conflict
/// for an operator but does not take an established key away from the fleet (CONFORMANCE
/// J.57). Two established keys, or none, and neither spreads.
pub fn standings(
    peer: &str,
    keys: &BTreeMap<String, Observed>,
    corroboration: u32,
) -> Vec<Standing> {
    let revoked = |o: &Observed| matches!(o.decision, Some((PinState::Revoked, _)));
    let approved = |o: &Observed| matches!(o.decision, Some((PinState::Approved, _)));
    let enough =
        |o: &Observed| u32::try_from(o.reporters.len()).unwrap_or(u32::MAX) >= corroboration;
    let live = keys.values().filter(|o| !revoked(o)).count();
    let established = keys.values().filter(|o| !revoked(o) && enough(o)).count();
    let any_approved = keys.values().any(approved);
    let conflict = live > 1 && !any_approved;
    keys.iter()
        .map(|(spki, o)| {
            let (state, next) = match &o.decision {
                Some((state, next)) => (*state, next.clone()),
                // With an approved key, the operator has spoken for this peer.
                None if enough(o) && established == 1 && !any_approved => {
                    (PinState::Corroborated, String::new())
                }
                None => (PinState::Learned, String::new()),
            };
            Standing {
                pin: pb::FleetPin {
                    peer: peer.to_owned(),
                    spki: spki.clone(),
                    state: state.as_str().to_owned(),
                    next,
                    reporters: o.reporters.clone(),
                    requires: vec!["pin.v1".into()],
                },
                conflict: conflict && !revoked(o),
            }
        })
        .collect()
}

/// Reads what storage holds about `peer` (or every peer, for `None`).
pub async fn observed(
    conn: &mut sqlx::AnyConnection,
    peer: Option<&str>,
) -> Result<BTreeMap<String, BTreeMap<String, Observed>>, sqlx::Error> {
    let filter = peer.unwrap_or("");
    let reports = sqlx::query(
        "SELECT peer, spki, node FROM pin_reports WHERE $1 = '' OR peer = $1 ORDER BY peer, spki, node",
    )
    .bind(filter)
    .fetch_all(&mut *conn)
    .await?;
    let decisions =
        sqlx::query("SELECT peer, spki, state, next FROM pin_decisions WHERE $1 = '' OR peer = $1")
            .bind(filter)
            .fetch_all(&mut *conn)
            .await?;
    let mut out: BTreeMap<String, BTreeMap<String, Observed>> = BTreeMap::new();
    for row in &reports {
        let (peer, spki, node): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        out.entry(peer)
            .or_default()
            .entry(spki)
            .or_default()
            .reporters
            .push(node);
    }
    for row in &decisions {
        let (peer, spki, state, next): (String, String, String, String) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if let Some(state) = PinState::from_name(&state) {
            out.entry(peer)
                .or_default()
                .entry(spki)
                .or_default()
                .decision = Some((state, next));
        }
    }
    Ok(out)
}

/// The writes that make the distributed pins of `peer` match storage: nodes receive only
/// corroborated, approved and revoked keys.
pub async fn sync_peer(
    tx: &mut Tx<'static>,
    state: &State,
    peer: &str,
    corroboration: u32,
) -> Result<Vec<Write>, sqlx::Error> {
    let all = observed(tx, Some(peer)).await?;
    let empty = BTreeMap::new();
    let keys = all.get(peer).unwrap_or(&empty);
    let mut writes = Vec::new();
    let mut wanted = Vec::new();
    for standing in standings(peer, keys, corroboration) {
        let name = pin_name(peer, &standing.pin.spki);
        if standing.pin.state == PinState::Learned.as_str() {
            continue;
        }
        wanted.push(name.clone());
        let mut distributed = standing.pin;
        // Which nodes reported it stays in the control plane; nodes need the key and state.
        distributed.reporters.clear();
        let resource = pb::Resource {
            kind: Some(Kind::Pin(distributed)),
        };
        if state.get("pin", &name).as_deref() != Some(&resource) {
            writes.push(crate::ctx::put("pin", name, &resource));
        }
    }
    for existing in state.list("pin") {
        if let Some(Kind::Pin(p)) = &existing.kind {
            let name = pin_name(&p.peer, &p.spki);
            if p.peer == peer && !wanted.contains(&name) {
                writes.push(Write::Delete { kind: "pin", name });
            }
        }
    }
    Ok(writes)
}

/// What the audit log says about one peer's keys: key, state, conflict, reporters.
async fn summary(
    conn: &mut sqlx::AnyConnection,
    peer: &str,
    corroboration: u32,
) -> Result<String, sqlx::Error> {
    let all = observed(conn, Some(peer)).await?;
    let Some(keys) = all.get(peer) else {
        return Ok(String::new());
    };
    let rows: Vec<String> = standings(peer, keys, corroboration)
        .iter()
        .map(|s| {
            format!(
                "{} {}{} by [{}]",
                s.pin.spki,
                s.pin.state,
                if s.conflict { " CONFLICT" } else { "" },
                s.pin.reporters.join(",")
            )
        })
        .collect();
    Ok(rows.join("; "))
}

/// Stores `node`'s reports (peers already checked and canonical) and re-derives each
/// reported peer's pins. A change of standing (a new reporter, a key corroborated, a
/// conflict) is a revision in the audit log, with the reporting node as who.
pub async fn record(
    ctx: &Ctx,
    caller: &Caller,
    node: &str,
    reported: Vec<pb::LearnedPin>,
) -> Result<(), Status> {
    let corroboration = ctx.corroboration;
    let peers: BTreeSet<String> = reported.iter().map(|p| p.peer.clone()).collect();
    let mut before = BTreeMap::new();
    let mut conn = ctx.db.pool.acquire().await.map_err(storage)?;
    for peer in &peers {
        let was = summary(&mut conn, peer, corroboration).await;
        before.insert(peer.clone(), was.map_err(storage)?);
    }
    drop(conn);
    let now = unix_now();
    let mut tx = ctx.db.pool.begin().await.map_err(storage)?;
    for pin in &reported {
        sqlx::query(
            "INSERT INTO pin_reports (peer, spki, node, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (peer, spki, node) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(&pin.peer)
        .bind(&pin.spki)
        .bind(node)
        .bind(to_db(pin.first_seen.min(now)))
        .bind(to_db(now))
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    }
    tx.commit().await.map_err(storage)?;
    for peer in peers {
        let mut m = ctx.begin().await?;
        let writes = sync_peer(&mut m.tx, &ctx.state, &peer, corroboration)
            .await
            .map_err(storage)?;
        let after = summary(&mut m.tx, &peer, corroboration)
            .await
            .map_err(storage)?;
        let changed = before.get(&peer) != Some(&after);
        let detail = format!("pins of {peer} after a report: {after}");
        let writes = (changed || !writes.is_empty()).then_some(writes);
        ctx.finish(m, caller, "pins.report", detail, writes).await?;
    }
    count_conflicts(ctx).await;
    Ok(())
}

/// Forgets what `node` reported (it was deleted: its word counts no more) and returns the
/// writes that re-derive the pins of the peers it had reported.
pub async fn forget_reporter(
    tx: &mut Tx<'static>,
    state: &State,
    node: &str,
    corroboration: u32,
) -> Result<Vec<Write>, sqlx::Error> {
    let rows = sqlx::query("DELETE FROM pin_reports WHERE node = $1 RETURNING peer")
        .bind(node)
        .fetch_all(&mut **tx)
        .await?;
    let mut peers = BTreeSet::new();
    for row in &rows {
        peers.insert(row.try_get::<String, _>(0)?);
    }
    let mut writes = Vec::new();
    for peer in peers {
        writes.extend(sync_peer(tx, state, &peer, corroboration).await?);
    }
    Ok(writes)
}

/// Sets the conflicts gauge from storage.
pub async fn count_conflicts(ctx: &crate::ctx::Ctx) {
    let Ok(mut conn) = ctx.db.pool.acquire().await else {
        return;
    };
    let Ok(all) = observed(&mut conn, None).await else {
        return;
    };
    let conflicts = all
        .iter()
        .filter(|(peer, keys)| {
            standings(peer, keys, ctx.corroboration)
                .iter()
                .any(|s| s.conflict)
        })
        .count();
    metrics::gauge!(crate::metrics::PIN_CONFLICTS).set(conflicts as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(reporters: &[&str], decision: Option<PinState>) -> Observed {
        Observed {
            reporters: reporters.iter().map(|r| (*r).to_owned()).collect(),
            decision: decision.map(|s| (s, String::new())),
        }
    }

    fn states(keys: &[(&str, Observed)], corroboration: u32) -> Vec<(String, bool)> {
        let keys = keys
            .iter()
            .map(|(k, o)| ((*k).to_owned(), o.clone()))
            .collect();
        standings("p:443", &keys, corroboration)
            .into_iter()
            .map(|s| (s.pin.state, s.conflict))
            .collect()
    }

    #[test]
    fn one_reporter_is_not_corroboration() {
        assert_eq!(
            states(&[("k1", observed(&["n1"], None))], 2),
            [("learned".into(), false)]
        );
        assert_eq!(
            states(&[("k1", observed(&["n1", "n2"], None))], 2),
            [("corroborated".into(), false)]
        );
    }

    #[test]
    fn conflicting_keys_are_kept_and_neither_spreads() {
        let s = states(
            &[
                ("k1", observed(&["n1", "n2"], None)),
                ("k2", observed(&["n3", "n4"], None)),
            ],
            2,
        );
        assert_eq!(s, [("learned".into(), true), ("learned".into(), true)]);
    }

    #[test]
    fn one_dissenter_raises_a_conflict_but_keeps_an_established_key() {
        let s = states(
            &[
                ("k1", observed(&["n1", "n2"], None)),
                ("k2", observed(&["n3"], None)),
            ],
            2,
        );
        assert_eq!(s, [("corroborated".into(), true), ("learned".into(), true)]);
    }

    #[test]
    fn an_approval_resolves_a_conflict() {
        let s = states(
            &[
                ("k1", observed(&["n1"], Some(PinState::Approved))),
                ("k2", observed(&["n3", "n4"], None)),
            ],
            2,
        );
        assert_eq!(s, [("approved".into(), false), ("learned".into(), false)]);
    }

    #[test]
    fn a_revoked_key_is_no_conflict() {
        let s = states(
            &[
                ("k1", observed(&["n1", "n2"], Some(PinState::Revoked))),
                ("k2", observed(&["n3", "n4"], None)),
            ],
            2,
        );
        assert_eq!(
            s,
            [("revoked".into(), false), ("corroborated".into(), false)]
        );
    }
}
