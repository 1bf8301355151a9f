//! Schema migrations, applied in order at start, each in its own transaction. A database
//! written by a newer control plane (a higher version than this build knows) is refused.

use sqlx::Row;

use super::{Backend, Db};

/// Migration `i` brings the schema to version `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE meta (id BIGINT PRIMARY KEY, revision BIGINT NOT NULL);
     INSERT INTO meta (id, revision) VALUES (1, 0);
     CREATE TABLE resources (
         kind TEXT NOT NULL, name TEXT NOT NULL, body BLOB, revision BIGINT NOT NULL,
         PRIMARY KEY (kind, name));
     CREATE INDEX resources_by_revision ON resources (revision);
     CREATE TABLE audit (
         revision BIGINT PRIMARY KEY, at BIGINT NOT NULL, who TEXT NOT NULL,
         action TEXT NOT NULL, detail TEXT NOT NULL);
     CREATE TABLE pin_reports (
         peer TEXT NOT NULL, spki TEXT NOT NULL, node TEXT NOT NULL,
         first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
         PRIMARY KEY (peer, spki, node));
     CREATE TABLE pin_decisions (
         peer TEXT NOT NULL, spki TEXT NOT NULL, state TEXT NOT NULL, next TEXT NOT NULL,
         PRIMARY KEY (peer, spki));
     CREATE TABLE node_status (
         node TEXT PRIMARY KEY, connected BIGINT NOT NULL, acked BIGINT NOT NULL,
         nacked BIGINT NOT NULL, nack_error TEXT NOT NULL, last_seen BIGINT NOT NULL,
         version TEXT NOT NULL, peers TEXT NOT NULL);
     CREATE TABLE enroll_tokens (
         token_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, expires BIGINT NOT NULL)",
    "ALTER TABLE node_status ADD COLUMN outcomes TEXT NOT NULL DEFAULT ''",
    // What an enrolment token's key will cover and serve: the admin's choice, not the node's.
    "ALTER TABLE enroll_tokens ADD COLUMN addresses TEXT NOT NULL DEFAULT '';
     ALTER TABLE enroll_tokens ADD COLUMN peers TEXT NOT NULL DEFAULT ''",
    // TLS-RPT: each node's aggregate of one policy domain and UTC day (days since 1970),
    // replaced whole when the node resends it.
    "CREATE TABLE tlsrpt_days (
         node TEXT NOT NULL, domain TEXT NOT NULL, day BIGINT NOT NULL, body TEXT NOT NULL,
         updated BIGINT NOT NULL, PRIMARY KEY (node, domain, day));
     CREATE INDEX tlsrpt_days_by_domain ON tlsrpt_days (domain, day);
     CREATE INDEX tlsrpt_days_by_day ON tlsrpt_days (day)",
    // The fleet ratchet: what each node saw of its assigned peers, and operators' clears
    // (reports older than a clear no longer count).
    "CREATE TABLE capability_reports (
         peer TEXT NOT NULL, node TEXT NOT NULL, tls_version TEXT NOT NULL, grp TEXT NOT NULL,
         starttls BIGINT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
         PRIMARY KEY (peer, node));
     CREATE INDEX capability_reports_by_node ON capability_reports (node);
     CREATE TABLE capability_clears (peer TEXT PRIMARY KEY, cleared_at BIGINT NOT NULL)",
];

/// The newest schema version this build knows.
pub const KNOWN_VERSION: usize = MIGRATIONS.len();

fn dialect(backend: Backend, sql: &str) -> String {
    match backend {
        Backend::Sqlite => sql.to_owned(),
        Backend::Postgres => sql.replace(" BLOB", " BYTEA"),
    }
}

/// The stored schema version, creating its table if needed.
pub(super) async fn version(pool: &sqlx::AnyPool) -> Result<usize, sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(pool)
        .await?;
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(row.try_get::<i64, _>(0)?).unwrap_or(usize::MAX))
}

/// Copies an SQLite database about to be migrated to `<db>.pre-migration-v<N>-<unix time>`,
/// so a migration that goes wrong (or a rollback of the binary) has the old file to return
/// to. The control plane holds the database lock, so nothing writes in between.
async fn snapshot_before_migration(db: &Db) -> Result<(), sqlx::Error> {
    let Some(path) = super::sqlite_path(&db.url) else {
        return Ok(());
    };
    let from = version(&db.pool).await?;
    if from == 0 || from >= MIGRATIONS.len() {
        return Ok(());
    }
    let snapshot = format!(
        "{}.pre-migration-v{from}-{}",
        path.display(),
        crate::ctx::unix_now()
    );
    sqlx::query("VACUUM INTO $1")
        .bind(&snapshot)
        .execute(&db.pool)
        .await?;
    tracing::info!(
        snapshot,
        from,
        to = MIGRATIONS.len(),
        "database copied before its schema migration"
    );
    Ok(())
}

pub(super) async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    snapshot_before_migration(db).await?;
    version(&db.pool).await?;
    let mut tx = db.pool.begin().await?;
    if db.backend == Backend::Postgres {
        // Replicas starting together migrate one at a time.
        sqlx::query("LOCK TABLE schema_version IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
    }
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let version = usize::try_from(row.try_get::<i64, _>(0)?).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the database has schema version {version}; this control plane knows up to {}",
            MIGRATIONS.len()
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        for statement in dialect(db.backend, migration).split(';') {
            if !statement.trim().is_empty() {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
