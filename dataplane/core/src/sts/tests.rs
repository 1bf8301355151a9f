#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::http::{HttpError, parse_response};
use super::*;
use proptest::prelude::*;

fn txt(records: &[&str]) -> Txt {
    parse_txt(&records.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>())
}

#[test]
fn the_rfc_txt_record_and_its_variants_are_read() {
    // RFC 8461 §3.1's example.
    assert_eq!(
        txt(&["v=STSv1; id=20160831085700Z;"]),
        Txt::Id("20160831085700Z".into())
    );
    assert_eq!(txt(&["v=STSv1;id=abc"]), Txt::Id("abc".into()));
    assert_eq!(
        txt(&["v=STSv1 ;\tid=abc ; ext=x.y "]),
        Txt::Id("abc".into())
    );
    // Other TXT records at the name are discarded before counting.
    assert_eq!(txt(&["v=spf1 -all", "v=STSv1; id=1"]), Txt::Id("1".into()));
}

#[test]
fn not_exactly_one_valid_txt_record_is_no_policy() {
    for records in [
        &[][..],
        &["v=STSv1; id=1;", "v=STSv1; id=2;"][..],
        &["v=STSv1; id=1;", "v=STSv1; id=1;"][..],
        &["v=STSv1;"][..],
        &["v=STSv1"][..],
        &["v=STSv1; id=;"][..],
        &["v=STSv1; id=a-b;"][..],
        &["v=STSv1; id=123456789012345678901234567890123"][..],
        &["v=STSv1; id=1; id=2"][..],
        &["v=STSv1; ext=1"][..],
        &["v=STSv1; id=1;;"][..],
        &["v=STSv1; id=1; ext=a b"][..],
        &["v=STSv10; id=1"][..],
        &["V=STSv1; id=1"][..],
        &[" v=STSv1; id=1"][..],
        &["v=STSv1; ID=1"][..],
    ] {
        assert_eq!(txt(records), Txt::Absent, "{records:?}");
    }
}

const RFC_POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

#[test]
fn the_rfc_policy_is_read_with_crlf_or_lf() {
    let expected = PolicyBody {
        mode: Mode::Enforce,
        mx: vec![
            "mail.example.com".into(),
            "*.example.net".into(),
            "backupmx.example.com".into(),
        ],
        max_age: 604_800,
    };
    assert_eq!(parse_policy(RFC_POLICY.as_bytes()), Ok(expected.clone()));
    let lf = RFC_POLICY.replace("\r\n", "\n");
    assert_eq!(parse_policy(lf.as_bytes()), Ok(expected.clone()));
    let unterminated = lf.trim_end();
    assert_eq!(parse_policy(unterminated.as_bytes()), Ok(expected));
}

#[test]
fn unknown_fields_are_ignored_and_limits_hold() {
    let policy = "version: STSv1\nmode: testing\nfoo_bar: anything at all\nmx: MX.Example.NET\nmax_age: 99999999999\n";
    let err = parse_policy(policy.as_bytes()).unwrap_err();
    assert_eq!(err, PolicyError::BadValue("max_age"));
    let policy = policy.replace("99999999999", "9999999999");
    let body = parse_policy(policy.as_bytes()).unwrap();
    assert_eq!(body.max_age, MAX_AGE_LIMIT, "capped at a year");
    assert_eq!(body.mx, ["mx.example.net"]);
    assert_eq!(body.mode, Mode::Testing);
    let none = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
    assert_eq!((none.mode, none.mx.len()), (Mode::None, 0));
    let mut big = RFC_POLICY.to_owned();
    while big.len() <= POLICY_SIZE_LIMIT {
        big.push_str("x: padding\n");
    }
    assert_eq!(parse_policy(big.as_bytes()), Err(PolicyError::TooLarge));
}

#[test]
fn malformed_policies_are_invalid() {
    use PolicyError::{BadValue, Duplicate, Missing, NotUtf8, Syntax};
    let good = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n";
    assert!(parse_policy(good.as_bytes()).is_ok());
    let cases = [
        (
            "mode: enforce\nmx: a.example\nmax_age: 1\n",
            Missing("version"),
        ),
        (
            "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            BadValue("version"),
        ),
        (
            "version: STSv1\nmx: a.example\nmax_age: 1\n",
            Missing("mode"),
        ),
        (
            "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
            BadValue("mode"),
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", Missing("mx")),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\n",
            Missing("max_age"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
            BadValue("max_age"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nmax_age: 2\n",
            Duplicate("max_age"),
        ),
        (
            "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n",
            Duplicate("mode"),
        ),
        (
            "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            Duplicate("version"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
            BadValue("mx"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
            BadValue("mx"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n",
            BadValue("mx"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nthis is html\n",
            Syntax("no `:`"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n_x: y\n",
            Syntax("a field name"),
        ),
        (
            "version: STSv1\nmode: enforce\nmx:\nmax_age: 1\n",
            Syntax("an empty value or a control character"),
        ),
        ("<html><body>hello</body></html>", Syntax("no `:`")),
    ];
    for (bad, expected) in cases {
        assert_eq!(parse_policy(bad.as_bytes()), Err(expected), "{bad:?}");
    }
    let not_utf8 = b"version: STSv1\nmode: enforce\nmx: a\xff\nmax_age: 1\n";
    assert_eq!(parse_policy(not_utf8), Err(NotUtf8));
}

fn policy(id: &str, mx: &[&str], fetched_at: u64, max_age: u64) -> Policy {
    Policy {
        id: id.into(),
        mode: Mode::Enforce,
        mx: mx.iter().map(|m| (*m).to_owned()).collect(),
        max_age,
        fetched_at,
    }
}

/// Hosts and patterns over the labels a, b: every one of up to three labels.
fn names() -> Vec<String> {
    let mut out: Vec<String> = vec!["a".into(), "b".into()];
    for _ in 0..2 {
        let longer: Vec<String> = out
            .iter()
            .flat_map(|n| ["a", "b"].map(|l| format!("{l}.{n}")))
            .collect();
        out.extend(longer);
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn mx_patterns_match_exactly_or_one_label_under_a_wildcard() {
    let names = names();
    for pattern in names
        .iter()
        .cloned()
        .chain(names.iter().map(|n| format!("*.{n}")))
    {
        let p = policy("1", &[&pattern], 0, 1);
        for host in &names {
            let expected = match pattern.strip_prefix("*.") {
                Some(parent) => {
                    let labels: Vec<&str> = host.split('.').collect();
                    labels.len() == parent.split('.').count() + 1 && labels[1..].join(".") == parent
                }
                None => pattern == *host,
            };
            assert_eq!(p.matches_mx(host), expected, "{pattern} vs {host}");
            let upper = format!("{}.", host.to_ascii_uppercase());
            assert_eq!(p.matches_mx(&upper), expected, "{pattern} vs {upper}");
        }
    }
    // RFC 8461 §4.1's example.
    let p = policy("1", &["*.example.com"], 0, 1);
    assert!(p.matches_mx("mail.example.com"));
    assert!(!p.matches_mx("example.com"));
    assert!(!p.matches_mx("foo.bar.example.com"));
    assert!(!p.matches_mx(".example.com"));
}

#[test]
fn the_cache_rule_over_every_small_case() {
    let now = 1000;
    let fresh_same = policy("a", &["mx"], 900, 200);
    let fresh_other = policy("b", &["mx"], 900, 200);
    let expired_same = policy("a", &["mx"], 100, 200);
    let cached = |p: &Policy| Step::Done(StsLookup::Policy(p.clone(), Source::Cached));
    let fetch = |fallback: Option<&Policy>| Step::Fetch {
        id: "a".into(),
        fallback: fallback.cloned(),
    };
    let id = Txt::Id("a".into());
    let cases = [
        (None, &id, fetch(None)),
        (None, &Txt::Absent, Step::Done(StsLookup::NoPolicy)),
        (
            None,
            &Txt::LookupFailed,
            Step::Done(StsLookup::Failed(Reason::StsPolicyFetchError)),
        ),
        (Some(&fresh_same), &id, cached(&fresh_same)),
        (Some(&fresh_same), &Txt::Absent, cached(&fresh_same)),
        (Some(&fresh_same), &Txt::LookupFailed, cached(&fresh_same)),
        (Some(&fresh_other), &id, fetch(Some(&fresh_other))),
        (Some(&fresh_other), &Txt::Absent, cached(&fresh_other)),
        (Some(&expired_same), &id, fetch(None)),
        (
            Some(&expired_same),
            &Txt::Absent,
            Step::Done(StsLookup::NoPolicy),
        ),
    ];
    for (cache, answer, expected) in cases {
        assert_eq!(step(cache, answer, now), expected, "{cache:?} {answer:?}");
    }
    // The policy expires at fetched_at + max_age exactly.
    assert!(policy("a", &[], 0, 10).is_fresh(9));
    assert!(!policy("a", &[], 0, 10).is_fresh(10));
}

#[test]
fn a_failed_fetch_keeps_a_fresh_cached_policy_and_reports_why() {
    let body = parse_policy(RFC_POLICY.as_bytes()).unwrap();
    let old = policy("old", &["mx"], 0, 100);
    let fresh = after_fetch("new".into(), Some(old.clone()), Ok(body.clone()), 50);
    assert_eq!(
        fresh,
        StsLookup::Policy(body.into_policy("new".into(), 50), Source::Fresh)
    );
    for reason in [
        Reason::StsPolicyFetchError,
        Reason::StsPolicyInvalid,
        Reason::StsWebpkiInvalid,
    ] {
        let kept = after_fetch("new".into(), Some(old.clone()), Err(reason), 50);
        assert_eq!(
            kept,
            StsLookup::Policy(old.clone(), Source::CachedAfterFailure(reason))
        );
        assert_eq!(
            after_fetch("new".into(), None, Err(reason), 50),
            StsLookup::Failed(reason)
        );
    }
}

fn response(head: &str, body: &str) -> Vec<u8> {
    format!("{head}\r\n\r\n{body}").into_bytes()
}

#[test]
fn http_responses_give_a_policy_only_from_a_200_text_plain() {
    let ok = "HTTP/1.0 200 ok\r\nContent-type: text/plain";
    assert_eq!(parse_response(&response(ok, "x")).unwrap(), b"x");
    let charset = "HTTP/1.1 200 OK\r\nContent-Type: Text/Plain; charset=utf-8\r\nContent-Length: 2";
    assert_eq!(parse_response(&response(charset, "abcd")).unwrap(), b"ab");
    let chunked = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked";
    let body = "3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    assert_eq!(parse_response(&response(chunked, body)).unwrap(), b"abcde");
    for (head, err) in [
        (
            "HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Type: text/plain",
            HttpError::Redirect(301),
        ),
        (
            "HTTP/1.1 307 Temporary\r\nContent-Type: text/plain",
            HttpError::Redirect(307),
        ),
        (
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain",
            HttpError::Status(404),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/html",
            HttpError::ContentType("text/html".into()),
        ),
        ("HTTP/1.1 200 OK", HttpError::ContentType(String::new())),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9",
            HttpError::Malformed("body shorter than Content-Length"),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99999",
            HttpError::TooLarge,
        ),
        (
            "HTTP/2 200\r\nContent-Type: text/plain",
            HttpError::Malformed("status line"),
        ),
    ] {
        assert_eq!(parse_response(&response(head, "x")), Err(err), "{head}");
    }
    assert_eq!(
        HttpError::ContentType(String::new()).reason(),
        Reason::StsPolicyInvalid
    );
    assert_eq!(
        HttpError::Redirect(301).reason(),
        Reason::StsPolicyFetchError
    );
    let big = "x".repeat(POLICY_SIZE_LIMIT + 1);
    assert_eq!(
        parse_response(&response(ok, &big)),
        Err(HttpError::TooLarge)
    );
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
}

fn arb_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn arb_body() -> impl Strategy<Value = PolicyBody> {
    let mode = prop_oneof![Just(Mode::Enforce), Just(Mode::Testing)];
    let mx = prop::collection::vec(
        (any::<bool>(), prop::collection::vec(arb_label(), 1..4)).prop_map(|(wild, labels)| {
            format!("{}{}", if wild { "*." } else { "" }, labels.join("."))
        }),
        1..5,
    );
    (mode, mx, 0..=MAX_AGE_LIMIT).prop_map(|(mode, mx, max_age)| PolicyBody { mode, mx, max_age })
}

proptest! {
    #[test]
    fn policies_survive_the_cache_file(body in arb_body(), id in "[A-Za-z0-9]{1,32}", at in any::<u32>()) {
        let policy = body.into_policy(id, u64::from(at));
        prop_assert_eq!(Policy::from_cache(&policy.to_cache()), Some(policy));
    }

    #[test]
    fn rendered_policies_parse_back_whatever_the_line_ends(body in arb_body(), crlf in any::<bool>(), extra in "[a-z]{1,8}") {
        let policy = body.clone().into_policy("x".into(), 0);
        let cache = policy.to_cache();
        let text: String = cache.split_once("version").map(|(_, r)| format!("version{r}")).unwrap_or_default();
        let text = text.replace('\n', &format!("\nx{extra}: ignored\n"));
        let text = if crlf { text.replace('\n', "\r\n") } else { text };
        prop_assert_eq!(parse_policy(text.as_bytes()), Ok(body));
    }

    #[test]
    fn one_valid_record_among_others_gives_its_id(id in "[A-Za-z0-9]{1,32}", others in prop::collection::vec("[ -~]{0,20}", 0..3)) {
        let mut records: Vec<String> = others.into_iter().filter(|o| !o.starts_with("v=STSv1")).collect();
        records.push(format!("v=STSv1; id={id};"));
        prop_assert_eq!(parse_txt(&records), Txt::Id(id));
    }

    #[test]
    fn parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_policy(&data);
        let _ = parse_response(&data);
        let _ = parse_txt(&[String::from_utf8_lossy(&data).into_owned()]);
        let _ = Policy::from_cache(&String::from_utf8_lossy(&data));
    }
}

mod requirement {
    use super::super::*;

    fn policy(mode: Mode) -> StsLookup {
        let policy = Policy {
            id: "20261201".into(),
            mode,
            mx: vec!["mx1.example.net".into(), "*.backup.example.net".into()],
            max_age: 86_400,
            fetched_at: 0,
        };
        StsLookup::Policy(policy, Source::Fresh)
    }

    /// Every mode × match × DANE × lookup kind: DANE and `none` ask nothing; `enforce` asks
    /// PKIX of a matching host and refuses the others; `testing` only reports.
    #[test]
    fn each_mode_asks_what_rfc_8461_says() {
        let hosts = [
            "mx1.example.net",
            "a.backup.example.net",
            "evil.example.org",
        ];
        for mode in [Mode::Enforce, Mode::Testing, Mode::None] {
            for host in hosts {
                for dane in [false, true] {
                    let got = requirement(&policy(mode), "example.net", host, dane);
                    let matches = host != "evil.example.org";
                    match (mode, dane, matches) {
                        (Mode::None, ..) | (_, true, _) => assert_eq!(got, Requirement::None),
                        (Mode::Enforce, false, false) => assert_eq!(got, Requirement::MxMismatch),
                        (Mode::Testing, false, false) => assert_eq!(
                            got,
                            Requirement::ReportMxMismatch(
                                "sts:example.net:20261201:testing".into()
                            )
                        ),
                        (_, false, true) => {
                            let Requirement::Pkix(rule) = got else {
                                panic!("{got:?}")
                            };
                            assert_eq!(rule.level, crate::policy::Level::Authenticate);
                            assert_eq!(rule.methods, [crate::outcome::Method::Pkix]);
                            assert_eq!(rule.report_only, mode == Mode::Testing);
                            assert!(!rule.allow_cleartext_fallback);
                        }
                    }
                }
            }
        }
        for lookup in [
            StsLookup::NoPolicy,
            StsLookup::Failed(Reason::StsPolicyFetchError),
        ] {
            assert_eq!(
                requirement(&lookup, "example.net", "mx1.example.net", false),
                Requirement::None
            );
        }
    }
}

#[test]
fn the_discovery_failure_to_report_survives_a_cached_policy() {
    let kept = StsLookup::Policy(
        policy("7", &[], 0, 10),
        Source::CachedAfterFailure(Reason::StsWebpkiInvalid),
    );
    assert_eq!(kept.failure(), Some(Reason::StsWebpkiInvalid));
    let fresh = StsLookup::Policy(policy("7", &[], 0, 10), Source::Fresh);
    assert_eq!(fresh.failure(), None);
    assert_eq!(StsLookup::NoPolicy.failure(), None);
    let failed = StsLookup::Failed(Reason::StsPolicyFetchError);
    assert_eq!(failed.failure(), Some(Reason::StsPolicyFetchError));
}
