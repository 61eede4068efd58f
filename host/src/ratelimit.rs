//! Per-source handshake rate limiting for the server: a token bucket per
//! source address, refilled at `per_sec` tokens per second up to a burst of
//! `2 * per_sec`; each handshake attempt takes one token. Time is always
//! passed in (never read here), so tests drive a synthetic clock.
//!
//! IPv6 sources are keyed by their /64 prefix (one subscriber usually holds a
//! whole /64, so per-address buckets would be trivially evaded), and
//! IPv4-mapped IPv6 addresses by the IPv4 address. The table is capped at
//! [`DEFAULT_MAX_SOURCES`] entries (configurable): when full, buckets that
//! have refilled completely are dropped (they are equivalent to a fresh
//! bucket), and if none has, the least recently used sixteenth is evicted. An
//! attacker cycling through many addresses can therefore only reset *their
//! own* oldest buckets to full, which is no better than being new.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Default cap on the number of tracked sources.
pub const DEFAULT_MAX_SOURCES: usize = 4096;

/// One token, in the fixed-point unit used by the buckets.
const TOKEN: u64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in millionths.
    tokens: u64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// Token-bucket limiter of handshake attempts per source address.
#[derive(Debug, Clone)]
pub struct HandshakeRateLimiter {
    /// Refill rate in tokens per second.
    per_sec: u64,
    /// Bucket capacity, in millionths.
    burst: u64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl HandshakeRateLimiter {
    /// A limiter allowing `per_sec` handshakes per second per source, with a
    /// burst of `2 * per_sec`, tracking at most [`DEFAULT_MAX_SOURCES`].
    #[must_use]
    pub fn new(per_sec: NonZeroU32) -> Self {
        Self::with_max_sources(per_sec, DEFAULT_MAX_SOURCES)
    }

    /// As [`new`](Self::new) with an explicit table cap (at least 1).
    #[must_use]
    pub fn with_max_sources(per_sec: NonZeroU32, max_sources: usize) -> Self {
        let per_sec = u64::from(per_sec.get());
        Self {
            per_sec,
            burst: 2 * per_sec * TOKEN,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Number of sources currently tracked.
    #[must_use]
    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }

    /// Records a handshake attempt from `ip` at `now`; returns whether it is
    /// within the limit. A `now` earlier than a previous call counts as no
    /// time passing.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            self.make_room(now);
        }
        let (per_sec, burst) = (self.per_sec, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        refill(bucket, per_sec, burst, now);
        if bucket.tokens >= TOKEN {
            bucket.tokens -= TOKEN;
            true
        } else {
            false
        }
    }

    /// Drops full buckets; if that frees nothing, evicts the stalest
    /// sixteenth of the table, so that a flood of new sources costs an
    /// amortised constant amount of work per attempt, not a full scan.
    fn make_room(&mut self, now: Instant) {
        let (per_sec, burst) = (self.per_sec, self.burst);
        // Checked without touching `updated`, which orders the eviction.
        self.buckets
            .retain(|_, b| level(b, per_sec, burst, now) < burst);
        if self.buckets.len() < self.max_sources {
            return;
        }
        let evict = (self.max_sources / 16).max(1);
        let mut by_age: Vec<(Instant, IpAddr)> =
            self.buckets.iter().map(|(k, b)| (b.updated, *k)).collect();
        if evict < by_age.len() {
            by_age.select_nth_unstable(evict);
        }
        for (_, key) in by_age.iter().take(evict) {
            self.buckets.remove(key);
        }
    }
}

/// The bucket's token level at `now`, without modifying it.
fn level(bucket: &Bucket, per_sec: u64, burst: u64, now: Instant) -> u64 {
    let elapsed = now.saturating_duration_since(bucket.updated);
    // Two seconds refill even an empty bucket, and keep the product small.
    let capped = elapsed.min(Duration::from_secs(2));
    let micros = u64::try_from(capped.as_micros()).unwrap_or(u64::MAX);
    // Tokens gained, in millionths, is per_sec * elapsed microseconds.
    let gained = per_sec.saturating_mul(micros);
    bucket.tokens.saturating_add(gained).min(burst)
}

/// Brings the bucket up to date at `now` (a `now` in the past changes nothing).
fn refill(bucket: &mut Bucket, per_sec: u64, burst: u64, now: Instant) {
    if now > bucket.updated {
        bucket.tokens = level(bucket, per_sec, burst, now);
        bucket.updated = now;
    }
}

/// The address used as the bucket key (see module docs).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut rl = HandshakeRateLimiter::new(rate(10));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let allowed = (0..25).filter(|_| rl.allow(a, t0)).count();
        assert_eq!(allowed, 20, "burst is twice the rate");
        // 100 ms later exactly one token has been refilled.
        let t1 = t0 + Duration::from_millis(100);
        assert!(rl.allow(a, t1));
        assert!(!rl.allow(a, t1));
        // 50 ms is half a token: still refused.
        assert!(!rl.allow(a, t1 + Duration::from_millis(50)));
        assert!(rl.allow(a, t1 + Duration::from_millis(100)));
        // After a long pause the bucket is full again, but no fuller.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..30).filter(|_| rl.allow(a, t2)).count(), 20);
    }

    #[test]
    fn sources_are_independent() {
        let mut rl = HandshakeRateLimiter::new(rate(1));
        let t = Instant::now();
        assert!(rl.allow(ip("192.0.2.1"), t));
        assert!(rl.allow(ip("192.0.2.1"), t));
        assert!(!rl.allow(ip("192.0.2.1"), t));
        assert!(rl.allow(ip("192.0.2.2"), t));
    }

    #[test]
    fn ipv6_is_grouped_by_slash_64_and_mapped_v4_by_v4() {
        let mut rl = HandshakeRateLimiter::new(rate(1));
        let t = Instant::now();
        assert!(rl.allow(ip("2001:db8:1:2::1"), t));
        assert!(rl.allow(ip("2001:db8:1:2:ffff::9"), t));
        assert!(!rl.allow(ip("2001:db8:1:2::3"), t));
        assert!(rl.allow(ip("2001:db8:1:3::1"), t));
        assert!(rl.allow(ip("198.51.100.7"), t));
        assert!(rl.allow(ip("::ffff:198.51.100.7"), t));
        assert!(!rl.allow(ip("198.51.100.7"), t));
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut rl = HandshakeRateLimiter::new(rate(1));
        let t = Instant::now() + Duration::from_secs(10);
        let a = ip("192.0.2.9");
        assert!(rl.allow(a, t));
        assert!(rl.allow(a, t));
        assert!(!rl.allow(a, t - Duration::from_secs(5)));
    }

    #[test]
    fn table_is_capped_and_evicts_stalest() {
        let mut rl = HandshakeRateLimiter::with_max_sources(rate(1), 3);
        let t = Instant::now();
        // Exhaust three sources at increasing times.
        for (i, s) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            let at = t + Duration::from_millis(i as u64);
            assert!(rl.allow(ip(s), at));
            assert!(rl.allow(ip(s), at));
            assert!(!rl.allow(ip(s), at));
        }
        assert_eq!(rl.tracked_sources(), 3);
        // A fourth source evicts the stalest (10.0.0.1), never exceeding the cap.
        let t4 = t + Duration::from_millis(10);
        assert!(rl.allow(ip("10.0.0.4"), t4));
        assert_eq!(rl.tracked_sources(), 3);
        assert!(!rl.allow(ip("10.0.0.3"), t4), "recent bucket kept");
        // Once refilled, full buckets are dropped instead of evicting.
        let later = t + Duration::from_secs(10);
        assert!(rl.allow(ip("10.0.0.5"), later));
        assert!(rl.tracked_sources() <= 3);
        for _ in 0..10_000 {
            rl.allow(ip("10.9.9.9"), later);
        }
        assert!(rl.tracked_sources() <= 3);
    }

    #[test]
    fn default_cap_holds_under_many_sources() {
        let mut rl = HandshakeRateLimiter::new(rate(5));
        let t = Instant::now();
        for i in 0..(DEFAULT_MAX_SOURCES as u32 + 500) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.allow(addr, t));
        }
        let cap = DEFAULT_MAX_SOURCES;
        assert!(rl.tracked_sources() <= cap && rl.tracked_sources() > cap - cap / 16);
        // The most recent sources survived the evictions.
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + cap as u32 + 499));
        assert!(rl.allow(newest, t));
        assert_eq!((0..20).filter(|_| rl.allow(newest, t)).count(), 8);
    }
}
