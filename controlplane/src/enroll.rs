//! Node registration: by an admin (the node's key, given out of band), or by the node itself
//! with a one-time enrolment token an admin created. Either way the node's identity is its
//! key, the addresses its key covers and the peers it serves are the admin's (CONFORMANCE
//! J.56, J.57), and the registration is a revision in the audit log.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use metrics::counter;
use osgate_core::crypto::sha::sha256;
use osgate_proto::pb::{self, resource::Kind};
use osgate_proto::validate;
use sqlx::Row;
use tonic::Status;

use crate::auth::Caller;
use crate::ctx::{Ctx, put, storage, unix_now};
use crate::db::{from_db, to_db};
use crate::metrics as m;
use crate::peer::canonical_set;

const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The hex SHA-256 of a token: what the database and the config hold instead of tokens.
pub fn hex_sha256(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks `key` and returns it with its addresses and peers in canonical spelling.
fn checked(mut key: pb::NodeKey) -> Result<pb::NodeKey, Status> {
    key.addresses = canonical_set(&key.addresses);
    key.peers = canonical_set(&key.peers);
    validate::node_key(&key).map_err(|e| Status::invalid_argument(e.to_string()))?;
    for peer in &key.peers {
        let port = peer.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(Status::invalid_argument(format!(
                "node/{}: peer `{peer}` is not host:port",
                key.name
            )));
        }
    }
    Ok(key)
}

/// Why `key` cannot be registered next to the nodes in `existing`, if it cannot: its key or
/// one of its addresses belongs to another node.
fn conflict(existing: &[pb::NodeKey], key: &pb::NodeKey) -> Option<String> {
    let others = existing.iter().filter(|n| n.name != key.name);
    for other in others {
        if other.spki == key.spki {
            return Some(format!(
                "this key is registered as node `{}`; delete that node first",
                other.name
            ));
        }
        if let Some(a) = key.addresses.iter().find(|a| other.addresses.contains(a)) {
            return Some(format!(
                "address {a} is already claimed by node `{}`: one address belongs to one node; remove it there first",
                other.name
            ));
        }
    }
    None
}

fn registered(ctx: &Ctx) -> Vec<pb::NodeKey> {
    ctx.state
        .list("node")
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Node(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// The audit detail of a registration: what the key covers now, and before.
fn detail(key: &pb::NodeKey, before: Option<&pb::NodeKey>) -> String {
    let list = |v: &[String]| format!("[{}]", v.join(","));
    let mut text = format!(
        "node/{} {} addresses {} peers {}",
        key.name,
        key.spki,
        list(&key.addresses),
        list(&key.peers)
    );
    if let Some(b) = before {
        text.push_str(&format!(
            " (was {} addresses {} peers {})",
            b.spki,
            list(&b.addresses),
            list(&b.peers)
        ));
    }
    text
}

/// Registers `key` (replacing a node of the same name); a key or an address already
/// registered for another node is refused. `note` is added to the audit detail.
pub async fn register(
    ctx: &Ctx,
    caller: &Caller,
    action: &str,
    key: pb::NodeKey,
    note: &str,
) -> Result<u64, Status> {
    let key = checked(key)?;
    let m = ctx.begin().await?;
    // The mutation holds the revision lock: after this refresh no other registration can
    // commit before ours, so the check below sees every node.
    ctx.refresh().await;
    let existing = registered(ctx);
    if let Some(reason) = conflict(&existing, &key) {
        m.tx.rollback().await.map_err(storage)?;
        return Err(Status::already_exists(format!(
            "node/{}: {reason}",
            key.name
        )));
    }
    let before = existing.iter().find(|n| n.name == key.name);
    let detail = format!("{}{note}", detail(&key, before));
    let name = key.name.clone();
    let resource = pb::Resource {
        kind: Some(Kind::Node(key)),
    };
    let writes = Some(vec![put("node", name, &resource)]);
    ctx.finish(m, caller, action, detail, writes).await
}

/// Creates a one-time token that registers the first key that presents it as node `name`,
/// covering `addresses` and serving `peers`.
pub async fn create_token(
    ctx: &Ctx,
    caller: &Caller,
    req: pb::EnrollTokenRequest,
) -> Result<pb::EnrollTokenReply, Status> {
    let check = checked(pb::NodeKey {
        name: req.name.clone(),
        spki: osgate_core::pin::SpkiPin::of_spki(b"").to_string(),
        addresses: req.addresses,
        peers: req.peers,
        requires: Vec::new(),
    })?;
    if let Some(reason) = conflict(&registered(ctx), &check) {
        return Err(Status::already_exists(format!(
            "node/{}: {reason}",
            check.name
        )));
    }
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| Status::internal("no randomness"))?;
    let token = URL_SAFE_NO_PAD.encode(secret);
    let ttl = match req.ttl {
        0 => DEFAULT_TOKEN_TTL_SECS,
        ttl => ttl,
    };
    let expires = unix_now().saturating_add(ttl);
    let hashed = hex_sha256(&token);
    let name = check.name;
    let mut m = ctx.begin().await?;
    sqlx::query(
        "INSERT INTO enroll_tokens (token_sha256, name, expires, addresses, peers) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&hashed)
    .bind(&name)
    .bind(to_db(expires))
    .bind(check.addresses.join(","))
    .bind(check.peers.join(","))
    .execute(&mut *m.tx)
    .await
    .map_err(storage)?;
    let detail = format!(
        "node/{name} addresses [{}] peers [{}]",
        check.addresses.join(","),
        check.peers.join(",")
    );
    ctx.finish(m, caller, "nodes.enroll-token", detail, Some(Vec::new()))
        .await?;
    Ok(pb::EnrollTokenReply { token, expires })
}

fn split(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A token as stored: the node's name and what its key will cover.
struct Token {
    name: String,
    expires: u64,
    addresses: Vec<String>,
    peers: Vec<String>,
}

/// Takes the token out of storage (it is used once, whatever happens next).
async fn take(ctx: &Ctx, token: &str) -> Result<Option<Token>, Status> {
    let mut tx = ctx.db.pool.begin().await.map_err(storage)?;
    let row = sqlx::query(
        "DELETE FROM enroll_tokens WHERE token_sha256 = $1 RETURNING name, expires, addresses, peers",
    )
    .bind(hex_sha256(token))
    .fetch_optional(&mut *tx)
    .await
    .map_err(storage)?;
    tx.commit().await.map_err(storage)?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Token {
        name: row.try_get(0).map_err(storage)?,
        expires: from_db(row.try_get(1).map_err(storage)?),
        addresses: split(&row.try_get::<String, _>(2).map_err(storage)?),
        peers: split(&row.try_get::<String, _>(3).map_err(storage)?),
    }))
}

/// Records a refused redemption of a token that existed: in the audit log (who, which
/// node, why). Unknown tokens are only logged and counted, so that a flood of guesses
/// cannot grow the store.
async fn refused(ctx: &Ctx, caller: &Caller, name: &str, reason: &str) -> Status {
    counter!(m::ENROLMENTS_REFUSED, "reason" => "refused").increment(1);
    tracing::warn!(who = caller.who(), node = name, reason, "enrolment refused");
    let detail = format!("node/{name}: {reason}");
    if let Ok(mutation) = ctx.begin().await {
        let audited = ctx
            .finish(
                mutation,
                caller,
                "nodes.enroll-refused",
                detail,
                Some(Vec::new()),
            )
            .await;
        if let Err(e) = audited {
            tracing::error!(error = %e, "cannot audit a refused enrolment");
        }
    }
    Status::permission_denied(format!("enrolment as node `{name}` refused: {reason}"))
}

/// Redeems `token` for the calling key. The token assigns the node's addresses: the ones
/// the node advertises are ignored (by default a node advertises its listen addresses,
/// often a wildcard), and noted in the audit log when they differ.
pub async fn redeem(
    ctx: &Ctx,
    caller: &Caller,
    token: &str,
    addresses: Vec<String>,
) -> Result<String, Status> {
    let Caller::Enrolling { key } = caller else {
        return Err(Status::permission_denied("enrolment needs a client key"));
    };
    let Some(t) = take(ctx, token).await? else {
        counter!(m::ENROLMENTS_REFUSED, "reason" => "unknown-token").increment(1);
        tracing::warn!(
            who = caller.who(),
            "enrolment refused: unknown or used token"
        );
        return Err(Status::permission_denied(
            "the enrolment token is unknown, used or expired; ask an admin for a new one",
        ));
    };
    if t.expires < unix_now() {
        return Err(refused(ctx, caller, &t.name, "the token expired").await);
    }
    let claimed = canonical_set(&addresses);
    let note = match claimed != t.addresses && !claimed.is_empty() {
        true => {
            tracing::warn!(
                node = t.name,
                advertised = claimed.join(","),
                assigned = t.addresses.join(","),
                "an enrolling node advertised addresses its token does not assign; ignored"
            );
            format!("; advertised [{}], ignored", claimed.join(","))
        }
        false => String::new(),
    };
    let node = pb::NodeKey {
        name: t.name.clone(),
        spki: key.to_string(),
        addresses: t.addresses,
        peers: t.peers,
        requires: vec!["node-key.v1".into()],
    };
    match register(ctx, caller, "nodes.enroll", node, &note).await {
        Ok(_) => Ok(t.name),
        Err(e) => Err(refused(ctx, caller, &t.name, e.message()).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, spki: &str, addresses: &[&str]) -> pb::NodeKey {
        pb::NodeKey {
            name: name.into(),
            spki: spki.into(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_address_of_another_node_or_its_key_is_refused() {
        let existing = [node("b", "k-b", &["10.0.0.2:443"])];
        let claim = conflict(&existing, &node("a", "k-a", &["10.0.0.2:443"]));
        assert!(claim.unwrap().contains("already claimed by node `b`"));
        let key = conflict(&existing, &node("a", "k-b", &[]));
        assert!(key.unwrap().contains("registered as node `b`"));
        // The same node may keep its own address when it is registered again.
        assert_eq!(
            conflict(&existing, &node("b", "k-new", &["10.0.0.2:443"])),
            None
        );
        assert_eq!(
            conflict(&existing, &node("a", "k-a", &["10.0.0.3:443"])),
            None
        );
    }
}
