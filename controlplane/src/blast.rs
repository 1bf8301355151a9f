//! The blast radius of a policy change: which peers of which nodes get another rule, and
//! which changes are dangerous enough to need `confirm` (CONFORMANCE G.49).

use std::collections::HashMap;
use std::net::IpAddr;

use osgate_api::pb;
use osgate_core::policy::{Level, Peer, PolicySet, Rule, Selector};

use crate::nodes::Status;

fn describe(rule: Option<&Rule>) -> String {
    match rule {
        Some(r) => format!("{} ({})", r.id, r.level.as_str()),
        None => "(node default)".into(),
    }
}

/// Peers whose enforced control-plane rule differs between `before` and `after`, over the
/// peers each node said it carries traffic to.
pub fn affected(
    before: &PolicySet,
    after: &PolicySet,
    nodes: &HashMap<String, Status>,
) -> Vec<pb::Affected> {
    let mut out = Vec::new();
    let mut names: Vec<&String> = nodes.keys().collect();
    names.sort();
    for node in names {
        for peer in &nodes[node].peers {
            let Some((host, port)) = peer.rsplit_once(':') else {
                continue;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let Ok(port) = port.parse() else { continue };
            let peer_view = Peer {
                host,
                port,
                ip: host.parse::<IpAddr>().ok(),
            };
            let old = before.select(&peer_view).enforced;
            let new = after.select(&peer_view).enforced;
            if old != new {
                out.push(pb::Affected {
                    node: node.clone(),
                    peer: peer.clone(),
                    before: describe(old),
                    after: describe(new),
                });
            }
        }
    }
    out
}

/// Why applying `rule` needs confirmation, if it does.
pub fn danger(rule: &Rule) -> Option<String> {
    let global = match rule.selector {
        Selector::Any => true,
        Selector::Cidr(_, prefix) => prefix == 0,
        _ => false,
    };
    (global && rule.level == Level::Cleartext && !rule.report_only).then(|| {
        format!(
            "{} makes cleartext the default for every peer: connections that would be encrypted today will not be",
            rule.id
        )
    })
}
