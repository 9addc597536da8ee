//! A token bucket shared by every copy task of a replication run.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

/// Limits the bytes written per second across all tasks that share it.
///
/// Each write takes its size from the bucket even when that drives the balance negative,
/// then sleeps until the debt is paid back: the long-run rate is exact whatever the
/// object sizes, and at most one tenth of a second of traffic can burst.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        Self {
            bytes_per_second: rate,
            burst: rate / 10.0,
            state: Mutex::new(Bucket {
                tokens: rate / 10.0,
                refilled: Instant::now(),
            }),
        }
    }

    /// The rate, in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second as u64
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut bucket = self.state.lock().await;
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
            bucket.refilled = now;
            bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_second).min(self.burst);
            bucket.tokens -= bytes as f64;
            if bucket.tokens < 0.0 {
                Duration::from_secs_f64(-bucket.tokens / self.bytes_per_second)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses a rate such as `50M`, `800K`, `1.5G` or `1000000` (bytes per second; K, M, G
/// and T are powers of 1024, as in curl's and rsync's `--limit-rate`).
pub fn parse_rate(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, multiplier) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 1u64 << 10),
        (at, 'm' | 'M') => (&text[..at], 1 << 20),
        (at, 'g' | 'G') => (&text[..at], 1 << 30),
        (at, 't' | 'T') => (&text[..at], 1 << 40),
        _ => (text, 1),
    };
    let value: f64 = number.parse().ok()?;
    let bytes = value * multiplier as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(parse_rate("50M"), Some(50 << 20));
        assert_eq!(parse_rate("800k"), Some(800 << 10));
        assert_eq!(parse_rate("1.5G"), Some(3 << 29));
        assert_eq!(parse_rate("1000"), Some(1000));
        for bad in ["", "M", "-5M", "0", "abc", "5X", "nan"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_long_run_rate_is_the_limit() {
        let limiter = RateLimiter::new(4 << 20);
        let started = Instant::now();
        for _ in 0..20 {
            limiter.acquire(100 << 10).await;
        }
        // 2000 KiB at 4 MiB/s, minus the initial burst of 0.1 s: about 0.39 s.
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.35..0.6).contains(&elapsed), "{elapsed}");
    }
}
