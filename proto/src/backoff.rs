//! Pauses between retries: exponential, capped, with full jitter.
//!
//! Every retry loop of the control plane (a job's next attempt, a worker's or the
//! CLI's calls to the coordinator, the coordinator's own store requests) waits with
//! this, so that thousands of workers cut off by the same failover do not come back
//! in lockstep. "Full jitter" (a pause drawn uniformly between zero and the capped
//! exponential) spreads retries best for the fewest total waits (Brooker, *Exponential
//! Backoff And Jitter*, AWS Architecture Blog, 2015).

use std::time::Duration;

/// An exponential schedule: `first` after the first failure, doubled after each
/// further one, never more than `max`, before jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the pause after the first failure.
    pub first: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling after failure `attempt` (1 for the first): `first × 2^(attempt-1)`,
    /// at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << exponent).min(self.max)
    }

    /// The pause after failure `attempt` given `jitter` drawn uniformly from [0, 1):
    /// that fraction of [`Backoff::ceiling`]. A pure function, so schedules are
    /// table-tested; [`Backoff::pause`] draws the jitter.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        self.ceiling(attempt).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The pause after failure `attempt`, with a fresh random jitter.
    pub fn pause(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_to_the_cap_and_jitter_picks_a_fraction_of_it() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let ms = |attempt, jitter| backoff.delay(attempt, jitter).as_millis();
        // (attempt, jitter, expected ms)
        let cases = [
            (0, 1.0, 100),
            (1, 1.0, 100),
            (1, 0.0, 0),
            (2, 0.5, 100),
            (3, 1.0, 400),
            (4, 0.25, 200),
            // 1.6 s is past the cap.
            (5, 1.0, 1000),
            (u32::MAX, 0.5, 500),
            // A draw out of range counts as its nearest bound.
            (2, -3.0, 0),
            (2, 9.0, 200),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                ms(attempt, jitter),
                expected,
                "attempt {attempt}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn drawn_pauses_stay_under_the_ceiling_and_differ() {
        let backoff = Backoff {
            first: Duration::from_secs(5),
            max: Duration::from_secs(300),
        };
        let pauses: Vec<Duration> = (0..64).map(|_| backoff.pause(3)).collect();
        assert!(pauses.iter().all(|pause| *pause <= backoff.ceiling(3)));
        let first = pauses[0];
        assert!(
            pauses.iter().any(|pause| *pause != first),
            "64 draws of one attempt must not all be equal (no lockstep)"
        );
    }
}
