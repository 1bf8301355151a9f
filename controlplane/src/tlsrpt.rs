//! TLS-RPT (RFC 8460) across the fleet: each node's day aggregate per policy domain, stored
//! under the reporting node's name (the authenticated caller, never a field), replaced
//! whole when the node sends it again; a report merges every node's row for the domain and day.

use osgate_core::tlsrpt::{Day, DayAggregate, ReportMeta, StoredDay, domain_key, render};
use osgate_proto::pb;
use osgate_proto::tlsrpt::{MAX_DAYS_PER_BATCH, from_pb};
use sqlx::Row;
use tonic::Status;

use crate::ctx::{Ctx, storage, unix_now};
use crate::db::to_db;

/// Days kept (RFC 8460 reports cover a day; a month covers late readers).
pub const KEEP_DAYS: u32 = 30;

/// Stores `node`'s days; returns how many were stored. A malformed day refuses the batch.
pub async fn store(ctx: &Ctx, node: &str, days: &[pb::TlsrptDay]) -> Result<u32, Status> {
    if days.len() > MAX_DAYS_PER_BATCH {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_DAYS_PER_BATCH} TLS-RPT days per report"
        )));
    }
    let checked = days
        .iter()
        .map(from_pb)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("TLS-RPT day: {e}")))?;
    if checked.is_empty() {
        return Ok(0);
    }
    let now = unix_now();
    let oldest = Day::of_unix(now).0.saturating_sub(KEEP_DAYS);
    let mut tx = ctx.db.pool.begin().await.map_err(storage)?;
    for (domain, day, aggregate) in &checked {
        let body = serde_json::to_string(&aggregate.to_stored())
            .map_err(|e| Status::internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO tlsrpt_days (node, domain, day, body, updated) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (node, domain, day) DO UPDATE SET body = excluded.body, updated = excluded.updated",
        )
        .bind(node)
        .bind(domain)
        .bind(i64::from(day.0))
        .bind(body)
        .bind(to_db(now))
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    }
    sqlx::query("DELETE FROM tlsrpt_days WHERE day < $1")
        .bind(i64::from(oldest))
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    tx.commit().await.map_err(storage)?;
    Ok(u32::try_from(checked.len()).unwrap_or(u32::MAX))
}

/// The fleet-wide report of one domain and day.
pub async fn report(
    ctx: &Ctx,
    r: pb::TlsrptReportRequest,
) -> Result<pb::TlsrptReportReply, Status> {
    let day = Day::parse(&r.date).ok_or_else(|| {
        Status::invalid_argument(format!("date {:?}: expected YYYY-MM-DD", r.date))
    })?;
    let domain = domain_key(&r.policy_domain);
    if domain.is_empty() {
        return Err(Status::invalid_argument("a policy domain is needed"));
    }
    let rows = sqlx::query(
        "SELECT node, body FROM tlsrpt_days WHERE domain = $1 AND day = $2 ORDER BY node",
    )
    .bind(&domain)
    .bind(i64::from(day.0))
    .fetch_all(&ctx.db.pool)
    .await
    .map_err(storage)?;
    let mut merged = DayAggregate::default();
    let mut nodes = Vec::with_capacity(rows.len());
    for row in rows {
        let node: String = row.try_get(0).map_err(storage)?;
        let body: String = row.try_get(1).map_err(storage)?;
        match serde_json::from_str::<StoredDay>(&body) {
            Ok(stored) => merged.merge(&DayAggregate::from_stored(&stored)),
            // Written by this code, so only a damaged row: say so, count the rest.
            Err(e) => {
                tracing::error!(node, domain, error = %e, "unreadable TLS-RPT row skipped");
                continue;
            }
        }
        nodes.push(node);
    }
    let meta = ReportMeta {
        organization: non_empty(r.organization, "osgate"),
        contact: non_empty(r.contact, "postmaster@localhost"),
    };
    Ok(pb::TlsrptReportReply {
        json: render(&domain, day, &merged, &meta),
        nodes,
    })
}

fn non_empty(text: String, default: &str) -> String {
    match text.trim() {
        "" => default.to_owned(),
        t => t.to_owned(),
    }
}
