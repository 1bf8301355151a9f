//! The DANE cache (DESIGN.md, "Capability caches"): the control plane looks up, with its own
//! validating resolver, the TLSA RRsets of the peers assigned to its nodes, and distributes
//! each secure set with its DNSSEC validity window. A node whose own lookup fails or cannot
//! validate (a container without a validating resolver; an attacker blocking TLSA answers)
//! still authenticates the peer; a node's own secure answer or secure denial always wins
//! (CONFORMANCE J.59).
//!
//! RFC 7672 §2.1: a failed lookup is not "no TLSA": here it changes nothing already
//! distributed (nodes stop using a set once its signatures expire).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use metrics::{counter, gauge};
use osgate_core::dane::{Lookup, NotApplicable, TlsaSet};
use osgate_dns::{Dns, Validity};
use osgate_proto::features;
use osgate_proto::pb::{self, resource::Kind};

use crate::auth::Caller;
use crate::config::DaneCacheConfig;
use crate::ctx::{Ctx, put, unix_now};
use crate::db::Write;
use crate::metrics as m;

/// A failed lookup is tried again this soon (or at the refresh interval, if shorter).
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// What one lookup gave.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The record to hold (a secure set, or a secure denial), and when to look again.
    Record(pb::DaneRecord, u64),
    /// Nothing to rely on: keep what nodes hold; the label says why.
    Failed(&'static str),
}

/// The DANE record `lookup` and `validity` make for `peer` at `now`, and the next refresh:
/// the TTL (at most `refresh_max`), and in any case halfway to the signatures' expiry, so a
/// re-signed zone is picked up before nodes must stop using the set.
fn answer(
    peer: &str,
    lookup: &Lookup,
    validity: Option<Validity>,
    now: u64,
    refresh_max: u64,
) -> Answer {
    let record = |status: &str, base: &str, tlsa: Vec<String>, v: Validity| pb::DaneRecord {
        peer: peer.to_owned(),
        base: base.to_owned(),
        status: status.to_owned(),
        tlsa,
        valid_from: v.from,
        valid_until: v.until,
        ttl: v.ttl,
        resolved_at: now,
        requires: vec![features::DANE_CACHE.into()],
    };
    let next = |v: Option<Validity>| {
        let ttl = v
            .map_or(refresh_max, |v| u64::from(v.ttl))
            .clamp(1, refresh_max);
        let halfway = v.map_or(u64::MAX, |v| now + v.until.saturating_sub(now) / 2);
        (now + ttl).min(halfway).max(now + 1)
    };
    match (lookup, validity) {
        (
            Lookup::Records {
                set: TlsaSet::Usable(records),
                base,
            },
            Some(v),
        ) if v.until > now => {
            let tlsa = records.iter().map(|r| r.presentation()).collect();
            Answer::Record(record("secure", base, tlsa, v), next(Some(v)))
        }
        (Lookup::Records { .. }, _) => Answer::Failed("secure-unusable"),
        (Lookup::NotApplicable(NotApplicable::NoTlsa), _) => {
            let none = Validity {
                from: now,
                until: now,
                ttl: 0,
            };
            Answer::Record(record("secure-denial", "", Vec::new(), none), next(None))
        }
        (other, _) => Answer::Failed(other.label().unwrap_or("not-validating")),
    }
}

/// Whether `new` differs from `old` in anything nodes act on (the time of the lookup alone
/// is no reason for a revision).
fn changed(old: Option<&pb::DaneRecord>, new: &pb::DaneRecord) -> bool {
    let key = |d: &pb::DaneRecord| {
        (
            d.base.clone(),
            d.status.clone(),
            d.tlsa.clone(),
            d.valid_from,
            d.valid_until,
        )
    };
    old.is_none_or(|old| key(old) != key(new))
}

/// `host` and port of a peer with a DNS name; addresses have no TLSA records to look up.
fn named(peer: &str) -> Option<(&str, u16)> {
    let (host, port) = peer.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>();
    (literal.is_err() && !host.is_empty()).then_some((host, port))
}

/// The peers assigned to any node.
fn assigned(ctx: &Ctx) -> BTreeSet<String> {
    let nodes = ctx.state.list("node");
    let peers = nodes.iter().filter_map(|r| match &r.kind {
        Some(Kind::Node(n)) => Some(n.peers.clone()),
        _ => None,
    });
    peers.flatten().filter(|p| named(p).is_some()).collect()
}

fn held(ctx: &Ctx, peer: &str) -> Option<pb::DaneRecord> {
    match ctx
        .state
        .get("dane", peer)
        .as_deref()
        .and_then(|r| r.kind.clone())
    {
        Some(Kind::Dane(d)) => Some(d),
        _ => None,
    }
}

/// Follows the TLSA records of every assigned peer until the process ends.
pub async fn run(ctx: Arc<Ctx>, config: DaneCacheConfig) {
    let dns = match Dns::new(&config.resolver) {
        Ok(dns) => dns,
        Err(e) => {
            tracing::error!(error = e, "DANE cache off: cannot build its resolver");
            return;
        }
    };
    let refresh_max = config.refresh_max.as_secs().max(1);
    let sts = match config.sts.as_ref().map(crate::sts::resolver).transpose() {
        Ok(sts) => sts,
        Err(e) => {
            tracing::error!(error = e, "MTA-STS cache off: cannot build its client");
            None
        }
    };
    // When each peer's TLSA records, and each mail domain's policy, are looked up next.
    let mut due_tlsa: HashMap<String, u64> = HashMap::new();
    let mut due_sts: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let peers = assigned(&ctx);
        let domains = crate::sts::domains(&peers);
        due_tlsa.retain(|p, _| peers.contains(p));
        due_sts.retain(|d, _| domains.contains(d));
        let mut writes = withdrawn(&ctx, "dane", &peers);
        writes.extend(withdrawn(&ctx, "sts", &domains));
        let now = unix_now();
        for peer in &peers {
            if due_tlsa.get(peer).is_some_and(|at| *at > now) {
                continue;
            }
            let (next, write) = refresh(&ctx, &dns, peer, refresh_max).await;
            due_tlsa.insert(peer.clone(), next);
            writes.extend(write);
        }
        for domain in domains.iter().filter(|_| sts.is_some()) {
            if due_sts.get(domain).is_some_and(|at| *at > now) {
                continue;
            }
            if let Some(sts) = &sts {
                writes.extend(crate::sts::refresh(&ctx, sts, &dns, domain, now).await);
            }
            due_sts.insert(domain.clone(), now + refresh_max);
        }
        let fresh = ctx.state.list("dane").iter().filter(|r| matches!(&r.kind, Some(Kind::Dane(d)) if d.status == "secure" && d.valid_until > now)).count();
        gauge!(m::DANE_SETS).set(fresh as f64);
        if !writes.is_empty() {
            commit(&ctx, writes).await;
        }
    }
}

/// Deletes of the `kind` resources whose name (peer or domain) nothing served names any more.
fn withdrawn(ctx: &Ctx, kind: &'static str, served: &BTreeSet<String>) -> Vec<Write> {
    let held = ctx.state.list(kind);
    let names = held
        .iter()
        .filter_map(|r| osgate_proto::validate::key_of(r));
    names
        .filter(|(_, name)| !served.contains(name))
        .map(|(_, name)| Write::Delete { kind, name })
        .collect()
}

/// Looks `peer` up; returns when to look again and the write, if what nodes hold changes.
async fn refresh(ctx: &Ctx, dns: &Dns, peer: &str, refresh_max: u64) -> (u64, Option<Write>) {
    let Some((host, port)) = named(peer) else {
        return (u64::MAX, None);
    };
    let (lookup, validity) = match dns.addresses(host).await {
        Ok(addresses) => dns.dane_with_validity(host, port, &addresses).await,
        Err(failed) => (failed, None),
    };
    let now = unix_now();
    counter!(m::DANE_LOOKUPS, "result" => lookup.label().unwrap_or("not-validating")).increment(1);
    let mut errors = ctx
        .dane_errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match answer(peer, &lookup, validity, now, refresh_max) {
        Answer::Record(record, next) => {
            errors.remove(peer);
            let write = changed(held(ctx, peer).as_ref(), &record).then(|| {
                let resource = pb::Resource {
                    kind: Some(Kind::Dane(record)),
                };
                put("dane", peer.to_owned(), &resource)
            });
            (next, write)
        }
        Answer::Failed(why) => {
            // Once per change of cause: a peer that keeps failing is retried quietly.
            if errors.get(peer).map(String::as_str) != Some(why) {
                tracing::warn!(
                    peer,
                    result = why,
                    "DANE cache: TLSA lookup gave nothing to rely on; nodes keep what they hold"
                );
            }
            errors.insert(peer.to_owned(), why.to_owned());
            (now + RETRY_FAILED.as_secs().min(refresh_max), None)
        }
    }
}

async fn commit(ctx: &Ctx, writes: Vec<Write>) {
    let detail = writes
        .iter()
        .map(Write::name)
        .collect::<Vec<_>>()
        .join(", ");
    let n = writes.len() as u64;
    let stored = match ctx.begin().await {
        Ok(m) => {
            ctx.finish(
                m,
                &Caller::ControlPlane,
                "dane.refresh",
                detail,
                Some(writes),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match stored {
        Ok(_) => counter!(m::CAPABILITY_CHANGES, "change" => "dane-updated").increment(n),
        Err(e) => tracing::error!(
            error = e.message(),
            "DANE cache: cannot store the new TLSA sets"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osgate_core::dane::Tlsa;

    fn usable() -> Lookup {
        let record = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        };
        Lookup::Records {
            set: TlsaSet::Usable(vec![record]),
            base: "p.test".into(),
        }
    }

    const V: Validity = Validity {
        from: 100,
        until: 10_100,
        ttl: 300,
    };

    #[test]
    fn a_secure_set_is_held_with_its_window_and_refreshed_by_ttl_or_halfway_to_expiry() {
        let Answer::Record(r, next) = answer("p.test:443", &usable(), Some(V), 1_000, 3_600) else {
            panic!("a secure set is held");
        };
        assert_eq!(
            (r.valid_from, r.valid_until, r.status.as_str()),
            (100, 10_100, "secure")
        );
        assert_eq!(r.tlsa[0], format!("3 1 1 {}", "07".repeat(32)));
        assert_eq!(next, 1_300, "the TTL first");
        let Answer::Record(_, next) = answer("p.test:443", &usable(), Some(V), 10_000, 3_600)
        else {
            panic!("still within the window");
        };
        assert_eq!(next, 10_050, "halfway to expiry when that is sooner");
        let Answer::Record(_, next) = answer("p.test:443", &usable(), Some(V), 1_000, 10) else {
            panic!("held");
        };
        assert_eq!(next, 1_010, "refresh_max caps the TTL");
    }

    #[test]
    fn nothing_unvalidated_or_expired_is_ever_held() {
        for lookup in [
            Lookup::Failed { bogus: true },
            Lookup::Failed { bogus: false },
            Lookup::NotValidating,
            Lookup::NotApplicable(NotApplicable::InsecureTlsa),
            Lookup::NotApplicable(NotApplicable::InsecureAddress),
            Lookup::Records {
                set: TlsaSet::Unusable,
                base: "p.test".into(),
            },
        ] {
            assert!(
                matches!(
                    answer("p:1", &lookup, Some(V), 1_000, 60),
                    Answer::Failed(_)
                ),
                "{lookup:?}"
            );
        }
        assert!(
            matches!(answer("p:1", &usable(), None, 1_000, 60), Answer::Failed(_)),
            "no window"
        );
        assert!(
            matches!(
                answer("p:1", &usable(), Some(V), 10_100, 60),
                Answer::Failed(_)
            ),
            "expired"
        );
    }

    #[test]
    fn only_what_nodes_act_on_is_a_change() {
        let Answer::Record(a, _) = answer("p:1", &usable(), Some(V), 1_000, 60) else {
            panic!()
        };
        let Answer::Record(b, _) = answer("p:1", &usable(), Some(V), 2_000, 60) else {
            panic!()
        };
        assert!(!changed(Some(&a), &b), "a later lookup of the same set");
        let resigned = Validity { until: 20_000, ..V };
        let Answer::Record(c, _) = answer("p:1", &usable(), Some(resigned), 2_000, 60) else {
            panic!()
        };
        assert!(changed(Some(&a), &c), "a new signature window");
        assert!(changed(None, &a));
    }

    #[test]
    fn addresses_are_not_looked_up() {
        assert_eq!(named("p.test:443"), Some(("p.test", 443)));
        assert_eq!(named("192.0.2.1:443"), None);
        assert_eq!(named("[2001:db8::1]:443"), None);
        assert_eq!(named("nope"), None);
    }
}
