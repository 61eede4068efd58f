//! Process-wide plumbing shared by the server and the client loops: the
//! monotonic clock the cores are given, the OS randomness source, and a
//! cross-thread stop handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use hytun_core::Instant;

/// Maps `std::time::Instant` to the core's millisecond [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: StdInstant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            origin: StdInstant::now(),
        }
    }
}

impl Clock {
    /// Now, as the core sees it.
    pub fn now(&self) -> Instant {
        Instant::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    /// Time from now until `at` (zero if past).
    pub fn until(&self, at: Instant) -> Duration {
        at.saturating_since(self.now())
    }
}

/// The OS CSPRNG as an infallible `CryptoRng` (a failing OS RNG aborts:
/// there is no safe way to continue a handshake without randomness).
pub type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// A fresh OS RNG handle (zero-sized).
pub fn os_rng() -> OsRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// A random `u64` for jitter.
pub fn random_u64() -> u64 {
    use rand_core::Rng;
    os_rng().next_u64()
}

/// Asks a running server or client loop to stop, from any thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl StopHandle {
    pub(crate) fn new(flag: Arc<AtomicBool>, waker: Arc<mio::Waker>) -> Self {
        StopHandle { flag, waker }
    }

    /// Requests a graceful stop.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake only delays the stop to the next loop turn.
        let _ = self.waker.wake();
    }

    /// True once a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}
