//! Outcome counts since the last report to the control plane, by direction, achieved level,
//! method and reason. Labels are static strings, so the table stays small whatever the
//! traffic; a report takes the counts, and a failed report puts them back.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use osgate_core::outcome::Outcome;

pub type Key = (&'static str, &'static str, &'static str, &'static str);

static PENDING: Mutex<BTreeMap<Key, u64>> = Mutex::new(BTreeMap::new());

/// Counts one connection.
pub fn count(outcome: &Outcome) {
    let key = (
        outcome.direction.as_str(),
        outcome.achieved.as_str(),
        outcome.achieved.method_str(),
        outcome.reason.as_str(),
    );
    *PENDING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_default() += 1;
}

/// The counts since the last call.
pub fn take() -> BTreeMap<Key, u64> {
    std::mem::take(&mut *PENDING.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Puts back counts a report could not deliver.
pub fn restore(counts: BTreeMap<Key, u64>) {
    let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    for (key, n) in counts {
        *pending.entry(key).or_default() += n;
    }
}
