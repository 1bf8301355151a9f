//! Reconnect delays: exponential, capped, with full jitter, so a control plane restart with
//! many nodes connected sees their reconnects spread out, not at once (CONFORMANCE G.46).

use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest the next delay can be.
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap)
    }

    /// The next delay: a `fraction` (uniform in [0, 1)) of the capped exponential ceiling.
    pub fn next_delay(&mut self, fraction: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_are_spread_by_the_fraction() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(ceilings[5], Duration::from_secs(1));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(500));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
    }
}
