use proptest::prelude::*;

use super::*;
use crate::pb::{self, resource::Kind};

/// Every field of every security-relevant message set, so a field missing from the schema
/// would show as unknown.
fn full_policy() -> pb::Policy {
    pb::Policy {
        name: "p".into(),
        r#match: "*.example".into(),
        level: "encrypt".into(),
        methods: vec!["dane".into()],
        pins: vec!["sha256/x".into()],
        min_tls: "1.3".into(),
        allow_cleartext_fallback: Some(false),
        report_only: true,
        requires: vec!["f".into()],
    }
}

fn full_pin() -> pb::FleetPin {
    pb::FleetPin {
        peer: "gw.example:443".into(),
        spki: "sha256/a".into(),
        state: "approved".into(),
        next: "sha256/b".into(),
        reporters: vec!["n1".into()],
        requires: vec!["f".into()],
    }
}

fn full_node() -> pb::NodeKey {
    pb::NodeKey {
        name: "n1".into(),
        spki: "sha256/c".into(),
        addresses: vec!["10.0.0.1:7443".into()],
        requires: vec!["f".into()],
        peers: vec!["peer.test:443".into()],
    }
}

fn full_update() -> pb::Update {
    let resource = |kind| pb::Resource { kind: Some(kind) };
    pb::Update {
        revision: 9,
        snapshot: true,
        upserts: vec![
            resource(Kind::Policy(full_policy())),
            resource(Kind::Pin(full_pin())),
            resource(Kind::Node(full_node())),
        ],
        deletes: vec![pb::ResourceRef {
            kind: "policy".into(),
            name: "old".into(),
        }],
        requires: vec!["f".into()],
    }
}

/// A field key: `(number << 3) | wire_type`, as a varint.
fn key(number: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(number) << 3 | u64::from(wire_type), &mut out);
    out
}

/// An unknown field `number` of each wire type, with a valid body.
fn unknown_field(number: u32, wire_type: u8) -> Vec<u8> {
    let mut out = key(number, wire_type);
    match wire_type {
        0 => out.push(1),
        1 => out.extend_from_slice(&[0; 8]),
        2 => out.extend_from_slice(&[3, b'a', b'b', b'c']),
        5 => out.extend_from_slice(&[0; 4]),
        _ => unreachable!(),
    }
    out
}

#[test]
fn every_field_the_generated_code_encodes_is_known() {
    assert_eq!(check(UPDATE, &full_update().encode_to_vec()), Ok(()));
    for (name, bytes) in [
        ("osgate.v1.Policy", full_policy().encode_to_vec()),
        ("osgate.v1.FleetPin", full_pin().encode_to_vec()),
        ("osgate.v1.NodeKey", full_node().encode_to_vec()),
    ] {
        assert_eq!(check(name, &bytes), Ok(()), "{name}");
    }
}

#[test]
fn an_unknown_field_of_any_wire_type_in_each_message_is_refused_by_name() {
    for wire_type in [0, 1, 2, 5] {
        for (name, mut bytes) in [
            (UPDATE, full_update().encode_to_vec()),
            ("osgate.v1.Policy", full_policy().encode_to_vec()),
            ("osgate.v1.FleetPin", full_pin().encode_to_vec()),
            ("osgate.v1.NodeKey", full_node().encode_to_vec()),
            ("osgate.v1.ResourceRef", Vec::new()),
            ("osgate.v1.Resource", Vec::new()),
        ] {
            bytes.extend(unknown_field(12, wire_type));
            let err = check(name, &bytes).unwrap_err();
            assert_eq!(
                err,
                WireError::Unknown {
                    message: name.into(),
                    number: 12,
                    wire_type,
                    path: Vec::new()
                },
                "{name}, wire type {wire_type}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

/// `Update.upserts[1]` is a Resource holding a FleetPin with a field 7 the node lacks.
#[test]
fn an_unknown_field_in_a_nested_message_is_refused_with_its_path() {
    let mut pin = full_pin().encode_to_vec();
    pin.extend(unknown_field(7, 2));
    let mut resource = key(2, 2); // Resource.pin
    prost::encoding::encode_varint(pin.len() as u64, &mut resource);
    resource.extend(pin);
    let mut update = pb::Update {
        revision: 4,
        upserts: vec![pb::Resource {
            kind: Some(Kind::Policy(full_policy())),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    update.extend(key(3, 2)); // Update.upserts
    prost::encoding::encode_varint(resource.len() as u64, &mut update);
    update.extend(resource);
    let err = check(UPDATE, &update).unwrap_err();
    assert_eq!(
        err,
        WireError::Unknown {
            message: "osgate.v1.FleetPin".into(),
            number: 7,
            wire_type: 2,
            path: vec![("upserts".into(), 1), ("pin".into(), 0)],
        }
    );
    assert_eq!(
        err.to_string(),
        "field 7 (wire type 2) is unknown to osgate.v1.FleetPin at upserts[1].pin[0]; \
         this node does not understand it, so it refuses the update"
    );
    // prost alone would have accepted it, dropping the field.
    let decoded = pb::Update::decode(update.as_slice()).unwrap();
    assert_eq!(decoded.upserts.len(), 2);
}

/// Re-encoding would differ from these bytes, yet every field is known: not a NACK.
#[test]
fn explicitly_encoded_defaults_are_not_unknown() {
    let mut bytes = vec![0x08, 0x00, 0x10, 0x00]; // revision = 0, snapshot = false
    bytes.extend([0x7a, 0x00]); // requires = [""] (field 15, empty string)
    assert_ne!(
        pb::Update::decode(bytes.as_slice())
            .unwrap()
            .encode_to_vec(),
        bytes
    );
    assert_eq!(check(UPDATE, &bytes), Ok(()));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let full = full_update().encode_to_vec();
    for cut in 0..full.len() {
        let prefix = &full[..cut];
        if pb::Update::decode(prefix).is_err() {
            assert!(check(UPDATE, prefix).is_err(), "prefix of {cut} bytes");
        }
    }
    for (bytes, what) in [
        (vec![0x80], "truncated key"),
        (vec![0x08, 0xff], "truncated varint"),
        (vec![0x1a, 0x05, 0x00], "length past the end"),
        (vec![0x0b], "a group"),
        (vec![0x0e], "wire type 6"),
        (vec![0x00], "field number 0"),
        (
            vec![0x08; 1].into_iter().chain([0xff; 11]).collect(),
            "an 11-byte varint",
        ),
    ] {
        assert!(
            matches!(check(UPDATE, &bytes), Err(WireError::Malformed { .. })),
            "{what}"
        );
    }
    assert!(matches!(
        check("osgate.v1.Nothing", &[]),
        Err(WireError::Malformed { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(UPDATE, &bytes);
    }

}
