//! Monotonic time on the RISC-V board: the CLINT's 64-bit `mtime` counter.
//!
//! QEMU's `virt` machine runs `mtime` at [`MTIME_HZ`] (10 MHz), so one tick
//! is [`NS_PER_TICK`] = 100 ns of QEMU *virtual* time. Under
//! `-icount shift=0` QEMU advances virtual time by exactly 1 ns per
//! instruction, so [`ticks_to_ns`] is then an instruction count (resolution
//! 100 instructions); without `-icount` it is virtual (≈ host) time. The
//! counter is read, never programmed: no timer interrupt is used, so there
//! is nothing to start. This module has the same interface as the Cortex-M
//! SysTick clock (`clock.rs`); the firmware compiles one or the other as
//! `crate::clock`.

use crate::board::{MTIME_ADDR, MTIME_HZ};

/// Nanoseconds per tick.
pub const NS_PER_TICK: u64 = 1_000_000_000 / MTIME_HZ as u64;
/// Ticks per millisecond.
const TICKS_PER_MS: u64 = MTIME_HZ as u64 / 1000;

const _: () = assert!(MTIME_HZ.is_multiple_of(1000) && 1_000_000_000 % MTIME_HZ == 0);

/// Ticks since reset; monotonic.
pub fn ticks() -> u64 {
    let lo = MTIME_ADDR as *const u32;
    let hi = (MTIME_ADDR + 4) as *const u32;
    loop {
        // SAFETY: MTIME_ADDR is the CLINT `mtime` register of QEMU's `virt`
        // machine, two aligned 32-bit words that are always readable; reads
        // have no side effects, and volatile keeps them.
        let (h1, l, h2) = unsafe {
            (
                core::ptr::read_volatile(hi),
                core::ptr::read_volatile(lo),
                core::ptr::read_volatile(hi),
            )
        };
        // A carry into the high word between the reads: read again.
        if h1 == h2 {
            return (u64::from(h1) << 32) | u64::from(l);
        }
    }
}

/// Milliseconds since reset.
pub fn millis() -> u64 {
    ticks() / TICKS_PER_MS
}

/// The core's notion of now.
pub fn instant() -> hytun_core::Instant {
    hytun_core::Instant::from_millis(millis())
}

/// Virtual nanoseconds in `ticks` (= instructions under `-icount shift=0`).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * NS_PER_TICK
}
