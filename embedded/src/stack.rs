//! Stack high-water mark from cortex-m-rt's `paint-stack` feature.
//!
//! At reset cortex-m-rt fills the whole stack region, from `_stack_end`
//! (lowest address, just past `.bss`/`.uninit`) up to `_stack_start` (the
//! initial stack pointer), with [`cortex_m_rt::STACK_PAINT_VALUE`]
//! (`0xCCCC_CCCC`). The stack grows down, so the lowest word that no longer
//! holds the paint marks the deepest point reached. [`peak`] scans upwards
//! from `_stack_end` for it. A function that happens to store the paint value
//! itself can make the result a few words low; a stack overflow into `.bss`
//! is not detected (there is no guard region).

use cortex_m_rt::STACK_PAINT_VALUE;

unsafe extern "C" {
    /// Lowest address of the stack region (linker symbol of cortex-m-rt).
    static _stack_end: u32;
    /// Initial stack pointer, one past the highest stack word.
    static _stack_start: u32;
}

/// Total size of the stack region in bytes.
pub fn size() -> usize {
    let (low, high) = bounds();
    high - low
}

/// Deepest stack use since reset, in bytes.
pub fn peak() -> usize {
    let (low, high) = bounds();
    let mut addr = low;
    while addr < high {
        // SAFETY: `addr` is 4-byte aligned (cortex-m-rt asserts both bounds
        // are) and lies in [_stack_end, _stack_start), RAM reserved for the
        // stack; words below the current stack pointer are not in use by
        // anyone, and a volatile read keeps the compiler from assuming their
        // contents.
        let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
        if word != STACK_PAINT_VALUE {
            break;
        }
        addr += 4;
    }
    high - addr
}

fn bounds() -> (usize, usize) {
    let low = (&raw const _stack_end) as usize;
    let high = (&raw const _stack_start) as usize;
    (low, high)
}
