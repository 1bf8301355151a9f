//! A DNS forwarder in front of a real server that answers SERVFAIL to one query type and
//! passes everything else through: a resolver failing exactly the lookup under test.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct FaultyDns {
    pub addr: SocketAddr,
    servfails: Arc<AtomicUsize>,
}

/// The QTYPE of a query, after the 12-byte header and the question name.
fn qtype(query: &[u8]) -> Option<u16> {
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        at += len;
    }
    Some(u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]))
}

/// SERVFAIL for `query`: its id and question, no records.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let question_end = {
        let mut at = 12;
        loop {
            let len = usize::from(*query.get(at)?);
            at += 1;
            if len == 0 {
                break at + 4;
            }
            at += len;
        }
    };
    let mut reply = query.get(..question_end)?.to_vec();
    reply[2] = 0x80 | (query[2] & 0x01); // QR, and RD as asked
    reply[3] = 0x80 | 2; // RA, RCODE 2 (SERVFAIL)
    reply[4..6].copy_from_slice(&1u16.to_be_bytes());
    reply[6..12].fill(0);
    Some(reply)
}

impl FaultyDns {
    /// Forwards to `upstream`, failing queries of type `fail`.
    pub fn start(upstream: SocketAddr, fail: u16) -> FaultyDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let servfails = Arc::new(AtomicUsize::new(0));
        let counter = servfails.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65535];
            while let Ok((n, client)) = socket.recv_from(&mut buf) {
                let query = &buf[..n];
                if qtype(query) == Some(fail) {
                    if let Some(reply) = servfail(query) {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&reply, client);
                    }
                    continue;
                }
                let forward = UdpSocket::bind("127.0.0.1:0").unwrap();
                forward
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let _ = forward.send_to(query, upstream);
                let mut answer = [0u8; 65535];
                if let Ok(m) = forward.recv(&mut answer) {
                    let _ = socket.send_to(&answer[..m], client);
                }
            }
        });
        FaultyDns { addr, servfails }
    }

    /// How many queries it failed.
    pub fn servfails(&self) -> usize {
        self.servfails.load(Ordering::Relaxed)
    }
}
