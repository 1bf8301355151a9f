//! CONFORMANCE A.6: the first-byte classifiers never panic, read a bounded prefix, and are
//! monotone (once decided, longer inputs keep the answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osgate_core::detect::{Detection, MAX_PEEK, classify_client_hello, classify_server_flight};

fuzz_target!(|data: &[u8]| {
    for classify in [classify_client_hello, classify_server_flight] {
        let full = classify(data);
        let mut decided = None;
        for cut in 0..=data.len().min(MAX_PEEK + 1) {
            let verdict = classify(&data[..cut]);
            match decided {
                Some(first) => assert_eq!(verdict, first),
                None if verdict != Detection::NeedMore => decided = Some(verdict),
                None => {}
            }
        }
        if let Some(first) = decided {
            assert_eq!(full, first);
        }
        if data.len() >= MAX_PEEK {
            assert_ne!(full, Detection::NeedMore);
        }
    }
});
