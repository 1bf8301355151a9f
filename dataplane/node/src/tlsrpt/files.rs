//! The day files under `<state_dir>/tlsrpt/`: `YYYY-MM-DD.json`, every policy domain's
//! aggregate of that UTC day, each written whole (durable::write_atomic).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use osgate_core::tlsrpt::{Day, DayAggregate, StoredDay};
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

/// Every domain of one day.
pub(crate) type Domains = BTreeMap<String, DayAggregate>;

#[derive(Serialize, Deserialize)]
struct DayFile {
    version: u32,
    day: String,
    domains: Vec<DomainEntry>,
}

#[derive(Serialize, Deserialize)]
struct DomainEntry {
    domain: String,
    #[serde(flatten)]
    aggregate: StoredDay,
}

pub(crate) fn path(dir: &Path, day: Day) -> PathBuf {
    dir.join(format!("{day}.json"))
}

/// The day's domains; empty when there is no file.
pub(crate) fn load(dir: &Path, day: Day) -> Result<Domains, String> {
    let path = path(dir, day);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Domains::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: DayFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.version != VERSION || file.day != day.to_string() {
        return Err(format!(
            "{}: version {} for {}, expected version {VERSION} for {day}",
            path.display(),
            file.version,
            file.day
        ));
    }
    Ok(file
        .domains
        .iter()
        .map(|d| (d.domain.clone(), DayAggregate::from_stored(&d.aggregate)))
        .collect())
}

pub(crate) fn save(dir: &Path, day: Day, domains: &Domains) -> Result<(), String> {
    let file = DayFile {
        version: VERSION,
        day: day.to_string(),
        domains: domains
            .iter()
            .map(|(domain, aggregate)| DomainEntry {
                domain: domain.clone(),
                aggregate: aggregate.to_stored(),
            })
            .collect(),
    };
    let text = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = path(dir, day);
    crate::durable::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Removes the day files older than `oldest`.
pub(crate) fn expire(dir: &Path, oldest: Day) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(day) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(Day::parse)
        else {
            continue;
        };
        if day < oldest {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(target: "osgate::tlsrpt", file = %entry.path().display(), error = %e, "cannot remove an expired TLS-RPT day");
            }
        }
    }
}
