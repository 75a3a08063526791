//! Per-caller rate limits: a token bucket per API key, refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Token buckets, one per caller.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// `per_second` requests per second per caller, up to `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`; `Err(seconds)` says when one will be available.
    pub fn acquire(&self, caller: &str) -> Result<(), u64> {
        self.acquire_at(caller, Instant::now())
    }

    fn acquire_at(&self, caller: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            // Whole seconds for Retry-After, at least one.
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_caller() {
        let limiter = RateLimiter::new(2, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.acquire_at("a", start).is_ok());
        }
        assert_eq!(limiter.acquire_at("a", start), Err(1));
        assert!(
            limiter.acquire_at("b", start).is_ok(),
            "callers are separate"
        );
        let later = start + Duration::from_millis(500);
        assert!(
            limiter.acquire_at("a", later).is_ok(),
            "one token after 1/rate"
        );
        assert!(limiter.acquire_at("a", later).is_err());
    }
}
