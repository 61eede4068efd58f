//! Stack high-water mark: the stack region is painted, [`peak`] finds the
//! lowest word that no longer holds the paint.
//!
//! * Cortex-M: cortex-m-rt's `paint-stack` feature fills the whole region,
//!   from `_stack_end` (lowest address, just past `.bss`/`.uninit`) up to
//!   `_stack_start` (the initial stack pointer), with
//!   `cortex_m_rt::STACK_PAINT_VALUE` (`0xCCCC_CCCC`) at reset.
//! * RISC-V: riscv-rt does not paint, so [`paint`] (called first thing in
//!   `main`) fills the region from riscv-rt's `__estack` (lowest address,
//!   just past `.bss`/`.uninit`) up to just below the current stack pointer
//!   with the same value; the frames above it (`main`'s) count as used.
//!
//! The stack grows down, so the lowest word that no longer holds the paint
//! marks the deepest point reached. A function that happens to store the
//! paint value itself can make the result a few words low; a stack overflow
//! into `.bss` is not detected (there is no guard region).

#[cfg(target_arch = "arm")]
use cortex_m_rt::STACK_PAINT_VALUE;

/// The paint (cortex-m-rt's value, reused on RISC-V).
#[cfg(target_arch = "riscv32")]
const STACK_PAINT_VALUE: u32 = 0xCCCC_CCCC;

#[cfg(target_arch = "arm")]
unsafe extern "C" {
    /// Lowest address of the stack region (linker symbol of cortex-m-rt).
    #[link_name = "_stack_end"]
    static STACK_LOW: u32;
    /// Initial stack pointer, one past the highest stack word.
    #[link_name = "_stack_start"]
    static STACK_HIGH: u32;
}

#[cfg(target_arch = "riscv32")]
unsafe extern "C" {
    /// Lowest address of the stack region (start of riscv-rt's `.stack`).
    #[link_name = "__estack"]
    static STACK_LOW: u32;
    /// Initial stack pointer, one past the highest stack word.
    #[link_name = "_stack_start"]
    static STACK_HIGH: u32;
}

/// Total size of the stack region in bytes.
pub fn size() -> usize {
    let (low, high) = bounds();
    high - low
}

/// Paints the unused part of the stack region (RISC-V; cortex-m-rt does it
/// at reset). Must run before anything deep is called, with interrupts off.
#[cfg(target_arch = "riscv32")]
#[inline(never)]
pub fn paint() {
    let sp: usize;
    // SAFETY: reads the stack pointer into a register; no memory access.
    unsafe { core::arch::asm!("mv {}, sp", out(reg) sp, options(nomem, nostack)) };
    let (low, _) = bounds();
    // Leave a few words under the stack pointer alone.
    let top = (sp - 64) & !3;
    let mut addr = low;
    while addr < top {
        // SAFETY: `addr` is 4-byte aligned (riscv-rt aligns `.stack`) and
        // lies in [__estack, sp - 64): stack memory below every live frame,
        // used by nobody (no interrupts are enabled, and this loop calls
        // nothing).
        unsafe { core::ptr::write_volatile(addr as *mut u32, STACK_PAINT_VALUE) };
        addr += 4;
    }
}

/// Deepest stack use since reset, in bytes.
pub fn peak() -> usize {
    let (low, high) = bounds();
    let mut addr = low;
    while addr < high {
        // SAFETY: `addr` is 4-byte aligned (both runtimes align the bounds)
        // and lies in the stack region, RAM reserved for the stack; words
        // below the current stack pointer are not in use by anyone, and a
        // volatile read keeps the compiler from assuming their contents.
        let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
        if word != STACK_PAINT_VALUE {
            break;
        }
        addr += 4;
    }
    high - addr
}

fn bounds() -> (usize, usize) {
    let low = (&raw const STACK_LOW) as usize;
    let high = (&raw const STACK_HIGH) as usize;
    (low, high)
}
