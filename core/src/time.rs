//! Time as the driver tells it. The core never reads a clock: every call
//! that depends on time takes an [`Instant`] that the driver made from its
//! own monotonic clock (e.g. `std::time::Instant` or a SysTick counter).

use core::ops::Add;
use core::time::Duration;

/// A point in time: milliseconds since an origin the driver chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The instant `millis` milliseconds after the driver's origin.
    pub const fn from_millis(millis: u64) -> Instant {
        Instant { millis }
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_add(ms),
        }
    }
}
