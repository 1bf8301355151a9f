//! `osgatectl get capabilities` and `osgatectl capabilities clear`: the fleet's capability
//! caches per peer (the fleet ratchet and the DANE cache), and the operator's way out for a
//! peer that really dropped TLS.
#![allow(clippy::print_stdout)]

use clap::Subcommand;
use osgate_proto::pb;
use serde_json::{Value, json};

use crate::Format;
use crate::output::{json_out, table};

#[derive(Subcommand)]
pub enum CapabilityAction {
    /// Forgets the fleet ratchet for PEER (host:port), a peer that really dropped TLS: nodes
    /// that never met it fall back as their policy allows. Prints the nodes serving it.
    /// Reports from before the clear no longer count; nodes' own stores are untouched
    /// (`osgate pins clear-ratchet PEER` on a node).
    Clear {
        peer: String,
        #[arg(long)]
        dry_run: bool,
    },
}

impl CapabilityAction {
    pub fn request(self) -> pb::ClearCapabilityRequest {
        let Self::Clear { peer, dry_run } = self;
        pb::ClearCapabilityRequest { peer, dry_run }
    }
}

/// RFC 3339, UTC, for a Unix time; `-` for 0.
fn when(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let day = osgate_core::tlsrpt::Day::of_unix(unix);
    let secs = unix % 86_400;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{day}T{h:02}:{m:02}:{s:02}Z")
}

fn dane_json(d: &pb::DaneRecord, error: &str) -> Value {
    json!({"status": d.status, "base": d.base, "tlsa": d.tlsa, "valid_from": d.valid_from,
           "valid_until": d.valid_until, "ttl": d.ttl, "resolved_at": d.resolved_at,
           "error": error})
}

pub fn print(format: Format, list: &pb::CapabilityList) {
    if let Format::Json = format {
        let rows: Vec<Value> = list
            .capabilities
            .iter()
            .map(|c| {
                let tls = c.tls.as_ref();
                let dane = match (&c.dane, c.dane_error.is_empty()) {
                    (Some(d), _) => dane_json(d, &c.dane_error),
                    (None, false) => json!({"status": "none", "error": c.dane_error}),
                    (None, true) => Value::Null,
                };
                json!({"peer": c.peer, "tls_until": tls.map(|t| t.tls_until),
                       "tls_version": tls.map(|t| t.tls_version.clone()),
                       "group": tls.map(|t| t.group.clone()),
                       "starttls": tls.map(|t| t.starttls),
                       "first_seen": tls.map(|t| t.first_seen), "last_seen": tls.map(|t| t.last_seen),
                       "reporters": tls.map(|t| t.reporters.clone()).unwrap_or_default(),
                       "cleared_at": c.cleared_at, "dane": dane, "nodes": c.nodes,
                       "sts": c.sts.as_ref().map(|s| json!({"domain": s.domain, "id": s.id,
                           "policy": s.policy, "fetched_at": s.fetched_at}))})
            })
            .collect();
        return json_out(json!({"revision": list.revision, "capabilities": rows}));
    }
    let rows: Vec<Vec<String>> = list
        .capabilities
        .iter()
        .map(|c| {
            let (until, seen, reporters) = match &c.tls {
                Some(t) => (
                    when(t.tls_until),
                    format!(
                        "TLS {} {}{}",
                        t.tls_version,
                        t.group,
                        if t.starttls { " STARTTLS" } else { "" }
                    ),
                    t.reporters.join(","),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let dane = match &c.dane {
                Some(d) if d.status == "secure" => format!(
                    "{} record(s), valid until {}",
                    d.tlsa.len(),
                    when(d.valid_until)
                ),
                Some(d) => d.status.clone(),
                None => "-".into(),
            };
            let dane = match c.dane_error.is_empty() {
                true => dane,
                false => format!("{dane} (last lookup: {})", c.dane_error),
            };
            vec![
                c.peer.clone(),
                until,
                seen,
                reporters,
                dane,
                c.nodes.join(","),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "TLS REQUIRED UNTIL",
            "SEEN",
            "REPORTERS",
            "DANE",
            "NODES",
        ],
        &rows,
    );
    for c in &list.capabilities {
        for record in c.dane.iter().flat_map(|d| &d.tlsa) {
            println!("{}: TLSA {record}", c.peer);
        }
        if let Some(s) = &c.sts {
            let policy: Vec<&str> = s
                .policy
                .lines()
                .filter(|l| !l.starts_with("version"))
                .collect();
            println!(
                "{}: MTA-STS {} (id {}, fetched {}): {}",
                c.peer,
                s.domain,
                s.id,
                when(s.fetched_at),
                policy.join("; ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(when(0), "-");
        assert_eq!(when(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(when(1_796_169_599), "2026-12-01T23:59:59Z");
    }
}
