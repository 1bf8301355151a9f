//! Files that survive kill -9 and power loss: written whole to a temporary file, synced,
//! renamed over the old one, and the folder synced, so a reader sees the old file or the new
//! one, never a torn mix.

use std::io::{self, Write};
use std::path::Path;

pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
