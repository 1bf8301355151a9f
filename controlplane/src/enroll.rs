//! Node registration: by an admin (the node's key, given out of band), or by the node itself
//! with a one-time enrolment token an admin created. Either way the node's identity is its
//! key, and the registration is a revision in the audit log.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use osgate_api::pb::{self, resource::Kind};
use osgate_api::validate;
use osgate_core::crypto::sha::sha256;
use sqlx::Row;
use tonic::Status;

use crate::auth::Caller;
use crate::ctx::{Ctx, put, storage, unix_now};
use crate::db::{from_db, to_db};

const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The hex SHA-256 of a token: what the database and the config hold instead of tokens.
pub fn hex_sha256(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Registers `key` (replacing a node of the same name); a key already registered under
/// another name is refused.
pub async fn register(ctx: &Ctx, caller: &Caller, key: pb::NodeKey) -> Result<u64, Status> {
    validate::node_key(&key).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let taken = ctx.state.list("node").iter().find_map(|r| match &r.kind {
        Some(Kind::Node(n)) if n.spki == key.spki && n.name != key.name => Some(n.name.clone()),
        _ => None,
    });
    if let Some(other) = taken {
        return Err(Status::already_exists(format!(
            "this key is registered as node `{other}`; delete that node first"
        )));
    }
    let name = key.name.clone();
    let detail = format!("node/{name} {} {}", key.spki, key.addresses.join(","));
    let resource = pb::Resource {
        kind: Some(Kind::Node(key)),
    };
    let m = ctx.begin().await?;
    let writes = Some(vec![put("node", name, &resource)]);
    ctx.finish(m, caller, "nodes.register", detail, writes)
        .await
}

/// Creates a one-time token that registers the first key that presents it as node `name`.
pub async fn create_token(
    ctx: &Ctx,
    caller: &Caller,
    name: String,
    ttl: u64,
) -> Result<pb::EnrollTokenReply, Status> {
    let check = pb::NodeKey {
        name: name.clone(),
        spki: osgate_core::pin::SpkiPin::of_spki(b"").to_string(),
        ..Default::default()
    };
    validate::node_key(&check).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| Status::internal("no randomness"))?;
    let token = URL_SAFE_NO_PAD.encode(secret);
    let expires = unix_now()
        + if ttl == 0 {
            DEFAULT_TOKEN_TTL_SECS
        } else {
            ttl
        };
    let hashed = hex_sha256(&token);
    let mut m = ctx.begin().await?;
    sqlx::query("INSERT INTO enroll_tokens (token_sha256, name, expires) VALUES ($1, $2, $3)")
        .bind(&hashed)
        .bind(&name)
        .bind(to_db(expires))
        .execute(&mut *m.tx)
        .await
        .map_err(storage)?;
    let detail = format!("node/{name}");
    ctx.finish(m, caller, "nodes.enroll-token", detail, Some(Vec::new()))
        .await?;
    Ok(pb::EnrollTokenReply { token, expires })
}

/// Redeems `token` for the calling key.
pub async fn redeem(
    ctx: &Ctx,
    caller: &Caller,
    token: &str,
    addresses: Vec<String>,
) -> Result<String, Status> {
    let Caller::Enrolling { key } = caller else {
        return Err(Status::permission_denied("enrolment needs a client key"));
    };
    let hashed = hex_sha256(token);
    let mut tx = ctx.db.pool.begin().await.map_err(storage)?;
    let row =
        sqlx::query("DELETE FROM enroll_tokens WHERE token_sha256 = $1 RETURNING name, expires")
            .bind(&hashed)
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
    let refused = || {
        Status::permission_denied(
            "the enrolment token is unknown, used or expired; ask an admin for a new one",
        )
    };
    let row = row.ok_or_else(refused)?;
    let name: String = row.try_get(0).map_err(storage)?;
    if from_db(row.try_get(1).map_err(storage)?) < unix_now() {
        return Err(refused());
    }
    tx.commit().await.map_err(storage)?;
    let node = pb::NodeKey {
        name: name.clone(),
        spki: key.to_string(),
        addresses,
        requires: vec!["node-key.v1".into()],
    };
    register(ctx, caller, node).await?;
    Ok(name)
}
