//! The server-wide budgets every event loop draws from: memory (receive
//! credit and per-session fixed state), descriptors, and private-key
//! operations per second. Each is a shared counter with `try_take` /
//! `give_back`; a spent budget makes the caller refuse or wait, never
//! allocate past it. Per-session shares live in the session
//! ([`super::session`]); this module only keeps the totals honest across
//! threads.
//!
//! The model is written down in `docs/ARCHITECTURE.md` ("Resource model").

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A counted pool of some resource (bytes, descriptors) shared by the
/// server's event loops.
#[derive(Debug)]
pub struct Pool {
    name: &'static str,
    limit: usize,
    used: AtomicUsize,
}

impl Pool {
    /// A pool of `limit` units.
    pub fn new(name: &'static str, limit: usize) -> Self {
        Pool {
            name,
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` units if they are all free.
    pub fn try_take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&v| v <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes up to `n` units; returns how many it got.
    pub fn take_up_to(&self, n: usize) -> usize {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let got = n.min(self.limit.saturating_sub(cur));
            if got == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + got,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return got,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns `n` units taken earlier.
    pub fn give_back(&self, n: usize) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "{}: gave back more than taken", self.name);
    }

    /// Units in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Units still free.
    pub fn free(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// The pool's size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What the pool counts, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// One unit taken from a [`Pool`], given back when dropped (a descriptor
/// an upstream socket holds, for example).
#[derive(Debug)]
pub struct Permit {
    pool: std::sync::Arc<Pool>,
}

impl Permit {
    /// Takes one unit of `pool`, if free.
    pub fn take(pool: &std::sync::Arc<Pool>) -> Option<Permit> {
        pool.try_take(1).then(|| Permit { pool: pool.clone() })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.give_back(1);
    }
}

/// A token bucket shared by the loops: at most `per_sec` events per second
/// on average, with a burst of one second's worth.
#[derive(Debug)]
pub struct RateCap {
    per_sec: u32,
    state: Mutex<(f64, Instant)>,
}

impl RateCap {
    /// A cap of `per_sec` events per second.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        RateCap {
            per_sec: per_sec.max(1),
            state: Mutex::new((f64::from(per_sec.max(1)), now)),
        }
    }

    /// Takes one token at `now`, if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let (tokens, last) = *st;
        let refill = now.saturating_duration_since(last).as_secs_f64() * f64::from(self.per_sec);
        let tokens = (tokens + refill).min(f64::from(self.per_sec));
        if tokens >= 1.0 {
            *st = (tokens - 1.0, now.max(last));
            true
        } else {
            *st = (tokens, now.max(last));
            false
        }
    }
}

/// Rate-limits a class of log lines (refusals): at most one line per
/// interval, then a count of what was suppressed, so a flood cannot flood
/// the log.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// One line per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed
    /// since the last one), `None` when this one is suppressed.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft < hard {
        match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
            Ok(()) => return Ok(hard),
            Err(e) => log::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}"),
        }
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_never_exceeds_its_limit() {
        let p = Pool::new("bytes", 100);
        assert!(p.try_take(60));
        assert!(!p.try_take(41));
        assert_eq!(p.take_up_to(100), 40);
        assert_eq!(p.free(), 0);
        assert_eq!(p.take_up_to(1), 0);
        p.give_back(50);
        assert_eq!(p.used(), 50);
        assert!(p.try_take(50));
    }

    #[test]
    fn pool_is_shared_safely_between_threads() {
        let p = std::sync::Arc::new(Pool::new("fds", 1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..1000).filter(|_| p.try_take(1)).count())
            })
            .collect();
        let got: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(got, 1000);
        assert_eq!(p.used(), 1000);
    }

    #[test]
    fn rate_cap_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let cap = RateCap::new(10, t0);
        assert_eq!((0..20).filter(|_| cap.try_take(t0)).count(), 10);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| cap.try_take(t1)).count(), 5);
    }

    #[test]
    fn log_limiter_counts_what_it_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(2));
    }
}
