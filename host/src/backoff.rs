//! Reconnect backoff for the client: the nominal delay starts at 250 ms and
//! doubles after every failed attempt up to a 30 s cap; each returned delay
//! is the nominal one scaled by a uniform factor in [0.8, 1.2] drawn from a
//! caller-supplied random `u64` (so tests are deterministic and this module
//! needs no RNG). Jitter is applied after capping, so the longest delay is
//! 36 s. [`Backoff::reset`] after a session that came up successfully.

use std::time::Duration;

/// First nominal delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(250);
/// Largest nominal delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential reconnect backoff with ±20 % jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failed attempts since the last reset.
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// 250 ms doubling to 30 s.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limits(INITIAL_DELAY, MAX_DELAY)
    }

    /// Custom first and largest nominal delays (`max` is raised to
    /// `initial` if smaller).
    #[must_use]
    pub fn with_limits(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// Failed attempts since the last reset.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The nominal (un-jittered) delay for the next attempt.
    #[must_use]
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Returns the delay before the next attempt and counts the attempt.
    /// `random` should be uniformly random (any `u64` is accepted).
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let nominal = self.nominal();
        self.attempts = self.attempts.saturating_add(1);
        jitter(nominal, random)
    }

    /// Starts over from the initial delay (call after a successful session).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// `nominal * (0.8 + 0.4 * random / 2^64)`, computed in integer nanoseconds.
fn jitter(nominal: Duration, random: u64) -> Duration {
    let nanos = nominal.as_nanos();
    let low = nanos * 4 / 5;
    let span = nanos * 2 / 5;
    let offset = (span * u128::from(random)) >> 64;
    let total = low + offset;
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    let sub = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID: u64 = 1 << 63;

    #[test]
    fn doubles_from_250ms_to_30s() {
        let mut b = Backoff::new();
        let expected_ms = [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for ms in expected_ms {
            assert_eq!(b.nominal(), Duration::from_millis(ms));
            // The midpoint random value gives exactly the nominal delay.
            assert_eq!(b.next_delay(MID), Duration::from_millis(ms));
        }
        assert_eq!(b.attempts(), 10);
    }

    #[test]
    fn jitter_stays_within_20_percent() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(0), Duration::from_millis(200));
        let top = b.next_delay(u64::MAX);
        assert!(top < Duration::from_millis(600) && top > Duration::from_millis(599));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = jitter(Duration::from_secs(30), x);
            assert!(
                d >= Duration::from_secs(24) && d <= Duration::from_secs(36),
                "{d:?}"
            );
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.next_delay(MID);
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(MID), INITIAL_DELAY);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new();
        for _ in 0..100 {
            assert!(b.next_delay(u64::MAX) <= Duration::from_secs(36));
        }
        assert_eq!(b.nominal(), MAX_DELAY);
        let custom = Backoff::with_limits(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(custom.nominal(), Duration::from_secs(5));
    }
}
