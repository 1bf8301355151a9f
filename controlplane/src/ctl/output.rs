//! Tables for people, JSON for scripts.
#![allow(clippy::print_stdout)]

use osgate_proto::pb;
use serde_json::{Value, json};

use crate::Format;

pub struct Printer {
    pub format: Format,
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn json_out(value: Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}

impl Printer {
    pub fn apply(&self, reply: &pb::ApplyReply, dry_run: bool) {
        if let Format::Json = self.format {
            let changes: Vec<Value> = reply
                .changes
                .iter()
                .map(|c| json!({"kind": c.kind, "name": c.name, "action": c.action}))
                .collect();
            let affected: Vec<Value> = reply
                .affected
                .iter()
                .map(|a| json!({"node": a.node, "peer": a.peer, "before": a.before, "after": a.after}))
                .collect();
            return json_out(
                json!({"revision": reply.revision, "dry_run": dry_run, "changes": changes, "affected": affected, "warnings": reply.warnings}),
            );
        }
        for c in &reply.changes {
            println!("{}/{} {}", c.kind, c.name, c.action);
        }
        for w in &reply.warnings {
            println!("warning: {w}");
        }
        if !reply.affected.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = reply
                .affected
                .iter()
                .map(|a| {
                    vec![
                        a.node.clone(),
                        a.peer.clone(),
                        a.before.clone(),
                        a.after.clone(),
                    ]
                })
                .collect();
            table(&["NODE", "PEER", "BEFORE", "AFTER"], &rows);
        }
        match dry_run {
            true => println!(
                "dry run: nothing stored ({} peer(s) affected)",
                reply.affected.len()
            ),
            false => println!("revision {}", reply.revision),
        }
    }

    pub fn policies(&self, list: &pb::PolicyList) {
        if let Format::Toml = self.format {
            return print!("{}", crate::policy_toml::render(list));
        }
        if let Format::Json = self.format {
            let items: Vec<Value> = list
                .policies
                .iter()
                .map(|p| {
                    json!({"name": p.name, "match": p.r#match, "level": p.level, "methods": p.methods,
                           "pins": p.pins, "min_tls": p.min_tls, "allow_cleartext_fallback": p.allow_cleartext_fallback,
                           "report_only": p.report_only})
                })
                .collect();
            let inbound: Vec<Value> = list
                .inbound
                .iter()
                .map(|i| json!({"name": i.name, "listener": i.listener, "clients": i.clients}))
                .collect();
            return json_out(
                json!({"revision": list.revision, "policies": items, "inbound": inbound}),
            );
        }
        let rows: Vec<Vec<String>> = list
            .policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.r#match.clone(),
                    p.level.clone(),
                    p.methods.join(","),
                    if p.min_tls.is_empty() {
                        "-".into()
                    } else {
                        p.min_tls.clone()
                    },
                    if p.report_only {
                        "report-only".into()
                    } else {
                        "enforced".into()
                    },
                ]
            })
            .collect();
        table(
            &["NAME", "MATCH", "LEVEL", "METHODS", "MIN_TLS", "MODE"],
            &rows,
        );
        if !list.inbound.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = list
                .inbound
                .iter()
                .map(|i| vec![i.name.clone(), i.listener.clone(), i.clients.join(",")])
                .collect();
            table(&["INBOUND", "LISTENER", "CLIENTS"], &rows);
        }
    }

    pub fn pins(&self, list: &pb::PinList) {
        let pins = list
            .pins
            .iter()
            .filter_map(|r| r.pin.as_ref().map(|p| (p, r.conflict)));
        if let Format::Json = self.format {
            let items: Vec<Value> = pins
                .map(|(p, conflict)| {
                    json!({"peer": p.peer, "spki": p.spki, "state": p.state, "next": p.next,
                           "reporters": p.reporters, "conflict": conflict})
                })
                .collect();
            return json_out(json!({"pins": items}));
        }
        let rows: Vec<Vec<String>> = pins
            .map(|(p, conflict)| {
                vec![
                    p.peer.clone(),
                    p.spki.clone(),
                    p.state.clone(),
                    p.reporters.join(","),
                    if p.next.is_empty() {
                        "-".into()
                    } else {
                        p.next.clone()
                    },
                    if conflict {
                        "CONFLICT".into()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        table(&["PEER", "KEY", "STATE", "REPORTED BY", "NEXT", ""], &rows);
    }

    pub fn nodes(&self, list: &pb::NodeList) {
        let status = |n: &pb::NodeStatus| {
            if n.nacked_revision > n.acked_revision {
                format!("NACK {}: {}", n.nacked_revision, n.nack_error)
            } else if n.acked_revision == list.revision {
                "in sync".into()
            } else {
                format!("behind ({})", n.acked_revision)
            }
        };
        if let Format::Json = self.format {
            let items: Vec<Value> = list
                .nodes
                .iter()
                .map(|n| {
                    let key = n.key.clone().unwrap_or_default();
                    let outcomes: Vec<Value> = n
                        .outcomes
                        .iter()
                        .map(|o| json!({"direction": o.direction, "achieved": o.level, "method": o.method, "reason": o.reason, "count": o.count}))
                        .collect();
                    json!({"name": key.name, "spki": key.spki, "addresses": key.addresses, "connected": n.connected, "outcomes": outcomes,
                           "acked_revision": n.acked_revision, "nacked_revision": n.nacked_revision,
                           "nack_error": n.nack_error, "last_seen": n.last_seen, "version": n.version, "peers": n.peers,
                           "assigned_peers": key.peers})
                })
                .collect();
            return json_out(json!({"revision": list.revision, "nodes": items}));
        }
        let rows: Vec<Vec<String>> = list
            .nodes
            .iter()
            .map(|n| {
                let key = n.key.clone().unwrap_or_default();
                vec![
                    key.name,
                    if n.connected {
                        "connected".into()
                    } else {
                        "disconnected".into()
                    },
                    n.acked_revision.to_string(),
                    status(n),
                    key.spki,
                ]
            })
            .collect();
        table(
            &["NAME", "STREAM", "ACKED", "STATUS", "CONNECTIONS", "KEY"],
            &rows,
        );
        println!("control plane revision {}", list.revision);
    }

    pub fn audit(&self, list: &pb::AuditList) {
        if let Format::Json = self.format {
            let items: Vec<Value> = list
                .entries
                .iter()
                .map(|e| json!({"revision": e.revision, "at": e.at, "who": e.who, "action": e.action, "detail": e.detail}))
                .collect();
            return json_out(json!({"entries": items}));
        }
        let rows: Vec<Vec<String>> = list
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.revision.to_string(),
                    e.at.to_string(),
                    e.who.clone(),
                    e.action.clone(),
                    e.detail.clone(),
                ]
            })
            .collect();
        table(&["REVISION", "AT", "WHO", "ACTION", "DETAIL"], &rows);
    }

    pub fn token(&self, reply: &pb::EnrollTokenReply) {
        match self.format {
            Format::Json => json_out(json!({"token": reply.token, "expires": reply.expires})),
            Format::Table | Format::Toml => println!("{}", reply.token),
        }
    }
}
