//! SQLite backup and restore, PostgreSQL's pointer to pg_dump, the snapshot before a
//! schema migration.

use std::path::Path;
use std::process::Command;

use osgate_tests::WAIT;
use osgate_tests::controlplane::{ControlPlane, revision};
use osgate_tests::postgres::{Store, database};
use osgate_tests::process::stdout_of;

use super::{deny, policy_names};

#[test]
fn an_sqlite_backup_taken_while_running_restores_once_the_control_plane_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    let kept = revision(&cp.apply(dir.path(), &deny("kept"), &[]).json());
    let backup = dir.path().join("backup.db");
    let out = cp.command(&["backup", backup.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("at revision {kept}")),
        "{}",
        out.stdout
    );
    let replaced = revision(&cp.apply(dir.path(), &deny("after-backup"), &[]).json());

    let refused = cp.command(&["restore", backup.to_str().unwrap()]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("in use by a running control plane")
            && refused.stderr.contains("stop it first"),
        "{}",
        refused.stderr
    );
    let exists = cp.command(&["backup", backup.to_str().unwrap()]);
    assert!(
        exists.stderr.contains("exists; give a new file"),
        "{}",
        exists.stderr
    );
    cp.process.signal("TERM");
    assert!(cp.process.wait_exit(WAIT).success());

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a database at all, just text").unwrap();
    let bad = cp.command(&["restore", garbage.to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("not an osgate control-plane database"),
        "{}",
        bad.stderr
    );

    let restored = cp.command(&["restore", backup.to_str().unwrap()]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(
        restored.stdout.contains("the replaced database is"),
        "{}",
        restored.stdout
    );
    let saved = restored
        .stdout
        .rsplit("the replaced database is ")
        .next()
        .unwrap()
        .trim();
    assert!(Path::new(saved).exists(), "{saved}");

    let cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    assert_eq!(policy_names(&cp), ["kept"]);
    // After every revision nodes may hold, so none goes back (CONFORMANCE K.64).
    assert_eq!(revision(&cp.nodes()), replaced + 1);
    let (who, action, detail) = cp.audit().pop().unwrap();
    assert_eq!(
        (who.as_str(), action.as_str()),
        ("osgate-controlplane restore", "store.restore")
    );
    assert!(
        detail.contains(&format!("(revision {kept}) over revision {replaced}")),
        "{detail}"
    );
}

#[test]
fn postgres_backup_and_restore_point_at_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = database(Store::Postgres, dir.path());
    let cp = ControlPlane::start(dir.path(), &url, "");
    for command in ["backup", "restore"] {
        let out = cp.command(&[command, dir.path().join("x.dump").to_str().unwrap()]);
        assert_eq!(out.code, 64, "{command}");
        assert!(
            out.stderr.contains("pg_dump") && out.stderr.contains("pg_restore"),
            "{command}: {}",
            out.stderr
        );
    }
}

/// Runs `sql` (statements separated by `;`) on the SQLite file `db` with Python's sqlite3
/// module (CI installs python3); the first column of the last statement's rows, one a line.
fn sqlite3(db: &Path, sql: &str) -> String {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1])\n\
                  rows = []\n\
                  for s in sys.argv[2].split(';'):\n\
                  \x20   if s.strip(): rows = c.execute(s).fetchall()\n\
                  c.commit()\n\
                  print('\\n'.join(str(r[0]) for r in rows))\n";
    let mut command = Command::new("python3");
    stdout_of(command.args(["-c", script]).arg(db).arg(sql))
        .trim()
        .to_owned()
}

#[test]
fn an_sqlite_database_is_copied_before_its_schema_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    cp.apply(dir.path(), &deny("before-migration"), &[]).json();
    assert!(
        !cp.process
            .log
            .iter()
            .any(|v| v["message"] == "database copied before its schema migration"),
        "a new database has nothing to copy"
    );
    cp.process.signal("TERM");
    assert!(cp.process.wait_exit(WAIT).success());
    // Back to schema version 4, as an older control plane left it.
    let newest: u32 = sqlite3(&db, "SELECT MAX(version) FROM schema_version")
        .parse()
        .unwrap();
    assert_eq!(
        newest, 5,
        "this test downgrades migration 5; update it with the schema"
    );
    sqlite3(
        &db,
        "DELETE FROM schema_version WHERE version = 5; DROP TABLE capability_reports; DROP TABLE capability_clears;",
    );

    let mut cp = ControlPlane::start(dir.path(), db.to_str().unwrap(), "");
    let copied = cp
        .process
        .wait_for(|v| v["message"] == "database copied before its schema migration");
    assert_eq!(copied["from"], 4);
    assert_eq!(copied["to"], 5);
    let snapshot = Path::new(copied["snapshot"].as_str().unwrap()).to_owned();
    let name = snapshot.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("cp.db.pre-migration-v4-"), "{name}");
    assert_eq!(
        sqlite3(&snapshot, "SELECT MAX(version) FROM schema_version"),
        "4"
    );
    assert_eq!(
        sqlite3(
            &snapshot,
            "SELECT name FROM resources WHERE kind = 'policy'"
        ),
        "before-migration"
    );
    assert_eq!(sqlite3(&db, "SELECT MAX(version) FROM schema_version"), "5");
    assert_eq!(policy_names(&cp), ["before-migration"]);
}
