//! The pause between two attempts of a delivery: exponential, capped, with jitter.
//!
//! A pure function of the attempt number and a random draw, so the schedule is
//! table-tested; the sender draws the randomness. The exponential part is
//! [`haven_proto::Backoff`]'s; a delivery keeps half of it ("equal jitter") so a
//! receiver that is down is not hit again at once.

use std::time::Duration;

use haven_proto::Backoff;

/// Pause after the first failed attempt, before jitter; doubled after each further
/// one.
pub(super) const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest pause, before jitter.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(300);

/// The pause after failed attempt `attempt` (1 for the first), given `jitter` drawn
/// uniformly from [0, 1): between half and all of `FIRST_DELAY × 2^(attempt-1)`
/// (capped at [`MAX_DELAY`]). Half is kept so a receiver that is down is not hit
/// again at once; the random half spreads the retries of several coordinators and
/// webhooks that failed together.
pub(super) fn delay(attempt: u32, jitter: f64) -> Duration {
    let full = SCHEDULE.ceiling(attempt);
    full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// The control plane's one exponential schedule, with this module's bounds.
const SCHEDULE: Backoff = Backoff {
    first: FIRST_DELAY,
    max: MAX_DELAY,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_the_cap_and_jitter_spreads_its_upper_half() {
        let ms = |attempt, jitter| delay(attempt, jitter).as_millis();
        // (attempt, jitter, expected ms)
        let cases = [
            (1, 0.0, 500),
            (1, 0.5, 750),
            (2, 0.0, 1000),
            (3, 0.999, 3998),
            (4, 1.0, 8000),
            (9, 0.0, 128_000),
            // 2^9 s is past the cap.
            (10, 0.0, 150_000),
            (10, 1.0, 300_000),
            (u32::MAX, 0.0, 150_000),
            // A draw out of range counts as its nearest bound.
            (1, -1.0, 500),
            (1, 7.0, 1000),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                ms(attempt, jitter),
                expected,
                "attempt {attempt}, jitter {jitter}"
            );
        }
        let total: Duration = (1..8).map(|attempt| delay(attempt, 1.0)).sum();
        assert_eq!(
            total,
            Duration::from_secs(127),
            "pauses of 8 attempts, at most"
        );
    }
}
