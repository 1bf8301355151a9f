//! A DaneRecord that needs a feature the node lacks, from a hostile control plane (which can
//! send what the real one would not): NACKed as a whole, the last-known-good set stays.

use osgate_proto::pb;
use osgate_proto::pb::watch_request::Msg;
use osgate_tests::controlplane::keygen;
use osgate_tests::dns::{Testbed, spki_sha256_hex, unix_now};
use osgate_tests::faulty_dns::{Fault, FaultyDns, TLSA};
use osgate_tests::hostile_cp::HostileControlPlane;
use osgate_tests::openssl::SServer;
use osgate_tests::{Io, Node};
use prost::Message;
use prost::encoding::{string, uint32, uint64};

use super::{fleet_dane, outbound, peer_key, zones_naming};

/// `osgate.v1.DaneRecord` fields as the interface numbers them, encoded by hand: the test
/// does not depend on the node's own copy of the message.
struct Dane<'a> {
    peer: &'a str,
    tlsa: &'a str,
    requires: &'a str,
}

impl Dane<'_> {
    /// An `osgate.v1.Resource` holding this record (field 5), valid for the next hour.
    fn resource(&self) -> Vec<u8> {
        let now = unix_now();
        let mut dane = Vec::new();
        string::encode(1, &self.peer.to_owned(), &mut dane);
        string::encode(2, &"mx.test".to_owned(), &mut dane);
        string::encode(3, &"secure".to_owned(), &mut dane);
        string::encode(4, &format!("3 1 1 {}", self.tlsa), &mut dane);
        uint64::encode(5, &(now - 60), &mut dane);
        uint64::encode(6, &(now + 3600), &mut dane);
        uint32::encode(7, &60, &mut dane);
        uint64::encode(8, &now, &mut dane);
        string::encode(15, &self.requires.to_owned(), &mut dane);
        let mut resource = Vec::new();
        prost::encoding::bytes::encode(5, &dane, &mut resource);
        resource
    }
}

/// An update: revision, snapshot or delta, and one upserted resource (Update.upserts = 3).
fn update(revision: u64, snapshot: bool, resource: &[u8]) -> Vec<u8> {
    let mut bytes = pb::Update {
        revision,
        snapshot,
        ..Default::default()
    }
    .encode_to_vec();
    prost::encoding::bytes::encode(3, &resource.to_vec(), &mut bytes);
    bytes
}

/// Revision 1 carries the right set (`dane-cache.v1`); revision 2 replaces it with one naming
/// another key and requiring `dane-cache.v2`. Applied with the requirement ignored, revision 2
/// would refuse the peer (tlsa-invalid); NACKed, the peer stays authenticated by revision 1.
pub fn a_dane_record_requiring_an_unknown_feature_is_nacked_and_not_used(io: Io) {
    let dir = tempfile::tempdir().unwrap();
    let pem = peer_key(dir.path(), "peer");
    let digest = spki_sha256_hex(&pem);
    let server = SServer::start(&pem, &[]);
    let peer = format!("mx.test:{}", server.addr.port());
    let dns = Testbed::start(dir.path(), &zones_naming(server.addr.port(), &pem));
    let faulty = FaultyDns::start(dns.addr, Fault::Servfail(TLSA));

    let known = Dane {
        peer: &peer,
        tlsa: &digest,
        requires: "dane-cache.v1",
    };
    let wrong = "ab".repeat(32);
    let future = Dane {
        peer: &peer,
        tlsa: &wrong,
        requires: "dane-cache.v2",
    };
    let updates = vec![
        update(1, true, &known.resource()),
        update(2, false, &future.resource()),
    ];
    let hostile = HostileControlPlane::start(dir.path(), updates);
    let key = keygen(dir.path(), "b");
    let section = hostile.section(&key, &dir.path().join("b.lkg"));
    let body = format!("{}{section}", outbound(&peer, &dns.config_via(faulty.addr)));
    let mut node = Node::start(dir.path(), io, "", &body);

    assert_eq!(hostile.reply(), Msg::Ack(pb::Ack { revision: 1 }));
    let Msg::Nack(nack) = hostile.reply() else {
        panic!("the DaneRecord requiring dane-cache.v2 was not NACKed");
    };
    assert_eq!(nack.revision, 2);
    assert!(nack.error.contains("dane-cache.v2"), "{:?}", nack.error);
    node.wait_for(|v| v["message"] == "refused control plane update; keeping the last-known-good");
    assert_eq!(node.metric("osgate_controlplane_revision", &[]), 1.0);

    server.send_line(node.addr("outbound[0]"), "the last-known-good set");
    fleet_dane(&mut node, &digest);
}
