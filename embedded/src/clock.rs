//! Monotonic time from SysTick: a millisecond clock for the protocol core
//! and a fine tick counter for cost measurements.
//!
//! SysTick runs from the processor clock with a 1 ms period; its exception
//! ([`SysTick`]) counts periods. [`ticks`] combines that count with the
//! down-counter, correcting for a wrap that is pending but not yet
//! serviced, so it never goes backwards. One tick is [`NS_PER_TICK`]
//! nanoseconds of QEMU *virtual* time: 40 ns on `mps2-an385` (25 MHz), 80 ns
//! on `lm3s6965evb` (12.5 MHz). Under `-icount shift=0` QEMU advances virtual
//! time by exactly 1 ns per instruction, so [`ticks_to_ns`] is then an
//! instruction count; without `-icount` it is virtual (≈ host) time.
//!
//! The Cortex-M3 cycle counter (DWT `CYCCNT`) would be the natural tool, but
//! QEMU 7.2 does not model the DWT: `CYCCNT` reads 0 even after
//! `DCB.enable_trace()` and `DWT.enable_cycle_counter()` (measured on both
//! boards), so it is not used.

use core::cell::Cell;

use cortex_m::interrupt::{self, Mutex};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};
use cortex_m_rt::exception;

use crate::board::SYSTICK_HZ;

/// SysTick counts per millisecond (the reload period).
const PERIOD: u32 = SYSTICK_HZ / 1000;
/// Nanoseconds per tick.
pub const NS_PER_TICK: u64 = 1_000_000_000 / SYSTICK_HZ as u64;

const _: () = assert!(SYSTICK_HZ.is_multiple_of(1000) && PERIOD > 1 && PERIOD <= 1 << 24);

/// Completed periods (milliseconds) since [`start`].
static PERIODS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

/// Starts SysTick with a 1 ms period and its exception enabled.
pub fn start(mut syst: SYST) {
    syst.disable_counter();
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(PERIOD - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    interrupt::free(|cs| {
        let p = PERIODS.borrow(cs);
        p.set(p.get() + 1);
    });
}

/// Ticks since [`start`]; monotonic.
pub fn ticks() -> u64 {
    interrupt::free(|cs| {
        let mut periods = PERIODS.borrow(cs).get();
        let mut val = SYST::get_current();
        // The counter pends the exception when it reaches 0 and reloads on
        // the next tick. Count that 0 as the start of the next period; if the
        // exception is pending (interrupts are masked here), the period
        // count is one behind, and `val` may predate the wrap: read again.
        if SCB::is_pendst_pending() {
            periods += 1;
            val = SYST::get_current();
        }
        // Position in the period: 0 at val == 0, then 1 at RELOAD, ...
        let pos = (PERIOD - val) % PERIOD;
        periods * u64::from(PERIOD) + u64::from(pos)
    })
}

/// Milliseconds since [`start`].
pub fn millis() -> u64 {
    ticks() / u64::from(PERIOD)
}

/// The core's notion of now.
pub fn instant() -> hytun_core::Instant {
    hytun_core::Instant::from_millis(millis())
}

/// Virtual nanoseconds in `ticks` (= instructions under `-icount shift=0`).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * NS_PER_TICK
}
