//! DNSSEC-validated lookups for DANE (RFC 7672 §2), with hickory-resolver on aws-lc-rs.
//!
//! The outcomes are kept distinct end to end: secure records, secure denial, insecure
//! (unsigned) answers, bogus answers and failed lookups. RFC 7672 §2.1: a lookup error "MUST
//! NOT" be read as "no TLSA records" — it refuses the connection.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, SigInput};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};

use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Hosts, Resolver, TokioResolver};
use osgate_core::dane::{Lookup, NotApplicable, Tlsa, TlsaSet};

/// `[dns]`: the validating resolver DANE uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty: the system's resolvers.
    pub servers: Vec<SocketAddr>,
    /// DNSKEY records (zone-file lines) to validate from; `None`: the IANA root anchors.
    pub trust_anchor: Option<PathBuf>,
    /// The owner of the first trust anchor: the zone the start-up self-test queries.
    pub anchor_zone: String,
    pub timeout: Duration,
    /// One connection's whole DNS phase: addresses and up to two TLSA bases (C.24).
    pub budget: Duration,
    /// Written in the config: validation must work at start, and a resolver that fails
    /// refuses. The implicit default tests validation in the background and, while it does
    /// not work, leaves names to the system resolver (DANE off, and the gauge says so).
    pub explicit: bool,
    /// Answers are cached at most this long, whatever their TTL: the control plane's DANE
    /// cache must see a changed TLSA set within its refresh interval. `None`: the TTL.
    pub cache_max_ttl: Option<Duration>,
}

impl DnsConfig {
    /// DANE with no `[dns]` section: the system's resolvers and the root trust anchor.
    pub fn implicit() -> Self {
        Self {
            servers: Vec::new(),
            trust_anchor: None,
            anchor_zone: ".".into(),
            timeout: Duration::from_millis(2_000),
            budget: Duration::from_millis(3 * 2_000),
            explicit: false,
            cache_max_ttl: None,
        }
    }
}

pub mod durable;
pub mod sts;

/// The owner name of the first record of a trust anchor file (zone-file DNSKEY lines): the
/// zone a self-test queries.
pub fn anchor_owner(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(';'))
        .and_then(|l| l.split_whitespace().next())
}

/// The validating resolver of one worker thread.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// One connection's DNS phase: the address lookup and up to two TLSA bases.
    budget: Duration,
    /// The hosts file the resolver answers from, too.
    hosts: Arc<Hosts>,
}

/// The `nameserver` lines of /etc/resolv.conf.
fn system_servers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // Scoped IPv6 (fe80::1%eth0) cannot be used without the scope: skipped.
        .filter_map(|addr| addr.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

impl Dns {
    /// A validating resolver as `config` says: its servers (or the system's) and its trust
    /// anchor (or the IANA root anchors built into hickory).
    pub fn new(config: &DnsConfig) -> Result<Self, String> {
        let anchors = match &config.trust_anchor {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| format!("{}: not a DNSKEY trust anchor file: {e}", path.display()))?,
            None => TrustAnchors::default(),
        };
        let servers = match config.servers.is_empty() {
            false => config.servers.clone(),
            true => system_servers(),
        };
        if servers.is_empty() {
            return Err(
                "no DNS server: [dns] servers is empty and /etc/resolv.conf names none".into(),
            );
        }
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.timeout = config.timeout;
        options.attempts = 1;
        options.validate = true;
        options.edns0 = true;
        if let Some(max) = config.cache_max_ttl {
            options.positive_max_ttl = Some(max);
            options.negative_max_ttl = Some(max);
        }
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .with_trust_anchor(Arc::new(anchors))
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Self {
            resolver,
            budget: config.budget,
            hosts: Arc::new(Hosts::from_system().unwrap_or_default()),
        })
    }

    /// Whether validation works: the trust anchor's own zone must validate as secure.
    pub async fn self_test(&self, zone: &str) -> bool {
        match self.resolver.lookup(fqdn(zone), RecordType::SOA).await {
            Ok(lookup) => {
                let verdict = rrset_proof(kinds(lookup.answers()), &[RecordType::SOA]);
                tracing::debug!(target: "osgate::dns", zone, ?verdict, "DNSSEC self-test");
                verdict == Verdict::Secure
            }
            Err(e) => {
                tracing::debug!(target: "osgate::dns", zone, error = %e, "DNSSEC self-test failed");
                false
            }
        }
    }

    /// Addresses of `host`, and whether they are DNSSEC-secure, with the CNAME-expanded name.
    /// The connection's DNS budget (CONFORMANCE C.24) starts here and ends in [`Self::dane`].
    pub async fn addresses(&self, host: &str) -> Result<Addresses, Lookup> {
        let deadline = Instant::now() + self.budget;
        let lookup =
            match tokio::time::timeout_at(deadline, self.resolver.lookup_ip(fqdn(host))).await {
                Ok(lookup) => lookup.map_err(|e| failed(&e))?,
                Err(_) => return Err(out_of_time(host)),
            };
        let records = lookup.as_lookup().answers();
        let verdict = match self.is_local(host) {
            true => Verdict::Insecure,
            false => rrset_proof(kinds(records), &[RecordType::A, RecordType::AAAA]),
        };
        let secure = match verdict {
            Verdict::Secure => true,
            Verdict::Insecure => false,
            Verdict::Bogus => return Err(Lookup::Failed { bogus: true }),
            verdict => {
                tracing::debug!(target: "osgate::dns", host, ?verdict, "address data not validated");
                return Err(Lookup::Failed { bogus: false });
            }
        };
        let expanded = records
            .iter()
            .find(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
            .map(|r| r.name.to_ascii().trim_end_matches('.').to_ascii_lowercase());
        let ips = lookup.iter().collect();
        Ok(Addresses {
            ips,
            secure,
            expanded,
            deadline,
        })
    }

    /// Answers from the hosts file or for localhost (RFC 6761 §6.3) come from no zone: they
    /// are insecure, whatever their proof (never validated) says.
    fn is_local(&self, host: &str) -> bool {
        let Ok(name) = Name::from_ascii(fqdn(host)) else {
            return false;
        };
        name.is_localhost()
            || [RecordType::A, RecordType::AAAA].into_iter().any(|kind| {
                let query = Query::query(name.clone(), kind);
                self.hosts.lookup_static_host(&query).is_some()
            })
    }

    /// DANE for `host`:`port` whose addresses were looked up as `addresses`
    /// (RFC 7672 §2.2.2: the CNAME-expanded name first, then the original name).
    pub async fn dane(&self, host: &str, port: u16, addresses: &Addresses) -> Lookup {
        self.dane_with_validity(host, port, addresses).await.0
    }

    /// [`Self::dane`], with how long a secure answer may be relied on: the control plane's
    /// DANE cache hands it to nodes that cannot look it up themselves.
    pub async fn dane_with_validity(
        &self,
        host: &str,
        port: u16,
        addresses: &Addresses,
    ) -> (Lookup, Option<Validity>) {
        if !addresses.secure {
            return (Lookup::NotApplicable(NotApplicable::InsecureAddress), None);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut bases = Vec::new();
        if let Some(expanded) = &addresses.expanded {
            bases.push(expanded.clone());
        }
        if !bases.contains(&host) {
            bases.push(host);
        }
        let mut last = (Lookup::NotApplicable(NotApplicable::NoTlsa), None);
        for base in bases {
            let lookup = self.tlsa(&base, port);
            last = match tokio::time::timeout_at(addresses.deadline, lookup).await {
                Ok(dane) => dane,
                Err(_) => return (out_of_time(&base), None),
            };
            if !matches!(last.0, Lookup::NotApplicable(NotApplicable::NoTlsa)) {
                return last;
            }
        }
        last
    }

    /// The MX hosts of `domain`. `validating`: the resolver passed its self-test, so data that
    /// did not validate is a failure (else it is read as insecure, as any resolver would).
    pub async fn mx(&self, domain: &str, validating: bool) -> Result<MxHosts, Lookup> {
        let lookup = self.resolver.lookup(fqdn(domain), RecordType::MX);
        let lookup = match tokio::time::timeout(self.budget, lookup).await {
            Err(_) => return Err(out_of_time(domain)),
            Ok(Err(e)) => return implicit_mx(domain, &e, validating),
            Ok(Ok(lookup)) => lookup,
        };
        let answers = lookup.answers();
        let secure = match rrset_proof(kinds(answers), &[RecordType::MX]) {
            Verdict::Secure => true,
            Verdict::Bogus if validating => return Err(Lookup::Failed { bogus: true }),
            Verdict::Insecure => false,
            _ if !validating => false,
            verdict => {
                tracing::debug!(target: "osgate::dns", domain, ?verdict, "MX data not validated");
                return Err(Lookup::Failed { bogus: false });
            }
        };
        let mut mx: Vec<(u16, String)> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .map(|(preference, host)| (preference, host.trim_end_matches('.').to_ascii_lowercase()))
            .collect();
        mx.sort_by_key(|(preference, _)| *preference);
        // RFC 7505: a single MX of "." (the null MX) says the domain takes no mail.
        let hosts = mx
            .into_iter()
            .map(|(_, host)| host)
            .filter(|h| !h.is_empty())
            .collect();
        Ok(MxHosts { hosts, secure })
    }

    /// The TXT records at `name`, each one's strings joined; empty when there are none.
    /// `None` when the lookup failed or an answer is bogus. MTA-STS (RFC 8461 §3.1) needs
    /// no DNSSEC here: the HTTPS fetch of the policy is what is authenticated.
    pub async fn txt(&self, name: &str) -> Option<Vec<String>> {
        let lookup = self.resolver.lookup(fqdn(name), RecordType::TXT);
        let lookup = match tokio::time::timeout(self.budget, lookup).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(_)))) => return Some(Vec::new()),
            Ok(Err(e)) => {
                tracing::debug!(target: "osgate::dns", name, error = %e, "TXT lookup failed");
                return None;
            }
            Err(_) => return None,
        };
        let mut records = Vec::new();
        for record in lookup.answers() {
            match &record.data {
                _ if record.proof == Proof::Bogus => return None,
                RData::TXT(txt) => {
                    let joined: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                    records.push(String::from_utf8_lossy(&joined).into_owned());
                }
                _ => {}
            }
        }
        Some(records)
    }

    async fn tlsa(&self, base: &str, port: u16) -> (Lookup, Option<Validity>) {
        let name = fqdn(&format!("_{port}._tcp.{base}"));
        let lookup = match self.resolver.lookup(name, RecordType::TLSA).await {
            Ok(lookup) => lookup,
            Err(e) => return (negative(&e), None),
        };
        let answers = lookup.answers();
        match rrset_proof(kinds(answers), &[RecordType::TLSA]) {
            Verdict::Secure => {}
            Verdict::Insecure => {
                return (Lookup::NotApplicable(NotApplicable::InsecureTlsa), None);
            }
            Verdict::Bogus => return (Lookup::Failed { bogus: true }, None),
            // Data that could not be validated is a failed lookup, never "insecure" (C.16).
            verdict => {
                tracing::debug!(target: "osgate::dns", base, ?verdict, "TLSA data not validated");
                return (Lookup::Failed { bogus: false }, None);
            }
        }
        let validity = validity(answers);
        let records: Vec<Tlsa> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        let records = Lookup::Records {
            set: TlsaSet::classify(&records),
            base: base.to_owned(),
        };
        (records, validity)
    }
}

/// How long a secure TLSA answer may be relied on (RFC 4035 §5.3.1: a signature validates
/// only between its inception and expiration), and when to ask again (its TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Unix seconds: the latest inception and the earliest expiration of the signatures
    /// over the TLSA RRset.
    pub from: u64,
    pub until: u64,
    pub ttl: u32,
}

/// The window of the RRSIGs covering the TLSA data: those the validator used when it marked
/// any (a multi-signer zone carries others it did not need), else all of them.
fn validity(answers: &[Record]) -> Option<Validity> {
    let sigs: Vec<(&SigInput, Proof)> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig))
                if sig.input().type_covered == RecordType::TLSA =>
            {
                Some((sig.input(), r.proof))
            }
            _ => None,
        })
        .collect();
    let used = sigs.iter().any(|(_, p)| *p == Proof::Secure);
    let counted = sigs
        .iter()
        .filter(|(_, p)| !used || *p == Proof::Secure)
        .map(|(s, _)| s);
    let from = counted
        .clone()
        .map(|s| u64::from(s.sig_inception.get()))
        .max()?;
    let until = counted.map(|s| u64::from(s.sig_expiration.get())).min()?;
    let ttl = answers
        .iter()
        .filter(|r| r.record_type() == RecordType::TLSA)
        .map(|r| r.ttl)
        .min()?;
    Some(Validity { from, until, ttl })
}

/// A mail domain's next hops (RFC 5321 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHosts {
    /// Most preferred first; equal preferences in the order the answer gave them.
    pub hosts: Vec<String>,
    /// The MX RRset (or its denial, for the implicit MX) validated as secure: only then are
    /// the hosts' TLSA records to be believed (RFC 7672 §2.2.1).
    pub secure: bool,
}

/// The addresses of a peer.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub ips: Vec<IpAddr>,
    /// Every address record (and CNAME on the way) validated as secure.
    pub secure: bool,
    /// The owner name of the address records (the CNAME-expanded name).
    pub expanded: Option<String>,
    /// When the connection's DNS phase must be over, TLSA lookups included.
    deadline: Instant,
}

/// What DNSSEC says about the data of an answer: the records of the queried types and the
/// CNAMEs leading to them (RFC 4035 §5.3: signatures validate RRsets, and hickory marks only
/// the RRSIG it used, so RRSIGs carry no verdict of their own; CONFORMANCE C.54).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every record validated.
    Secure,
    /// Proven unsigned: the data, or a CNAME on the way to it (a secure record reached
    /// through an unsigned alias proves nothing about the name asked for).
    Insecure,
    /// A record failed validation.
    Bogus,
    /// A record was not validated (`Indeterminate`), or the data disagrees with itself.
    Unvalidated,
    /// No record of the queried types.
    Empty,
}

/// The verdict on `records` (type, proof), for data of the `wanted` types.
fn rrset_proof(
    records: impl IntoIterator<Item = (RecordType, Proof)>,
    wanted: &[RecordType],
) -> Verdict {
    let (mut data, mut secure_data) = (0, 0);
    let (mut insecure_chain, mut unvalidated) = (false, false);
    for (kind, proof) in records {
        let is_data = wanted.contains(&kind);
        if !is_data && kind != RecordType::CNAME {
            continue;
        }
        match proof {
            Proof::Bogus => return Verdict::Bogus,
            Proof::Secure => secure_data += usize::from(is_data),
            Proof::Insecure => insecure_chain = true,
            _ => unvalidated = true,
        }
        data += usize::from(is_data);
    }
    if unvalidated {
        return Verdict::Unvalidated;
    }
    match (data, secure_data) {
        (0, _) => Verdict::Empty,
        (n, s) if s == n && !insecure_chain => Verdict::Secure,
        (_, 0) => Verdict::Insecure,
        // Secure data behind an unsigned CNAME: the alias could say anything.
        (n, s) if s == n => Verdict::Insecure,
        _ => Verdict::Unvalidated,
    }
}

fn kinds(records: &[Record]) -> impl Iterator<Item = (RecordType, Proof)> + '_ {
    records.iter().map(|r| (r.record_type(), r.proof))
}

/// The connection's DNS budget ran out (CONFORMANCE C.24): a failed lookup.
fn out_of_time(name: &str) -> Lookup {
    tracing::debug!(target: "osgate::dns", name, "DNS budget spent");
    Lookup::Failed { bogus: false }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// RFC 5321 §5.1: "If an empty list of MXs is returned, the address is treated as if it was
/// associated with an implicit MX RR, with a preference of 0, pointing to that host." The
/// implicit MX is as secure as the denial of the MX records.
fn implicit_mx(domain: &str, error: &NetError, validating: bool) -> Result<MxHosts, Lookup> {
    let secure = match error {
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.soa.as_ref().map(|s| s.proof) {
            Some(Proof::Secure) => true,
            Some(Proof::Bogus) if validating => return Err(Lookup::Failed { bogus: true }),
            Some(Proof::Insecure) => false,
            _ if !validating => false,
            None => false,
            Some(_) => return Err(Lookup::Failed { bogus: false }),
        },
        NetError::Dns(DnsError::Nsec { proof, .. }) => match proof {
            Proof::Secure => true,
            Proof::Insecure => false,
            _ if !validating => false,
            _ => return Err(Lookup::Failed { bogus: true }),
        },
        other => return Err(failed(other)),
    };
    let host = domain.trim_end_matches('.').to_ascii_lowercase();
    Ok(MxHosts {
        hosts: vec![host],
        secure,
    })
}

/// An error from an address lookup.
fn failed(error: &NetError) -> Lookup {
    match error {
        NetError::Dns(DnsError::DnssecBogus) => Lookup::Failed { bogus: true },
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Bogus => {
            Lookup::Failed { bogus: true }
        }
        _ => Lookup::Failed { bogus: false },
    }
}

/// An error from a TLSA lookup: a secure denial means "no TLSA", an insecure one means DANE
/// does not apply, anything else is a failure.
fn negative(error: &NetError) -> Lookup {
    match error {
        // The validator passed the denial; its SOA says from which kind of zone (an SOA it
        // did not validate is a failure, C.16).
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.soa.as_ref().map(|s| s.proof) {
            None | Some(Proof::Secure) => Lookup::NotApplicable(NotApplicable::NoTlsa),
            Some(Proof::Insecure) => Lookup::NotApplicable(NotApplicable::InsecureTlsa),
            Some(Proof::Bogus) => Lookup::Failed { bogus: true },
            Some(_) => Lookup::Failed { bogus: false },
        },
        NetError::Dns(DnsError::Nsec { proof, .. }) => match proof {
            Proof::Secure => Lookup::NotApplicable(NotApplicable::NoTlsa),
            Proof::Insecure => Lookup::NotApplicable(NotApplicable::InsecureTlsa),
            _ => Lookup::Failed { bogus: true },
        },
        NetError::Dns(DnsError::DnssecBogus) => Lookup::Failed { bogus: true },
        _ => Lookup::Failed { bogus: false },
    }
}

#[cfg(test)]
mod resolv_conf_tests {
    use super::*;

    #[test]
    fn nameservers_are_read_and_comments_and_scoped_addresses_skipped() {
        let text = "# generated\nsearch example\nnameserver 10.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\noptions ndots:2\n";
        let servers = parse_resolv_conf(text);
        assert_eq!(
            servers,
            [
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;
    use RecordType::{A, AAAA, CNAME, RRSIG, TLSA, TXT};

    const PROOFS: [Proof; 4] = [
        Proof::Secure,
        Proof::Insecure,
        Proof::Bogus,
        Proof::Indeterminate,
    ];

    /// Every answer of up to `len` records over `kinds` and the four proofs.
    fn answers(kinds: &[RecordType], len: usize) -> Vec<Vec<(RecordType, Proof)>> {
        let one: Vec<_> = kinds
            .iter()
            .flat_map(|k| PROOFS.iter().map(move |p| (*k, *p)))
            .collect();
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|a: &Vec<_>| {
                    one.iter().map(move |r| {
                        let mut a = a.clone();
                        a.push(*r);
                        a
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// The rule, stated over the counted records as a whole.
    fn oracle(answer: &[(RecordType, Proof)]) -> Verdict {
        let counted: Vec<_> = answer
            .iter()
            .filter(|(k, _)| *k == A || *k == CNAME)
            .collect();
        let data: Vec<_> = counted.iter().filter(|(k, _)| *k == A).collect();
        if counted.iter().any(|(_, p)| *p == Proof::Bogus) {
            Verdict::Bogus
        } else if counted.iter().any(|(_, p)| *p == Proof::Indeterminate) {
            Verdict::Unvalidated
        } else if data.is_empty() {
            Verdict::Empty
        } else if counted.iter().all(|(_, p)| *p == Proof::Secure) {
            Verdict::Secure
        } else if data.iter().all(|(_, p)| *p == Proof::Secure)
            || data.iter().all(|(_, p)| *p == Proof::Insecure)
        {
            Verdict::Insecure
        } else {
            Verdict::Unvalidated
        }
    }

    #[test]
    fn every_small_answer_follows_the_rule() {
        for answer in answers(&[A, CNAME, RRSIG, TXT], 4) {
            assert_eq!(
                rrset_proof(answer.clone(), &[A]),
                oracle(&answer),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn signatures_and_other_types_never_change_the_verdict() {
        for answer in answers(&[A, CNAME, RRSIG, TXT], 4) {
            let data: Vec<_> = answer
                .iter()
                .copied()
                .filter(|(k, _)| *k == A || *k == CNAME)
                .collect();
            assert_eq!(
                rrset_proof(answer.clone(), &[A]),
                rrset_proof(data, &[A]),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn the_order_of_records_does_not_matter() {
        for answer in answers(&[A, CNAME], 3) {
            let reversed: Vec<_> = answer.iter().rev().copied().collect();
            assert_eq!(
                rrset_proof(answer.clone(), &[A]),
                rrset_proof(reversed, &[A])
            );
        }
    }

    #[test]
    fn a_second_signature_left_indeterminate_keeps_the_rrset_secure() {
        // RFC 6781 §4.1.1.2: double-signature rollover; hickory marks only the RRSIG it used.
        let answer = [
            (TLSA, Proof::Secure),
            (RRSIG, Proof::Secure),
            (RRSIG, Proof::Indeterminate),
        ];
        assert_eq!(rrset_proof(answer, &[TLSA]), Verdict::Secure);
    }

    #[test]
    fn unvalidated_data_is_never_insecure() {
        for p in [Proof::Secure, Proof::Insecure] {
            let answer = [(CNAME, p), (A, Proof::Indeterminate), (AAAA, Proof::Secure)];
            assert_eq!(rrset_proof(answer, &[A, AAAA]), Verdict::Unvalidated);
        }
    }

    #[test]
    fn an_alias_chain_is_as_secure_as_its_least_secure_link() {
        let secure_to_unsigned = [(CNAME, Proof::Secure), (A, Proof::Insecure)];
        let unsigned_to_secure = [(CNAME, Proof::Insecure), (A, Proof::Secure)];
        let secure_to_secure = [(CNAME, Proof::Secure), (A, Proof::Secure)];
        assert_eq!(rrset_proof(secure_to_unsigned, &[A]), Verdict::Insecure);
        assert_eq!(rrset_proof(unsigned_to_secure, &[A]), Verdict::Insecure);
        assert_eq!(rrset_proof(secure_to_secure, &[A]), Verdict::Secure);
    }
}
