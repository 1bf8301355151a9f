//! TLS-RPT: reports checked against the RFC 8460 schema (deploy/tlsrpt, with Debian's
//! python3-jsonschema), and node day files written as a node writes them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn validator() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tlsrpt/validate.py")
}

/// `None` when `report` validates; else what the validator said.
pub fn schema_errors(report: &str) -> Option<String> {
    let mut child = Command::new("python3")
        .arg(validator())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), report.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "the validator did not run: {stderr}"
    );
    (!out.status.success()).then_some(stderr)
}

/// Fails the test unless `report` validates against the RFC 8460 schema.
pub fn assert_valid(report: &str) {
    if let Some(errors) = schema_errors(report) {
        panic!("not a valid RFC 8460 report: {errors}\n{report}");
    }
}

/// One policy of a day file: `successes`, and `failures` of `result_type` at `mx`.
pub fn sts_policy(successes: u64, failures: u64, result_type: &str, mx: &str) -> Value {
    json!({
        "policy": {
            "policy_type": "sts",
            "strings": ["version: STSv1", "mode: enforce", "mx: *.example.net", "max_age: 86400"],
            "mx_hosts": ["*.example.net"],
        },
        "successes": successes,
        "failures": failures,
        "details": [{
            "result_type": result_type,
            "sending_ip": "198.51.100.1",
            "mx_host": mx,
            "receiving_ip": "192.0.2.25",
            "count": failures,
        }],
    })
}

/// Writes `<state>/tlsrpt/<date>.json` holding `domains` (domain → policies).
pub fn write_day(state: &Path, date: &str, domains: &[(&str, Vec<Value>)]) {
    let domains: Vec<Value> = domains
        .iter()
        .map(|(domain, policies)| json!({ "domain": domain, "policies": policies }))
        .collect();
    let file = json!({ "version": 1, "day": date, "domains": domains });
    let dir = state.join("tlsrpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{date}.json")), file.to_string()).unwrap();
}

/// The (successes, failures) of the report's first policy.
pub fn summary(report: &Value) -> (u64, u64) {
    let s = &report["policies"][0]["summary"];
    (
        s["total-successful-session-count"].as_u64().unwrap(),
        s["total-failure-session-count"].as_u64().unwrap(),
    )
}
