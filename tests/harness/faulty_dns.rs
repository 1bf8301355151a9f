//! An on-path DNS forwarder in front of a real server that does one thing wrong: SERVFAIL to
//! one query type, answers altered or stripped of their signatures, or every answer late.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// RR type numbers (RFC 1035 §3.2.2, RFC 4034 §3.2 (RRSIG), RFC 6698 §7.1 (TLSA)).
pub const TLSA: u16 = 52;
const RRSIG: u16 = 46;

/// What the forwarder does wrong.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// SERVFAIL to queries of this type; everything else passes.
    Servfail(u16),
    /// Answers to queries of this type with the last rdata byte of each record of that type
    /// flipped (an attacker replacing a TLSA digest).
    Rewrite(u16),
    /// Answers to queries of this type without their RRSIG records, authority or additional
    /// sections (an attacker serving unsigned data).
    StripSignatures(u16),
    /// Every answer held back this long (a slow or hostile zone).
    Delay(Duration),
}

pub struct FaultyDns {
    pub addr: SocketAddr,
    faults: Arc<AtomicUsize>,
}

/// The end of the name at `at` (RFC 1035 §4.1.4: labels, ending in a zero or a pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// The QTYPE of a message, and where its question ends.
fn question(msg: &[u8]) -> Option<(u16, usize)> {
    let end = skip_name(msg, 12)?;
    Some((u16_at(msg, end)?, end + 4))
}

/// The answer records: (type, start, rdata start, end).
fn answers(msg: &[u8]) -> Option<Vec<(u16, usize, usize, usize)>> {
    let (_, mut at) = question(msg)?;
    let mut out = Vec::new();
    for _ in 0..u16_at(msg, 6)? {
        let start = at;
        let name_end = skip_name(msg, at)?;
        let kind = u16_at(msg, name_end)?;
        let rdata = name_end + 10;
        let end = rdata + usize::from(u16_at(msg, name_end + 8)?);
        msg.get(..end)?;
        out.push((kind, start, rdata, end));
        at = end;
    }
    Some(out)
}

/// SERVFAIL for `query`: its id and question, no records.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let (_, question_end) = question(query)?;
    let mut reply = query.get(..question_end)?.to_vec();
    reply[2] = 0x80 | (query[2] & 0x01); // QR, and RD as asked
    reply[3] = 0x80 | 2; // RA, RCODE 2 (SERVFAIL)
    reply[4..6].copy_from_slice(&1u16.to_be_bytes());
    reply[6..12].fill(0);
    Some(reply)
}

/// `answer` with the last rdata byte of each `kind` record flipped.
fn rewrite(mut answer: Vec<u8>, kind: u16) -> Option<Vec<u8>> {
    for (k, _, rdata, end) in answers(&answer)? {
        if k == kind && end > rdata {
            answer[end - 1] ^= 0xFF;
        }
    }
    Some(answer)
}

/// `answer` with only its unsigned answer records. Records before a dropped RRSIG keep their
/// compression pointers valid: pointers only point backwards.
fn strip_signatures(answer: &[u8]) -> Option<Vec<u8>> {
    let (_, question_end) = question(answer)?;
    let mut out = answer.get(..question_end)?.to_vec();
    let mut kept = 0u16;
    for (kind, start, _, end) in answers(answer)? {
        if kind != RRSIG {
            out.extend_from_slice(&answer[start..end]);
            kept += 1;
        }
    }
    out[6..8].copy_from_slice(&kept.to_be_bytes());
    out[8..12].fill(0);
    Some(out)
}

impl FaultyDns {
    /// Forwards UDP queries to `upstream`, doing `fault`.
    pub fn start(upstream: SocketAddr, fault: Fault) -> FaultyDns {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = socket.local_addr().unwrap();
        let faults = Arc::new(AtomicUsize::new(0));
        let counter = faults.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65535];
            while let Ok((n, client)) = socket.recv_from(&mut buf) {
                let (query, socket, counter) = (buf[..n].to_vec(), socket.clone(), counter.clone());
                // One thread a query: a held-back answer does not hold back the others.
                std::thread::spawn(move || {
                    if let Some(reply) = answer(&query, upstream, fault, &counter) {
                        let _ = socket.send_to(&reply, client);
                    }
                });
            }
        });
        FaultyDns { addr, faults }
    }

    /// How many answers it got wrong on purpose.
    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::Relaxed)
    }
}

fn answer(
    query: &[u8],
    upstream: SocketAddr,
    fault: Fault,
    faults: &AtomicUsize,
) -> Option<Vec<u8>> {
    let (qtype, _) = question(query)?;
    if matches!(fault, Fault::Servfail(t) if t == qtype) {
        faults.fetch_add(1, Ordering::Relaxed);
        return servfail(query);
    }
    let forward = UdpSocket::bind("127.0.0.1:0").ok()?;
    forward
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    forward.send_to(query, upstream).ok()?;
    let mut buf = [0u8; 65535];
    let n = forward.recv(&mut buf).ok()?;
    let upstream_answer = buf[..n].to_vec();
    let altered = match fault {
        Fault::Rewrite(t) if t == qtype => rewrite(upstream_answer, t)?,
        Fault::StripSignatures(t) if t == qtype => strip_signatures(&upstream_answer)?,
        Fault::Delay(d) => {
            std::thread::sleep(d);
            upstream_answer
        }
        _ => return Some(upstream_answer),
    };
    faults.fetch_add(1, Ordering::Relaxed);
    Some(altered)
}
