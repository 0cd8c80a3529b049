//! A per-tenant token bucket. It protects one process (a Lambda instance, `ferry dev`)
//! from a runaway client; API Gateway's throttling is the account-wide limit.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::job::{Millis, TenantId};

/// Token buckets keyed by tenant.
#[derive(Debug)]
pub struct RateLimiter {
    per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<TenantId, (f64, Millis)>>,
}

impl RateLimiter {
    /// `per_s == 0` disables limiting.
    pub fn new(per_s: f64, burst: f64) -> Self {
        RateLimiter { per_s, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `tenant` at `now`; `Err(seconds)` says when to retry.
    pub fn check(&self, tenant: &TenantId, now: Millis) -> Result<(), u64> {
        if self.per_s <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(tenant.clone()).or_insert((self.burst, now));
        let elapsed_s = now.saturating_sub(*last) as f64 / 1000.0;
        *tokens = (*tokens + elapsed_s * self.per_s).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_s).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_over_time() {
        let rl = RateLimiter::new(2.0, 2.0);
        let t = TenantId::new("a").unwrap();
        assert!(rl.check(&t, 0).is_ok());
        assert!(rl.check(&t, 0).is_ok());
        assert_eq!(rl.check(&t, 0), Err(1));
        // Another tenant has its own bucket.
        assert!(rl.check(&TenantId::new("b").unwrap(), 0).is_ok());
        assert!(rl.check(&t, 500).is_ok());
        assert!(rl.check(&t, 500).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        let rl = RateLimiter::new(0.0, 1.0);
        let t = TenantId::new("a").unwrap();
        for _ in 0..1000 {
            assert!(rl.check(&t, 0).is_ok());
        }
    }
}
