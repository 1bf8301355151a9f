use super::*;

fn policy(name: &str, selector: &str, level: &str) -> pb::Resource {
    pb::Resource {
        kind: Some(Kind::Policy(pb::Policy {
            name: name.into(),
            r#match: selector.into(),
            level: level.into(),
            ..Default::default()
        })),
    }
}

fn update(revision: u64, snapshot: bool, upserts: Vec<pb::Resource>) -> pb::Update {
    pb::Update {
        revision,
        snapshot,
        upserts,
        ..Default::default()
    }
}

#[test]
fn a_snapshot_then_a_delta_apply() -> Result<(), Invalid> {
    let held = Held::default().apply(&update(
        3,
        true,
        vec![policy("a", "*.x.example", "encrypt")],
    ))?;
    let mut delta = update(4, false, vec![policy("b", "10.0.0.0/8", "deny")]);
    delta.deletes.push(pb::ResourceRef {
        kind: "policy".into(),
        name: "a".into(),
    });
    let held = held.apply(&delta)?;
    assert_eq!(held.revision, 4);
    let names: Vec<_> = held.resources.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["b"]);
    Ok(())
}

#[test]
fn one_bad_resource_rejects_the_update_by_name_and_keeps_the_state() -> Result<(), Invalid> {
    let held = Held::default().apply(&update(
        1,
        true,
        vec![policy("a", "*.x.example", "encrypt")],
    ))?;
    let bad = update(
        2,
        true,
        vec![
            policy("good", "y.example", "encrypt"),
            policy("bad", "y.example", "sometimes"),
        ],
    );
    let error = held.apply(&bad).err();
    assert_eq!(error.map(|e| e.resource), Some("policy/bad".to_owned()));
    assert_eq!(held.revision, 1);
    assert_eq!(held.resources.len(), 1);
    Ok(())
}

#[test]
fn a_required_feature_the_node_lacks_is_refused() {
    let mut p = pb::Policy {
        name: "future".into(),
        r#match: "*".into(),
        level: "encrypt".into(),
        ..Default::default()
    };
    p.requires.push("policy.require-ct".into());
    let r = pb::Resource {
        kind: Some(Kind::Policy(p)),
    };
    let error = Held::default().apply(&update(1, true, vec![r])).err();
    assert!(error.is_some_and(|e| e.reason.contains("policy.require-ct")));
    let mut whole = update(1, true, vec![]);
    whole.requires.push("update.v2".into());
    assert!(Held::default().apply(&whole).is_err());
}

#[test]
fn a_resource_of_an_unknown_kind_is_refused_not_skipped() {
    let unknown = pb::Resource { kind: None };
    assert!(
        Held::default()
            .apply(&update(1, true, vec![unknown]))
            .is_err()
    );
}

#[test]
fn stale_deltas_are_refused() -> Result<(), Invalid> {
    let held = Held::default().apply(&update(5, true, vec![]))?;
    assert!(held.apply(&update(5, false, vec![])).is_err());
    assert!(held.apply(&update(4, false, vec![])).is_err());
    Ok(())
}

#[test]
fn contradictions_are_refused() {
    let mut p = pb::Policy {
        name: "c".into(),
        r#match: "*".into(),
        level: "authenticate".into(),
        ..Default::default()
    };
    p.allow_cleartext_fallback = Some(true);
    assert!(super::policy(&p).is_err());
}

#[test]
fn control_plane_rules_win_ties_with_local_rules() -> Result<(), Invalid> {
    use osgate_core::policy::Peer;
    let local = RuleSpec {
        selector: "h.example",
        level: "cleartext",
        methods: &[],
        pins: &[],
        min_tls: None,
        allow_cleartext_fallback: None,
        report_only: false,
    }
    .build("policy[0]".into())
    .map_err(|e| invalid("local", e.to_string()))?;
    let held =
        Held::default().apply(&update(1, true, vec![policy("p", "h.example", "encrypt")]))?;
    let fleet = held.fleet(&PolicySet::new(vec![local]))?;
    let peer = Peer {
        host: "h.example",
        port: 443,
        ip: None,
    };
    let chosen = fleet.policy.select(&peer).enforced.map(|r| r.id.clone());
    assert_eq!(chosen.as_deref(), Some("cp:p"));
    Ok(())
}

mod arbitrary_input {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    proptest! {
        /// Whatever bytes arrive, decoding and applying returns a value or an error: the
        /// apply path never panics (CONFORMANCE G.50).
        #[test]
        fn any_bytes_decode_and_apply_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(update) = pb::Update::decode(bytes.as_slice()) {
                let held = Held::default().apply(&update);
                if let Ok(held) = held {
                    let _ = held.fleet(&PolicySet::default());
                }
            }
        }

        /// Updates built from arbitrary field values: same guarantee, and a refused update
        /// leaves the held state as it was.
        #[test]
        fn arbitrary_policies_are_applied_or_refused_whole(
            names in proptest::collection::vec("[a-z0-9.*/:-]{0,12}", 1..6),
            levels in proptest::collection::vec("[a-z]{0,13}", 1..6),
            selectors in proptest::collection::vec("[a-z0-9.*/:\\[\\]-]{0,20}", 1..6),
        ) {
            let upserts: Vec<pb::Resource> = names
                .iter()
                .zip(&levels)
                .zip(&selectors)
                .map(|((n, l), m)| policy(n, m, l))
                .collect();
            let before = Held::default().apply(&update(1, true, vec![])).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match before.apply(&update(2, false, upserts.clone())) {
                Ok(after) => prop_assert!(after.resources.len() <= upserts.len()),
                Err(_) => prop_assert_eq!(before.resources.len(), 0),
            }
        }
    }
}

/// CONFORMANCE G.43: the NACK names the resource and the message; prost alone would have
/// decoded the update with the field dropped.
#[test]
fn decode_update_refuses_unknown_fields_naming_the_resource() {
    use prost::Message;
    let good = update(5, true, vec![policy("a", "*.x.example", "encrypt")]).encode_to_vec();
    assert_eq!(decode_update(&good).map(|u| u.revision), Ok(5));
    // Update { revision: 5, upserts: [Resource { policy: Policy { name: "a", 20: 1 } }] }
    let policy = [0x0a, 0x01, b'a', 0xa0, 0x01, 0x01];
    let mut resource = vec![0x0a, policy.len() as u8];
    resource.extend(policy);
    let mut bad = vec![0x08, 0x05, 0x1a, resource.len() as u8];
    bad.extend(resource);
    assert!(pb::Update::decode(bad.as_slice()).is_ok());
    let (revision, err) = decode_update(&bad).unwrap_err();
    assert_eq!(revision, 5);
    assert_eq!(err.resource, "policy/a");
    assert!(err.reason.contains("field 20"), "{err}");
    assert!(err.reason.contains("osgate.v1.Policy"), "{err}");
    // An unknown field of Update itself names the update.
    let mut top = good.clone();
    top.extend([0xa0, 0x01, 0x01]);
    let (_, err) = decode_update(&top).unwrap_err();
    assert_eq!(err.resource, "update");
    assert!(err.reason.contains("osgate.v1.Update"), "{err}");
}
