//! `osgate pins`: look at and manage the capability store (TOFU pins, the ratchet).

use std::path::Path;

use clap::Subcommand;
use osgate_core::pin::SpkiPin;

use osgate_core::fleet::PinState;

use crate::store::{Contents, PinRecord};

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// Create an empty store (refuses to overwrite one).
    Init,
    /// List every pinned peer and ratchet entry.
    List,
    /// Show one peer (`host:port`).
    Show { peer: String },
    /// Pin `peer` to `pin` (`sha256/...`), approved by an operator; replaces a learned pin.
    Add { peer: String, pin: String },
    /// Vouch for `peer`'s next key (planned rotation): both keys work until the peer presents
    /// the next one, which then replaces the old.
    Vouch { peer: String, pin: String },
    /// Forget `peer`'s pin (it is pinned again on its next `encrypted` connection).
    Remove { peer: String },
    /// Revoke `peer`'s pin: the peer is refused until an operator adds a new one.
    Revoke { peer: String },
    /// Forget that `peer` did TLS (its ratchet entry): for a peer that really dropped TLS,
    /// with `osgatectl capabilities clear` for the fleet's record of it.
    ClearRatchet { peer: String },
}

/// Runs `command` on the store at `path`; returns what to print, or an error.
pub fn run(command: PinsCommand, path: &Path, now: u64) -> Result<String, String> {
    if path.exists() || !matches!(command, PinsCommand::Init) {
        let contents = Contents::load(path).map_err(|e| e.to_string())?;
        return change(command, contents, path, now);
    }
    Contents::default().save(path).map_err(|e| e.to_string())?;
    Ok(format!(
        "{}: created an empty capability store\n",
        path.display()
    ))
}

fn change(
    command: PinsCommand,
    mut contents: Contents,
    path: &Path,
    now: u64,
) -> Result<String, String> {
    let out = match command {
        PinsCommand::Init => return Err(format!("{}: a store already exists", path.display())),
        PinsCommand::List => list(&contents, None),
        PinsCommand::Show { peer } => {
            let peer = peer.to_ascii_lowercase();
            if !contents.pins.contains_key(&peer) && !contents.ratchet.contains_key(&peer) {
                return Err(format!("{peer}: not in the store"));
            }
            list(&contents, Some(&peer))
        }
        PinsCommand::Add { peer, pin } => {
            let pin = SpkiPin::parse(&pin).map_err(|e| e.to_string())?;
            let peer = peer.to_ascii_lowercase();
            let old = contents.pins.insert(
                peer.clone(),
                PinRecord {
                    pin,
                    first_seen: now,
                    last_seen: now,
                    state: PinState::Approved,
                    next: None,
                    refused: None,
                },
            );
            contents.save(path).map_err(|e| e.to_string())?;
            match old {
                Some(old) => format!("{peer}: pinned {pin} (was {})\n", old.pin),
                None => format!("{peer}: pinned {pin}\n"),
            }
        }
        PinsCommand::Vouch { peer, pin } => {
            let pin = SpkiPin::parse(&pin).map_err(|e| e.to_string())?;
            let peer = peer.to_ascii_lowercase();
            let record = contents
                .pins
                .get_mut(&peer)
                .ok_or_else(|| format!("{peer}: no pin to rotate from"))?;
            record.next = Some(pin);
            let current = record.pin;
            contents.save(path).map_err(|e| e.to_string())?;
            format!("{peer}: {current} and next {pin} both accepted until {pin} is seen\n")
        }
        PinsCommand::Remove { peer } => {
            let peer = peer.to_ascii_lowercase();
            let old = contents
                .pins
                .remove(&peer)
                .ok_or_else(|| format!("{peer}: no pin"))?;
            contents.save(path).map_err(|e| e.to_string())?;
            format!("{peer}: removed pin {}\n", old.pin)
        }
        PinsCommand::ClearRatchet { peer } => {
            let peer = peer.to_ascii_lowercase();
            let until = contents
                .ratchet
                .remove(&peer)
                .ok_or_else(|| format!("{peer}: no ratchet entry"))?;
            contents.save(path).map_err(|e| e.to_string())?;
            format!("{peer}: cleared the ratchet (TLS was required until {until})\n")
        }
        PinsCommand::Revoke { peer } => {
            let peer = peer.to_ascii_lowercase();
            let record = contents
                .pins
                .get_mut(&peer)
                .ok_or_else(|| format!("{peer}: no pin"))?;
            record.state = PinState::Revoked;
            let pin = record.pin;
            contents.save(path).map_err(|e| e.to_string())?;
            format!("{peer}: revoked pin {pin}\n")
        }
    };
    Ok(out)
}

fn list(contents: &Contents, only: Option<&str>) -> String {
    let mut out =
        String::from("PEER\tKEY\tSTATE\tFIRST SEEN\tLAST SEEN\tNEXT KEY\tLAST REFUSED KEY\n");
    for (peer, r) in contents
        .pins
        .iter()
        .filter(|(p, _)| only.is_none_or(|o| o == *p))
    {
        let next = r.next.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let refused = r
            .refused
            .map_or_else(|| "-".to_owned(), |(k, at)| format!("{k} at {at}"));
        out += &format!(
            "{peer}\t{}\t{}\t{}\t{}\t{next}\t{refused}\n",
            r.pin,
            r.state.as_str(),
            r.first_seen,
            r.last_seen
        );
    }
    out += "PEER\tTLS REQUIRED UNTIL (ratchet)\n";
    for (peer, until) in contents
        .ratchet
        .iter()
        .filter(|(p, _)| only.is_none_or(|o| o == *p))
    {
        out += &format!("{peer}\t{until}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_ratchet_forgets_the_peer_s_tls_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let mut contents = Contents::default();
        contents.ratchet.insert("p.test:443".into(), 99);
        contents.ratchet.insert("q.test:443".into(), 99);
        contents.save(&path).unwrap();
        let clear = |peer: &str| {
            let command = PinsCommand::ClearRatchet { peer: peer.into() };
            run(command, &path, 1)
        };
        let said = clear("P.test:443").unwrap();
        assert!(said.contains("p.test:443: cleared the ratchet"), "{said}");
        let left = Contents::load(&path).unwrap().ratchet;
        assert_eq!(left.keys().collect::<Vec<_>>(), ["q.test:443"]);
        assert!(
            clear("p.test:443")
                .unwrap_err()
                .contains("no ratchet entry")
        );
    }
}
