//! The blast radius of a policy change: which peers of which nodes get another rule, and
//! which changes are dangerous enough to need `confirm` (CONFORMANCE G.49).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use osgate_core::policy::{Level, Peer, PolicySet, Rule, Selector};
use osgate_proto::pb;
use tonic::Status;

use crate::nodes::Status as NodeStatus;

fn describe(rule: Option<&Rule>) -> String {
    match rule {
        Some(r) => format!("{} ({})", r.id, r.level.as_str()),
        None => "(node default)".into(),
    }
}

/// Each node's peers as policy sees them.
fn peer_views(nodes: &HashMap<String, NodeStatus>) -> Vec<(&String, &String, Peer<'_>)> {
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
            let view = Peer {
                host,
                port,
                ip: host.parse::<IpAddr>().ok(),
            };
            out.push((node, peer, view));
        }
    }
    out
}

/// How much protection a level asks for; `None` (no rule) is the default, opportunistic.
fn rank(rule: Option<&Rule>) -> u8 {
    match rule.map_or(Level::Opportunistic, |r| r.level) {
        Level::Cleartext => 0,
        Level::Opportunistic => 1,
        Level::Encrypt => 2,
        Level::Authenticate => 3,
        Level::Deny => 4,
    }
}

/// Why a change needs confirmation because it lowers the level for peers of more than
/// `threshold` nodes, if it does.
pub fn lowered(
    before: &PolicySet,
    after: &PolicySet,
    nodes: &HashMap<String, NodeStatus>,
    threshold: usize,
) -> Option<String> {
    let mut on = BTreeSet::new();
    let mut example = None;
    for (node, peer, view) in peer_views(nodes) {
        let old = before.select(&view).enforced;
        let new = after.select(&view).enforced;
        if rank(new) < rank(old) {
            on.insert(node.clone());
            example.get_or_insert_with(|| {
                format!("{node} {peer}: {} -> {}", describe(old), describe(new))
            });
        }
    }
    (on.len() > threshold).then(|| {
        format!(
            "this lowers the level for peers of {} nodes (more than confirm_nodes = {threshold}), e.g. {}",
            on.len(),
            example.unwrap_or_default()
        )
    })
}

/// Refuses two policies with the same selector and different levels: which one applies
/// would depend on their names (CONFORMANCE G.49).
pub fn ambiguous(policies: &BTreeMap<String, pb::Policy>) -> Result<(), Status> {
    let rules: Vec<(&String, &pb::Policy, Rule)> = policies
        .iter()
        .filter_map(|(name, p)| Some((name, p, osgate_proto::validate::policy_fields(p).ok()?)))
        .collect();
    let Some((i, j)) = osgate_core::policy::ambiguous(rules.iter().map(|(_, _, r)| r)) else {
        return Ok(());
    };
    let ((first, p, a), (second, _, b)) = (&rules[i], &rules[j]);
    Err(Status::invalid_argument(format!(
        "policy/{first} and policy/{second} both match `{}` with different levels ({} and {}); keep one",
        p.r#match,
        a.level.as_str(),
        b.level.as_str()
    )))
}

/// Peers whose enforced control-plane rule differs between `before` and `after`, over the
/// peers each node said it carries traffic to.
pub fn affected(
    before: &PolicySet,
    after: &PolicySet,
    nodes: &HashMap<String, NodeStatus>,
) -> Vec<pb::Affected> {
    let mut out = Vec::new();
    for (node, peer, view) in peer_views(nodes) {
        let old = before.select(&view).enforced;
        let new = after.select(&view).enforced;
        if old != new {
            out.push(pb::Affected {
                node: node.clone(),
                peer: peer.clone(),
                before: describe(old),
                after: describe(new),
            });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(name: &str, selector: &str, level: &str) -> pb::Policy {
        pb::Policy {
            name: name.into(),
            r#match: selector.into(),
            level: level.into(),
            ..Default::default()
        }
    }

    fn set(policies: &[pb::Policy]) -> PolicySet {
        PolicySet::new(
            policies
                .iter()
                .map(|p| osgate_proto::validate::policy_fields(p).unwrap())
                .collect(),
        )
    }

    fn fleet(nodes: &[(&str, &[&str])]) -> HashMap<String, NodeStatus> {
        nodes
            .iter()
            .map(|(name, peers)| {
                let status = NodeStatus {
                    peers: peers.iter().map(|p| (*p).to_owned()).collect(),
                    ..Default::default()
                };
                ((*name).to_owned(), status)
            })
            .collect()
    }

    #[test]
    fn lowering_the_level_for_peers_of_more_than_one_node_needs_confirmation() {
        let before = set(&[policy("mx", "*.example", "encrypt")]);
        let after = set(&[policy("mx", "*.example", "opportunistic")]);
        let one = fleet(&[("n1", &["a.example:25"]), ("n2", &["other.test:25"])]);
        assert_eq!(lowered(&before, &after, &one, 1), None);
        let two = fleet(&[("n1", &["a.example:25"]), ("n2", &["b.example:25"])]);
        let why = lowered(&before, &after, &two, 1).unwrap();
        assert!(why.contains("peers of 2 nodes"), "{why}");
        // Raising it never needs confirmation.
        assert_eq!(lowered(&after, &before, &two, 1), None);
        // A new cleartext rule lowers the (opportunistic) node default.
        let clear = set(&[policy("c", "a.example", "cleartext")]);
        let both = fleet(&[("n1", &["a.example:25"]), ("n2", &["a.example:25"])]);
        assert!(lowered(&PolicySet::new(Vec::new()), &clear, &both, 1).is_some());
        assert_eq!(lowered(&PolicySet::new(Vec::new()), &clear, &both, 2), None);
    }

    #[test]
    fn two_policies_with_one_selector_and_different_levels_are_refused_by_name() {
        let mut policies = BTreeMap::new();
        policies.insert("a".to_owned(), policy("a", "mx.example", "encrypt"));
        policies.insert("b".to_owned(), policy("b", "mx.example", "encrypt"));
        assert!(ambiguous(&policies).is_ok());
        policies.insert("c".to_owned(), policy("c", "mx.example", "cleartext"));
        let err = ambiguous(&policies).unwrap_err();
        assert!(
            err.message()
                .contains("policy/a and policy/c both match `mx.example`"),
            "{}",
            err.message()
        );
    }
}
