use std::net::{IpAddr, Ipv4Addr};

use osgate_core::tlsrpt::{Day, PolicyRef, ReportMeta, ResultType, SessionResult};

use super::*;

const DAY: u64 = 1_796_083_200; // 2026-12-01T00:00:00Z

fn session(domain: &str, failure: Option<ResultType>, at: u64) -> SessionResult {
    SessionResult {
        policy_domain: domain.into(),
        policy: PolicyRef::none_found(),
        mx_host: Some(format!("mx.{domain}")),
        receiving_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25))),
        sending_ip: None,
        failure,
        at,
    }
}

fn meta() -> ReportMeta {
    ReportMeta {
        organization: "node.example".into(),
        contact: "postmaster@node.example".into(),
    }
}

fn summary(report: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(report).unwrap();
    let s = &v["policies"][0]["summary"];
    (
        s["total-successful-session-count"].as_u64().unwrap(),
        s["total-failure-session-count"].as_u64().unwrap(),
    )
}

#[test]
fn counts_reach_the_report_through_the_day_file_and_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let dir = Recorder::folder(state.path());
    let recorder = Recorder::open(dir.clone(), KEEP_DAYS, DAY);
    recorder.record(session("Example.NET.", None, DAY + 1));
    recorder.record(session(
        "example.net",
        Some(ResultType::StarttlsNotSupported),
        DAY + 2,
    ));
    recorder.record(session("other.example", None, DAY + 3));
    assert!(
        !files::path(&dir, Day::of_unix(DAY)).exists(),
        "no write per session"
    );
    recorder.flush(DAY + 4);
    let report = cli::report(state.path(), "example.net", "2026-12-01", &meta()).unwrap();
    assert_eq!(summary(&report), (1, 1));

    drop(recorder);
    let again = Recorder::open(dir, KEEP_DAYS, DAY + 5);
    again.record(session("example.net", None, DAY + 6));
    again.flush(DAY + 7);
    let report = cli::report(state.path(), "EXAMPLE.net", "2026-12-01", &meta()).unwrap();
    assert_eq!(summary(&report), (2, 1), "the restart continued the day");
    let other = cli::report(state.path(), "none.example", "2026-12-01", &meta()).unwrap();
    assert!(other.contains("\"policies\": []"), "{other}");
}

#[test]
fn days_past_the_retention_are_removed() {
    let state = tempfile::tempdir().unwrap();
    let dir = Recorder::folder(state.path());
    let recorder = Recorder::open(dir.clone(), 2, DAY);
    recorder.record(session("example.net", None, DAY));
    recorder.flush(DAY);
    let old = files::path(&dir, Day::of_unix(DAY));
    assert!(old.exists());
    recorder.flush(DAY + 2 * 86_400);
    assert!(old.exists(), "two days later it is still kept");
    recorder.flush(DAY + 3 * 86_400);
    assert!(!old.exists());
}

#[test]
fn a_clock_step_back_merges_the_older_file_instead_of_writing_over_it() {
    let state = tempfile::tempdir().unwrap();
    let dir = Recorder::folder(state.path());
    let first = Recorder::open(dir.clone(), KEEP_DAYS, DAY);
    first.record(session("example.net", None, DAY));
    first.flush(DAY);
    drop(first);
    // Started three days later: 2026-12-01 is not loaded.
    let later = Recorder::open(dir, KEEP_DAYS, DAY + 3 * 86_400);
    later.record(session("example.net", None, DAY + 60));
    later.flush(DAY + 3 * 86_400);
    let report = cli::report(state.path(), "example.net", "2026-12-01", &meta()).unwrap();
    assert_eq!(summary(&report), (2, 0));
}

#[test]
fn pending_days_stay_until_accepted_at_the_version_sent() {
    let state = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(Recorder::folder(state.path()), KEEP_DAYS, DAY);
    recorder.record(session("a.example", None, DAY));
    recorder.record(session("b.example", None, DAY));
    let sent = recorder.pending(10);
    assert_eq!(sent.len(), 2);
    // Counted again after it was taken: the acceptance of the old version does not clear it.
    recorder.record(session("a.example", None, DAY));
    let acks: Vec<_> = sent
        .iter()
        .map(|p| (p.day, p.domain.clone(), p.version))
        .collect();
    recorder.accepted(&acks);
    let left = recorder.pending(10);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].domain, "a.example");
    assert_eq!(
        left[0]
            .aggregate
            .policies
            .values()
            .next()
            .unwrap()
            .successes,
        2
    );
    assert_eq!(recorder.pending(0).len(), 0);
}

#[test]
fn a_day_no_longer_in_memory_is_sent_from_its_file() {
    let state = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(Recorder::folder(state.path()), KEEP_DAYS, DAY);
    recorder.record(session("a.example", Some(ResultType::DaneRequired), DAY));
    recorder.flush(DAY + 5 * 86_400);
    let sent = recorder.pending(10);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].aggregate.policies.values().next().unwrap().failures,
        1
    );
}

#[test]
fn an_unreadable_day_file_is_not_written_over() {
    let state = tempfile::tempdir().unwrap();
    let dir = Recorder::folder(state.path());
    std::fs::create_dir_all(&dir).unwrap();
    let path = files::path(&dir, Day::of_unix(DAY));
    std::fs::write(&path, b"{not json").unwrap();
    let recorder = Recorder::open(dir, KEEP_DAYS, DAY);
    recorder.record(session("a.example", None, DAY));
    recorder.flush(DAY);
    assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    let e = cli::report(state.path(), "a.example", "2026-12-01", &meta()).unwrap_err();
    assert!(e.contains("2026-12-01.json"), "{e}");
}

#[test]
fn a_day_counts_a_bounded_number_of_domains() {
    let state = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(Recorder::folder(state.path()), KEEP_DAYS, DAY);
    for i in 0..=MAX_DOMAINS_PER_DAY {
        recorder.record(session(&format!("d{i}.example"), None, DAY));
    }
    recorder.record(session("d0.example", None, DAY));
    let pending = recorder.pending(usize::MAX);
    assert_eq!(pending.len(), MAX_DOMAINS_PER_DAY);
    let first = pending.iter().find(|p| p.domain == "d0.example").unwrap();
    assert_eq!(
        first.aggregate.policies.values().next().unwrap().successes,
        2,
        "a domain already counted still is"
    );
}
