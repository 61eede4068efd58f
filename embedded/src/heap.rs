//! The global allocator: a linked-list first-fit heap that records its peak.
//!
//! [`PeakHeap`] wraps `embedded_alloc::LlffHeap` and, after every successful
//! allocation, samples the inner heap's `used()` (bytes in use including the
//! allocator's rounding) into an atomic maximum, so [`peak`] is the true heap
//! high-water mark, not an estimate taken at the end. A failed allocation
//! sets a flag that the panic handler reports as `heap exhausted` (Rust turns
//! an allocation failure into a panic in `no_std`). The heap memory is a
//! static array of [`board::HEAP_SIZE`](crate::board::HEAP_SIZE) bytes in
//! `.bss`; [`init`] must run before the first allocation.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

use crate::board::HEAP_SIZE;

/// A heap allocator that remembers its high-water mark.
pub struct PeakHeap {
    inner: LlffHeap,
    peak: AtomicUsize,
    exhausted: AtomicBool,
    initialised: AtomicBool,
}

#[global_allocator]
static ALLOCATOR: PeakHeap = PeakHeap {
    inner: LlffHeap::empty(),
    peak: AtomicUsize::new(0),
    exhausted: AtomicBool::new(false),
    initialised: AtomicBool::new(false),
};

static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];

// SAFETY: every method forwards to `LlffHeap`, which upholds the
// `GlobalAlloc` contract; the bookkeeping only reads its state.
unsafe impl GlobalAlloc for PeakHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        if ptr.is_null() {
            self.exhausted.store(true, Ordering::Relaxed);
        } else {
            self.peak.fetch_max(self.inner.used(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

/// Hands the static heap memory to the allocator; later calls do nothing.
pub fn init() {
    if ALLOCATOR.initialised.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = (&raw mut HEAP_MEM) as usize;
    // SAFETY: HEAP_MEM is a static of HEAP_SIZE bytes used by nothing else
    // (it is private and only its address is taken, here), and the swap
    // above makes this the only call to `LlffHeap::init`.
    unsafe { ALLOCATOR.inner.init(start, HEAP_SIZE) }
}

/// Heap high-water mark in bytes since boot.
pub fn peak() -> usize {
    ALLOCATOR.peak.load(Ordering::Relaxed)
}

/// Bytes currently allocated.
pub fn used() -> usize {
    ALLOCATOR.inner.used()
}

/// Whether an allocation has failed since boot.
pub fn exhausted() -> bool {
    ALLOCATOR.exhausted.load(Ordering::Relaxed)
}
