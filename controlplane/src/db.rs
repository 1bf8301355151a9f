//! Storage: one interface over SQLite (the embedded default) and PostgreSQL (several
//! control-plane replicas). Every mutation is one transaction that takes the next global
//! revision, writes the resources at it and an audit row (who, what, when); the revision row
//! lock orders commits, so a reader that saw revision N has seen every change up to N.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod schema;

pub use schema::KNOWN_VERSION;

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL channel replicas announce new revisions on.
pub const NOTIFY_CHANNEL: &str = "osgate_revision";

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    pub url: String,
}

/// A stored resource row.
#[derive(Clone, Debug)]
pub struct Stored {
    pub kind: String,
    pub name: String,
    /// The encoded `pb::Resource`; `None` for a deletion.
    pub body: Option<Vec<u8>>,
    pub revision: u64,
}

/// One change a mutation makes.
#[derive(Clone, Debug)]
pub enum Write {
    Put {
        kind: &'static str,
        name: String,
        body: Vec<u8>,
    },
    Delete {
        kind: &'static str,
        name: String,
    },
}

impl Write {
    /// `kind/name`, as the audit log names resources.
    pub fn name(&self) -> String {
        match self {
            Self::Put { kind, name, .. } | Self::Delete { kind, name } => format!("{kind}/{name}"),
        }
    }
}

/// Who did what, for the audit log.
#[derive(Clone, Debug)]
pub struct Audit<'a> {
    pub who: &'a str,
    pub action: &'a str,
    pub detail: String,
}

pub type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

pub(crate) fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The file behind an SQLite URL (`sqlite://PATH?mode=rwc`); `None` for PostgreSQL.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    Some(path.into())
}

impl Db {
    /// Opens (creating an SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, sqlx::Error> {
        let db = Self::connect(url).await?;
        schema::migrate(&db).await?;
        Ok(db)
    }

    /// Opens without migrating (for `backup`).
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = match url.starts_with("postgres") {
            true => Backend::Postgres,
            false => Backend::Sqlite,
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10));
        let options = match backend {
            // WAL, and fsync at every commit: an acknowledged write survives kill -9 and
            // power loss (CONFORMANCE G.48).
            Backend::Sqlite => options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }),
            Backend::Postgres => options,
        };
        let pool = options.connect(url).await?;
        Ok(Self {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// The current global revision.
    pub async fn revision(&self) -> Result<u64, sqlx::Error> {
        let row = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(from_db(row.try_get(0)?))
    }

    /// Resource rows written after `since` (deletions included).
    pub async fn changes_since(&self, since: u64) -> Result<Vec<Stored>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT kind, name, body, revision FROM resources WHERE revision > $1 ORDER BY revision",
        )
        .bind(to_db(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(resource_row).collect()
    }

    /// Starts a mutation: the transaction holds the next revision's lock until it commits.
    pub async fn begin(&self) -> Result<(Tx<'static>, u64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision")
                .fetch_one(&mut *tx)
                .await?;
        Ok((tx, from_db(row.try_get(0)?)))
    }

    /// Writes `writes` and the audit row at `revision`, announces it, and commits.
    pub async fn commit(
        &self,
        mut tx: Tx<'static>,
        revision: u64,
        writes: &[Write],
        audit: Audit<'_>,
        now: u64,
    ) -> Result<(), sqlx::Error> {
        for write in writes {
            let (kind, name, body) = match write {
                Write::Put { kind, name, body } => (*kind, name, Some(body.clone())),
                Write::Delete { kind, name } => (*kind, name, None),
            };
            sqlx::query(
                "INSERT INTO resources (kind, name, body, revision) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, revision = excluded.revision",
            )
            .bind(kind)
            .bind(name.as_str())
            .bind(body)
            .bind(to_db(revision))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO audit (revision, at, who, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_db(revision))
        .bind(to_db(now))
        .bind(audit.who)
        .bind(audit.action)
        .bind(audit.detail)
        .execute(&mut *tx)
        .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Audit entries after `since`, oldest first.
    pub async fn audit(&self, since: u64, limit: u32) -> Result<Vec<AuditRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT revision, at, who, action, detail FROM audit WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(to_db(since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    revision: from_db(r.try_get(0)?),
                    at: from_db(r.try_get(1)?),
                    who: r.try_get(2)?,
                    action: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct AuditRow {
    pub revision: u64,
    pub at: u64,
    pub who: String,
    pub action: String,
    pub detail: String,
}

fn resource_row(row: &AnyRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        kind: row.try_get(0)?,
        name: row.try_get(1)?,
        body: row.try_get(2)?,
        revision: from_db(row.try_get(3)?),
    })
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn the_sqlite_file_is_the_url_path_and_postgres_has_none() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/osgate/cp.db?mode=rwc"),
            Some("/var/lib/osgate/cp.db".into())
        );
        assert_eq!(sqlite_path("sqlite://cp.db"), Some("cp.db".into()));
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
