//! Retry policy: whether a failed attempt is retried, and after how long.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Exponential backoff with full jitter between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds.
    #[serde(default = "default_base")]
    pub base_ms: u64,
    /// Upper bound for any single delay, in milliseconds.
    #[serde(default = "default_cap")]
    pub cap_ms: u64,
}

fn default_base() -> u64 {
    1_000
}
fn default_cap() -> u64 {
    300_000
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: default_base(),
            cap_ms: default_cap(),
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1 = first retry). `unit` in `[0, 1)` is the
    /// jitter draw; the delay lies in `[ceiling/2, ceiling]` so retries never bunch at 0.
    pub fn delay_ms(&self, retry: u32, unit: f64) -> u64 {
        let exp = retry.saturating_sub(1).min(32);
        let ceiling = self.base_ms.saturating_mul(1u64 << exp).min(self.cap_ms);
        let half = ceiling / 2;
        half + ((ceiling - half) as f64 * unit.clamp(0.0, 1.0)) as u64
    }
}

/// Whether another attempt follows one that used up `attempts_used` of `max_attempts`.
pub fn should_retry(attempts_used: u32, max_attempts: u32) -> bool {
    attempts_used < max_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_the_cap() {
        let b = Backoff {
            base_ms: 100,
            cap_ms: 1_000,
        };
        assert_eq!(b.delay_ms(1, 1.0), 100);
        assert_eq!(b.delay_ms(2, 1.0), 200);
        assert_eq!(b.delay_ms(3, 1.0), 400);
        assert_eq!(b.delay_ms(5, 1.0), 1_000);
        assert_eq!(b.delay_ms(60, 1.0), 1_000);
        assert_eq!(b.delay_ms(3, 0.0), 200);
    }

    #[test]
    fn retries_until_attempts_are_used_up() {
        assert!(should_retry(1, 3));
        assert!(should_retry(2, 3));
        assert!(!should_retry(3, 3));
        assert!(!should_retry(1, 1));
    }
}
