//! TLS-RPT day aggregates on the wire (`pb::TlsrptDay`), both ways. What a node sends is
//! input to the control plane: every field is checked and bounded here.

use std::net::IpAddr;

use osgate_core::tlsrpt::{
    Day, DayAggregate, FailureKey, PolicyRef, PolicyType, ResultType, StoredDay, StoredFailure,
    StoredPolicy, domain_key,
};

use crate::pb;

/// Per day: policies, failure details per policy, strings per policy, bytes per string.
pub const MAX_POLICIES: usize = 256;
pub const MAX_FAILURE_DETAILS: usize = 1_024;
pub const MAX_STRINGS: usize = 64;
pub const MAX_STRING_BYTES: usize = 1_024;
/// Domain days per report batch.
pub const MAX_DAYS_PER_BATCH: usize = 512;

pub fn to_pb(domain: &str, day: Day, aggregate: &DayAggregate) -> pb::TlsrptDay {
    let stored = aggregate.to_stored();
    pb::TlsrptDay {
        policy_domain: domain.to_owned(),
        date: day.to_string(),
        policies: stored.policies.iter().map(policy_to_pb).collect(),
    }
}

fn policy_to_pb(p: &StoredPolicy) -> pb::TlsrptPolicy {
    let text = |ip: Option<IpAddr>| ip.map(|a| a.to_string()).unwrap_or_default();
    pb::TlsrptPolicy {
        policy_type: p.policy.policy_type.as_str().into(),
        policy_string: p.policy.strings.clone(),
        mx_host: p.policy.mx_hosts.clone(),
        total_successful_session_count: p.successes,
        total_failure_session_count: p.failures,
        failure_details: p
            .details
            .iter()
            .map(|f| pb::TlsrptFailure {
                result_type: f.key.result_type.as_str().into(),
                sending_mta_ip: text(f.key.sending_ip),
                receiving_mx_hostname: f.key.mx_host.clone().unwrap_or_default(),
                receiving_ip: text(f.key.receiving_ip),
                failed_session_count: f.count,
            })
            .collect(),
    }
}

/// A checked (domain, day, aggregate); the reason when a field is out of bounds.
pub fn from_pb(d: &pb::TlsrptDay) -> Result<(String, Day, DayAggregate), String> {
    let domain = domain_key(&d.policy_domain);
    if domain.is_empty() || domain.len() > 253 || !domain.bytes().all(domain_byte) {
        return Err(format!("policy domain {:?}", d.policy_domain));
    }
    let day = Day::parse(&d.date).ok_or_else(|| format!("date {:?}", d.date))?;
    if d.policies.len() > MAX_POLICIES {
        return Err(format!("more than {MAX_POLICIES} policies"));
    }
    let policies = d
        .policies
        .iter()
        .map(policy_from_pb)
        .collect::<Result<_, _>>()?;
    let aggregate = DayAggregate::from_stored(&StoredDay { policies });
    Ok((domain, day, aggregate))
}

fn domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

fn strings(list: &[String], what: &str) -> Result<Vec<String>, String> {
    if list.len() > MAX_STRINGS || list.iter().any(|s| s.len() > MAX_STRING_BYTES) {
        return Err(format!(
            "{what}: at most {MAX_STRINGS} of {MAX_STRING_BYTES} bytes"
        ));
    }
    Ok(list.to_vec())
}

fn optional_ip(text: &str) -> Result<Option<IpAddr>, String> {
    match text {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| format!("address {t:?}")),
    }
}

fn policy_from_pb(p: &pb::TlsrptPolicy) -> Result<StoredPolicy, String> {
    let policy_type = PolicyType::parse(&p.policy_type)
        .ok_or_else(|| format!("policy type {:?}", p.policy_type))?;
    if p.failure_details.len() > MAX_FAILURE_DETAILS {
        return Err(format!("more than {MAX_FAILURE_DETAILS} failure details"));
    }
    let mut details = Vec::with_capacity(p.failure_details.len());
    for f in &p.failure_details {
        let result_type = ResultType::parse(&f.result_type)
            .ok_or_else(|| format!("result type {:?}", f.result_type))?;
        let mx = &f.receiving_mx_hostname;
        if mx.len() > 253 || !mx.bytes().all(domain_byte) {
            return Err(format!("receiving MX host {mx:?}"));
        }
        details.push(StoredFailure {
            key: FailureKey {
                result_type,
                sending_ip: optional_ip(&f.sending_mta_ip)?,
                mx_host: (!mx.is_empty()).then(|| mx.clone()),
                receiving_ip: optional_ip(&f.receiving_ip)?,
            },
            count: f.failed_session_count,
        });
    }
    Ok(StoredPolicy {
        policy: PolicyRef {
            policy_type,
            strings: strings(&p.policy_string, "policy strings")?,
            mx_hosts: strings(&p.mx_host, "mx hosts")?,
        },
        successes: p.total_successful_session_count,
        failures: p.total_failure_session_count,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_round_trips_and_bad_fields_are_refused() {
        let mut agg = DayAggregate::default();
        agg.add(&osgate_core::tlsrpt::SessionResult {
            policy_domain: "example.net".into(),
            policy: PolicyRef {
                policy_type: PolicyType::Tlsa,
                strings: vec!["3 1 1 AB".into()],
                mx_hosts: vec![],
            },
            mx_host: Some("mx.example.net".into()),
            receiving_ip: "192.0.2.1".parse().ok(),
            sending_ip: None,
            failure: Some(ResultType::TlsaInvalid),
            at: 0,
        });
        let wire = to_pb("example.net", Day(0), &agg);
        assert_eq!(from_pb(&wire), Ok(("example.net".into(), Day(0), agg)));
        let mut bad = wire.clone();
        bad.policies[0].failure_details[0].result_type = "certificate-revoked".into();
        assert!(from_pb(&bad).is_err());
        let mut bad = wire.clone();
        bad.policy_domain = "exa mple.net".into();
        assert!(from_pb(&bad).is_err());
        let mut bad = wire.clone();
        bad.date = "2026-02-30".into();
        assert!(from_pb(&bad).is_err());
        let mut bad = wire;
        bad.policies[0].failure_details[0].receiving_ip = "not-an-ip".into();
        assert!(from_pb(&bad).is_err());
    }
}
