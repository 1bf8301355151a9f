//! The MTA-STS parsers (RFC 8461 §3.1, §3.2, §3.3) never panic on hostile DNS or HTTPS
//! input, and a policy they accept survives the node's cache file unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osgate_core::sts::{self, Policy, http};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let records: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if let sts::Txt::Id(id) = sts::parse_txt(&records) {
        assert!(!id.is_empty() && id.len() <= 32);
    }
    if let Ok(body) = sts::parse_policy(data) {
        assert!(body.max_age <= sts::MAX_AGE_LIMIT);
        let policy = body.into_policy("fuzz".into(), 0);
        assert_eq!(Policy::from_cache(&policy.to_cache()), Some(policy));
    }
    if let Ok(body) = http::parse_response(data) {
        assert!(body.len() <= sts::POLICY_SIZE_LIMIT);
    }
});
