//! How a real node takes control-plane updates it must not apply as sent: a field it does
//! not understand (CONFORMANCE G.43, from a hostile control plane, since the real one cannot
//! send one) and an update it cannot persist (ACK only after the last-known-good is synced).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use osgate_proto::pb::{self, watch_request::Msg};
use osgate_tests::controlplane::{ControlPlane, keygen, revision, wait_applied};
use osgate_tests::hostile_cp::HostileControlPlane;
use osgate_tests::peers::{self, Server};
use osgate_tests::{Io, Node, eventually, per_driver};
use prost::Message;

per_driver!(
    an_update_with_a_field_the_node_does_not_know_is_nacked_naming_the_message,
    an_update_that_cannot_be_persisted_is_nacked_and_not_served,
);

fn outbound(peer: SocketAddr) -> String {
    format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\npolicy = \"opportunistic\"\n"
    )
}

/// A field key: `(number << 3) | wire_type`.
fn key(number: u32, wire_type: u8, out: &mut Vec<u8>) {
    prost::encoding::encode_varint(u64::from(number) << 3 | u64::from(wire_type), out);
}

/// Appends field `number` holding `body` (wire type 2).
fn length_delimited(number: u32, body: &[u8], out: &mut Vec<u8>) {
    key(number, 2, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn deny(name: &str, selector: &str) -> pb::Policy {
    pb::Policy {
        name: name.into(),
        r#match: selector.into(),
        level: "deny".into(),
        ..Default::default()
    }
}

/// Issue 8 defect 5: prost dropped the unknown field and the node ACKed a policy it read
/// differently from what was sent. Now: NACK, naming the resource and the message type,
/// whatever `requires` says (it says nothing here), and the policy is not in force.
fn an_update_with_a_field_the_node_does_not_know_is_nacked_naming_the_message(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(peers::echo);
    let first = pb::Update {
        revision: 1,
        snapshot: true,
        ..Default::default()
    }
    .encode_to_vec();
    // A delta whose one Policy carries field 16 (a varint) after its known fields.
    let mut policy = deny("future", &server.addr.ip().to_string()).encode_to_vec();
    key(16, 0, &mut policy);
    policy.push(1);
    let mut resource = Vec::new();
    length_delimited(1, &policy, &mut resource); // Resource.policy
    let mut second = pb::Update {
        revision: 2,
        ..Default::default()
    }
    .encode_to_vec();
    length_delimited(3, &resource, &mut second); // Update.upserts
    let decoded = pb::Update::decode(second.as_slice()).unwrap();
    assert_eq!(
        decoded.upserts.len(),
        1,
        "prost alone reads it, minus field 16"
    );

    let hostile = HostileControlPlane::start(dir.path(), vec![first, second]);
    let node_key = keygen(dir.path(), "n1");
    let section = hostile.section(&node_key, &dir.path().join("n1.lkg"));
    let mut node = Node::start(
        dir.path(),
        io,
        "",
        &format!("{}\n{section}", outbound(server.addr)),
    );
    assert_eq!(hostile.reply(), Msg::Ack(pb::Ack { revision: 1 }));
    let Msg::Nack(nack) = hostile.reply() else {
        panic!("the update with an unknown field was not NACKed");
    };
    assert_eq!(nack.revision, 2);
    for part in ["policy/future", "osgate.v1.Policy", "field 16"] {
        assert!(nack.error.contains(part), "{part} in {:?}", nack.error);
    }
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");
    assert_eq!(node.metric("osgate_controlplane_revision", &[]), 1.0);
    assert_eq!(
        node.metric("osgate_controlplane_updates_total", &[("result", "nack")]),
        1.0
    );
    // The deny rule is not in force.
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"still flowing"),
        b"still flowing"
    );
}

/// Issue 8 defect 11: the node ACKed before it persisted the last-known-good, and ACKed even
/// when persisting failed. Now persisting comes first; when it fails the update is NACKed
/// with the error and not served, and the next update after the disk recovers applies.
fn an_update_that_cannot_be_persisted_is_nacked_and_not_served(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), dir.path().join("cp.db").to_str().unwrap(), "");
    let server = Server::start(peers::echo);
    let node_key = keygen(dir.path(), "n1");
    let registered = cp.register("n1", &node_key, &[]);
    let state = dir.path().join("n1.lkg");
    let section = cp.section(&node_key, &state, "");
    let mut node = Node::start(
        dir.path(),
        io,
        "",
        &format!("{}\n{section}", outbound(server.addr)),
    );
    wait_applied(&mut node, registered);
    let persisted = std::fs::read(&state).unwrap();

    // The temporary file the node writes first cannot be created.
    let blocker = state.with_extension("tmp");
    std::fs::create_dir(&blocker).unwrap();
    let selector = server.addr.ip().to_string();
    let body = |name: &str| {
        format!("[[policy]]\nname = \"{name}\"\nmatch = \"{selector}\"\nlevel = \"deny\"\n")
    };
    let refused = revision(&cp.apply(dir.path(), &body("deny-echo"), &[]).json());
    node.wait_for(|v| {
        v["message"] == "refused control plane update; keeping the last-known-good"
            && v["revision"] == refused
    });
    // The control plane records the NACK when it reads it.
    eventually("the control plane shows the NACK", || {
        cp.nodes()["nodes"][0]["nacked_revision"].as_u64() == Some(refused)
    });
    let status = &cp.nodes()["nodes"][0];
    assert_eq!(
        status["nacked_revision"].as_u64(),
        Some(refused),
        "{status}"
    );
    assert_eq!(
        status["acked_revision"].as_u64(),
        Some(registered),
        "{status}"
    );
    assert!(
        status["nack_error"]
            .as_str()
            .unwrap()
            .contains("cannot persist the last-known-good"),
        "{status}"
    );
    assert_eq!(
        node.metric("osgate_controlplane_revision", &[]),
        registered as f64
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        persisted,
        "the file is untouched"
    );
    assert_eq!(
        peers::call(node.addr("outbound[0]"), b"not denied yet"),
        b"not denied yet",
        "what is not persisted is not served"
    );
    assert_eq!(node.outcome("outbound")["achieved"], "cleartext");

    // The disk recovers: the next update (a snapshot, after a NACK) applies everything.
    std::fs::remove_dir(&blocker).unwrap();
    let next = revision(&cp.apply(dir.path(), &body("deny-echo-too"), &[]).json());
    wait_applied(&mut node, next);
    assert_ne!(std::fs::read(&state).unwrap(), persisted, "persisted now");
    assert_eq!(peers::call(node.addr("outbound[0]"), b"denied"), b"");
    assert_eq!(node.outcome("outbound")["achieved"], "refused");
}
