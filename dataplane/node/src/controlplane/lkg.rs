//! The last-known-good snapshot on disk: what a node restarted while the control plane is
//! away serves from (CONFORMANCE G.44). Integrity-checked: a torn or altered file is refused,
//! and the node then runs with no overrides and says so, rather than on half a policy.
//!
//! Format: `OSGATE-LKG1\n`, the save time (u64, big endian), the encoded snapshot, and a
//! SHA-256 of everything before it.

use std::path::Path;

use osgate_core::crypto::sha::sha256;
use osgate_proto::pb;
use prost::Message;

const MAGIC: &[u8] = b"OSGATE-LKG1\n";
const DIGEST: usize = 32;

pub fn save(path: &Path, snapshot: &pb::Update, saved_at: u64) -> std::io::Result<()> {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&saved_at.to_be_bytes());
    snapshot.encode(&mut data)?;
    let digest = sha256(&data);
    data.extend_from_slice(&digest);
    crate::durable::write_atomic(path, &data)
}

/// The snapshot and when it was saved.
pub fn load(path: &Path) -> Result<(pb::Update, u64), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let body_len = data
        .len()
        .checked_sub(DIGEST)
        .filter(|n| *n >= MAGIC.len() + 8)
        .ok_or("too short")?;
    let (body, digest) = data.split_at(body_len);
    if sha256(body) != digest {
        return Err("checksum mismatch".into());
    }
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("not a last-known-good file")?;
    let (time, encoded) = rest.split_at(8);
    let saved_at = u64::from_be_bytes(time.try_into().map_err(|_| "too short")?);
    // A file written by a newer build may hold fields this one does not understand.
    let snapshot =
        osgate_proto::validate::decode_update(encoded).map_err(|(_, e)| e.to_string())?;
    Ok((snapshot, saved_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_loads_and_any_flipped_byte_is_refused() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("lkg");
        let snapshot = pb::Update {
            revision: 7,
            snapshot: true,
            ..Default::default()
        };
        save(&path, &snapshot, 1234).map_err(|e| e.to_string())?;
        assert_eq!(load(&path)?, (snapshot, 1234));
        let good = std::fs::read(&path).map_err(|e| e.to_string())?;
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            std::fs::write(&path, &bad).map_err(|e| e.to_string())?;
            assert!(load(&path).is_err(), "byte {i} flipped was accepted");
        }
        std::fs::write(&path, &good[..good.len() - 1]).map_err(|e| e.to_string())?;
        assert!(load(&path).is_err());
        Ok(())
    }

    /// A snapshot with a field this build does not know (say, written by a newer one) is
    /// refused, not applied with the field dropped (CONFORMANCE G.43).
    #[test]
    fn a_snapshot_with_an_unknown_field_is_refused() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("lkg");
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&1234u64.to_be_bytes());
        data.extend_from_slice(&[0x08, 0x07, 0xa0, 0x01, 0x01]); // revision 7, field 20
        let digest = sha256(&data);
        data.extend_from_slice(&digest);
        crate::durable::write_atomic(&path, &data).map_err(|e| e.to_string())?;
        let err = load(&path).unwrap_err();
        assert!(
            err.contains("field 20") && err.contains("osgate.v1.Update"),
            "{err}"
        );
        Ok(())
    }
}
