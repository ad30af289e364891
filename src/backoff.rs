//! Restart backoff (DESIGN 4.3): `restart_delay`, doubling per consecutive failure,
//! capped at `max_restart_delay`, with ±jitter so a fleet of crashing servers does
//! not restart in lockstep. Pure: the random unit is passed in.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Fraction of the delay to vary by, e.g. 0.1 for ±10 %.
    pub jitter: f64,
}

impl BackoffPolicy {
    /// The delay before restart number `attempt` (1 for the first restart).
    /// `unit` is a random number in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self.initial.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        let factor = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

/// A small, fast random source for jitter (xorshift64*), seeded from the clock and
/// the pid: jitter needs spread, not unpredictability.
pub struct Jitter(u64);

impl Jitter {
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// The next number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.1,
    };

    #[test]
    fn doubles_from_the_first_step_up_to_the_cap() {
        let no_jitter: Vec<u64> = (1..=9).map(|a| POLICY.delay(a, 0.5).as_secs()).collect();
        assert_eq!(no_jitter, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(POLICY.delay(u32::MAX, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(POLICY.delay(3, 0.0), Duration::from_millis(3600));
        assert_eq!(POLICY.delay(3, 1.0), Duration::from_millis(4400));
        let mut j = Jitter::from_entropy();
        for _ in 0..1000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u));
            let d = POLICY.delay(2, u);
            assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        }
    }
}
