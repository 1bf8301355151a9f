//! Care of the SQLite store: the lock a running control plane holds, `backup` and `restore`.
//! PostgreSQL has its own tools (pg_dump, pg_restore); these commands say so.
//!
//! A restore replaces the database file, which is only safe with no control plane using it:
//! `run` holds an exclusive lock on `<db>.lock` for as long as it runs, and `restore` takes
//! the same lock or refuses.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sqlx::Row;

use crate::db::{self, Db};

/// The pg_dump hint for both commands.
pub const POSTGRES: &str = "the database is PostgreSQL: back it up with `pg_dump -Fc -f FILE URL` \
     and restore with `pg_restore --clean -d URL FILE` (with the control planes stopped); \
     backup and restore here are for SQLite";

/// Held while a control plane runs on an SQLite file.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// Takes the exclusive lock of the SQLite database `db`, or says who holds it.
pub fn lock(db: &Path) -> Result<Lock, String> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // flock(2): released by the kernel when the process ends, however it ends.
    let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    if locked.is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(format!(
            "{}: in use by a running control plane (pid {}); stop it first",
            db.display(),
            holder.trim()
        ));
    }
    // Who holds it, for the message above; the lock, not the text, is what counts.
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(Lock { _file: file })
}

fn sqlite_file(url: &str) -> Result<PathBuf, String> {
    db::sqlite_path(url).ok_or_else(|| POSTGRES.to_owned())
}

/// Copies the live database to `out` (consistent, while a control plane runs).
pub async fn backup(url: &str, out: &Path) -> Result<String, String> {
    let path = sqlite_file(url)?;
    if !path.exists() {
        return Err(format!("{}: no such database", path.display()));
    }
    if out.exists() {
        return Err(format!("{}: exists; give a new file", out.display()));
    }
    let db = Db::connect(url).await.map_err(|e| e.to_string())?;
    let out_text = out
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", out.display()))?;
    // VACUUM INTO writes a consistent copy under a read transaction: writers go on.
    sqlx::query("VACUUM INTO $1")
        .bind(out_text)
        .execute(&db.pool)
        .await
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let revision = db.revision().await.map_err(|e| e.to_string())?;
    db.pool.close().await;
    Ok(format!(
        "{}: backup of {} at revision {revision}",
        out.display(),
        path.display()
    ))
}

/// Replaces the database with `backup`, keeping the replaced one beside it.
pub async fn restore(url: &str, backup: &Path) -> Result<String, String> {
    let path = sqlite_file(url)?;
    let _lock = lock(&path)?;
    let staged = sibling(&path, ".restoring");
    std::fs::copy(backup, &staged).map_err(|e| format!("{}: {e}", backup.display()))?;
    let revision = match check_backup(&staged).await {
        Ok(revision) => revision,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(format!("{}: {e}", backup.display()));
        }
    };
    let (saved, replaced) = match path.exists() {
        true => (
            Some(save_current(url, &path).await?),
            current_revision(url).await,
        ),
        false => (None, None),
    };
    let revision = match restamp(&staged, backup, revision, replaced).await {
        Ok(revision) => revision,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(format!("{}: {e}", staged.display()));
        }
    };
    for stale in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(sibling(&path, stale));
    }
    std::fs::rename(&staged, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    let saved = saved.map_or(String::new(), |s| {
        format!("; the replaced database is {}", s.display())
    });
    Ok(format!(
        "{}: restored from {}, now at revision {revision}{saved}",
        path.display(),
        backup.display()
    ))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Whether `file` is an osgate control-plane database this build can use; its revision.
async fn check_backup(file: &Path) -> Result<u64, String> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rw", file.display());
    let mut conn = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let checked = async {
        let verdict: String = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        let version: i64 = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        let revision: i64 = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        Ok::<_, sqlx::Error>((verdict, version, revision))
    }
    .await;
    let _ = conn.close().await;
    let (verdict, version, revision) =
        checked.map_err(|e| format!("not an osgate control-plane database: {e}"))?;
    if verdict != "ok" {
        return Err(format!("integrity check failed: {verdict}"));
    }
    if usize::try_from(version).unwrap_or(usize::MAX) > db::KNOWN_VERSION {
        return Err(format!(
            "schema version {version} is newer than this control plane's ({})",
            db::KNOWN_VERSION
        ));
    }
    Ok(db::from_db(revision))
}

/// The revision of the database about to be replaced, if it can be read.
async fn current_revision(url: &str) -> Option<u64> {
    let db = Db::connect(url).await.ok()?;
    let revision = db.revision().await.ok();
    db.pool.close().await;
    revision
}

/// Moves the restored state to a revision above both the backup's and the replaced
/// database's, with an audit row: nodes hold revisions up to the replaced one, and a
/// node never goes back in revision (CONFORMANCE K.64), so the restored state must come
/// after everything they have seen. The new revision.
async fn restamp(
    staged: &Path,
    backup: &Path,
    restored: u64,
    replaced: Option<u64>,
) -> Result<u64, String> {
    use sqlx::Connection as _;
    let revision = restored.max(replaced.unwrap_or(0)) + 1;
    if replaced.is_none() {
        tracing::warn!(
            restored,
            "the replaced database's revision is unknown: nodes holding a revision above {revision} keep it until the next change",
        );
    }
    let detail = format!(
        "restored from {} (revision {restored}) over revision {}",
        backup.display(),
        replaced.map_or("unknown".into(), |r| r.to_string())
    );
    let url = format!("sqlite://{}?mode=rw", staged.display());
    let mut conn = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    let at = db::to_db(revision);
    for statement in [
        "UPDATE meta SET revision = $1 WHERE id = 1",
        "UPDATE resources SET revision = $1",
    ] {
        sqlx::query(statement)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    }
    sqlx::query(
        "INSERT INTO audit (revision, at, who, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(db::to_db(crate::ctx::unix_now()))
    .bind("osgate-controlplane restore")
    .bind("store.restore")
    .bind(detail)
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(revision)
}

/// Copies the database about to be replaced to `<db>.pre-restore-<unix time>`.
async fn save_current(url: &str, path: &Path) -> Result<PathBuf, String> {
    let saved = sibling(path, &format!(".pre-restore-{}", crate::ctx::unix_now()));
    backup(url, &saved).await?;
    Ok(saved)
}
