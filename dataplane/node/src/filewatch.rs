//! Noticing that a certificate or key file changed, so a rotation needs no signal.
//!
//! A rotation writes two files (certificate, key), maybe not at once; reloading between the
//! writes would pair a new certificate with an old key and be refused. So a change counts
//! once the files have held still for one check.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A file's identity: device, inode, size and modification time (a Kubernetes Secret
/// update swaps a symlink, which changes the inode the path leads to).
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

#[derive(Debug)]
pub(crate) struct FileWatch {
    files: Vec<(PathBuf, Stamp)>,
    /// The stamps seen at the last check, when they differed from the loaded ones.
    moving: Option<Vec<Stamp>>,
}

impl FileWatch {
    /// Watches `files` as they are now (just loaded).
    pub fn new(files: &[PathBuf]) -> Self {
        Self {
            files: files.iter().map(|f| (f.clone(), stamp(f))).collect(),
            moving: None,
        }
    }

    /// True when some file differs from what was loaded and has not changed since the
    /// previous check.
    pub fn changed_and_settled(&mut self) -> bool {
        let now: Vec<Stamp> = self.files.iter().map(|(f, _)| stamp(f)).collect();
        let differs = self
            .files
            .iter()
            .zip(&now)
            .any(|((_, loaded), now)| loaded != now);
        if !differs {
            self.moving = None;
            return false;
        }
        let settled = self.moving.as_ref() == Some(&now);
        self.moving = Some(now);
        settled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_change_counts_once_it_holds_still_for_one_check() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "1").unwrap();
        std::fs::write(&key, "1").unwrap();
        let mut watch = FileWatch::new(&[cert.clone(), key.clone()]);
        assert!(!watch.changed_and_settled(), "nothing changed");
        std::fs::write(&cert, "22").unwrap();
        assert!(
            !watch.changed_and_settled(),
            "just changed: wait for the key"
        );
        std::fs::write(&key, "22").unwrap();
        assert!(!watch.changed_and_settled(), "still moving");
        assert!(watch.changed_and_settled(), "held still for one check");
    }

    #[test]
    fn a_file_that_disappears_is_a_change_too() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "1").unwrap();
        let mut watch = FileWatch::new(std::slice::from_ref(&cert));
        std::fs::remove_file(&cert).unwrap();
        assert!(!watch.changed_and_settled());
        assert!(
            watch.changed_and_settled(),
            "a reload then says why it fails"
        );
    }
}
