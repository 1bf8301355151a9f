//! `osgate keygen`: a node key and self-signed certificate (ECDSA P-256) for inbound listeners.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use osgate_core::pin::SpkiPin;

/// Writes a new key (mode 0600) and a certificate naming `names`; returns the key's pin
/// (what control planes, `osgatectl` and other nodes are told to expect).
pub fn generate(names: &[String], cert: &Path, key: &Path) -> Result<SpkiPin, String> {
    let key_pair = rcgen::KeyPair::generate().map_err(|e| format!("key generation failed: {e}"))?;
    let params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("invalid name in {names:?}: {e}"))?;
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|e| format!("signing failed: {e}"))?;
    write(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write(cert, certificate.pem().as_bytes(), 0o644)?;
    SpkiPin::of_certificate(certificate.der())
        .ok_or_else(|| "the new certificate does not parse".into())
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", path.display()))
}
