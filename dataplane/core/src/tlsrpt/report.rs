//! The RFC 8460 §4.4 JSON report of one policy domain and day.
//!
//! Field names and nesting are those of §4.4 Figure 1. Members osgate cannot know (the
//! `receiving-mx-helo`, `additional-information`, `failure-reason-code`) are left out, as are
//! addresses and host names of sessions that failed before a connection (an MTA-STS policy
//! that could not be fetched has no receiving IP).

use serde::Serialize;

use super::{Day, DayAggregate, FailureKey, PolicyRef};

/// Who the report is from (§4.4 `organization-name`, `contact-info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportMeta {
    pub organization: String,
    pub contact: String,
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(rename = "organization-name")]
    organization: &'a str,
    #[serde(rename = "date-range")]
    date_range: DateRange,
    #[serde(rename = "contact-info")]
    contact: &'a str,
    #[serde(rename = "report-id")]
    report_id: String,
    policies: Vec<PolicyEntry<'a>>,
}

#[derive(Serialize)]
struct DateRange {
    #[serde(rename = "start-datetime")]
    start: String,
    #[serde(rename = "end-datetime")]
    end: String,
}

#[derive(Serialize)]
struct PolicyEntry<'a> {
    policy: Policy<'a>,
    summary: Summary,
    #[serde(rename = "failure-details")]
    failure_details: Vec<Failure<'a>>,
}

#[derive(Serialize)]
struct Policy<'a> {
    #[serde(rename = "policy-type")]
    policy_type: &'static str,
    #[serde(rename = "policy-string", skip_serializing_if = "<[_]>::is_empty")]
    strings: &'a [String],
    #[serde(rename = "policy-domain")]
    domain: &'a str,
    #[serde(rename = "mx-host", skip_serializing_if = "<[_]>::is_empty")]
    mx_hosts: &'a [String],
}

#[derive(Serialize)]
struct Summary {
    #[serde(rename = "total-successful-session-count")]
    successes: u64,
    #[serde(rename = "total-failure-session-count")]
    failures: u64,
}

#[derive(Serialize)]
struct Failure<'a> {
    #[serde(rename = "result-type")]
    result_type: &'static str,
    #[serde(rename = "sending-mta-ip", skip_serializing_if = "Option::is_none")]
    sending_ip: Option<String>,
    #[serde(
        rename = "receiving-mx-hostname",
        skip_serializing_if = "Option::is_none"
    )]
    mx_host: Option<&'a str>,
    #[serde(rename = "receiving-ip", skip_serializing_if = "Option::is_none")]
    receiving_ip: Option<String>,
    #[serde(rename = "failed-session-count")]
    count: u64,
}

fn failure(key: &FailureKey, count: u64) -> Failure<'_> {
    Failure {
        result_type: key.result_type.as_str(),
        sending_ip: key.sending_ip.map(|ip| ip.to_string()),
        mx_host: key.mx_host.as_deref(),
        receiving_ip: key.receiving_ip.map(|ip| ip.to_string()),
        count,
    }
}

fn policy<'a>(domain: &'a str, p: &'a PolicyRef) -> Policy<'a> {
    Policy {
        policy_type: p.policy_type.as_str(),
        strings: &p.strings,
        domain,
        mx_hosts: &p.mx_hosts,
    }
}

/// The report of `domain`'s sessions on `day`, pretty-printed, ending in a newline.
///
/// §4.4 `date-range`: RFC 3339 date-times; the day's bounds are `T00:00:00Z` and
/// `T23:59:59Z` (as in RFC 8460 Appendix B). `report-id` ("A unique identifier for the
/// report. Report authors may use whatever scheme they prefer") is the start, the domain and
/// the organization.
pub fn render(domain: &str, day: Day, aggregate: &DayAggregate, meta: &ReportMeta) -> String {
    let start = format!("{day}T00:00:00Z");
    let report = Report {
        organization: &meta.organization,
        report_id: format!("{start}_{domain}_{}", meta.organization),
        date_range: DateRange {
            start,
            end: format!("{day}T23:59:59Z"),
        },
        contact: &meta.contact,
        policies: aggregate
            .policies
            .iter()
            .map(|(p, tally)| PolicyEntry {
                policy: policy(domain, p),
                summary: Summary {
                    successes: tally.successes,
                    failures: tally.failures,
                },
                failure_details: tally.details.iter().map(|(k, c)| failure(k, *c)).collect(),
            })
            .collect(),
    };
    // Serializing these plain structs cannot fail; an empty object would fail the schema.
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}
