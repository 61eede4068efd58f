//! RISC-V runtime glue (`board-virt`): the defmt logger and the trap
//! handlers that riscv-rt calls.
//!
//! * **Logging.** `defmt-semihosting` is Cortex-M only, so [`Logger`] is the
//!   same design on top of the `semihosting` crate (which supports riscv32):
//!   each defmt frame is rzcobs-encoded by [`defmt::Encoder`] inside a
//!   critical section and written to the host's stdout with semihosting
//!   `SYS_WRITE`. QEMU prints it on its own stdout, where `qemu-run.sh`
//!   pipes it into `defmt-print`, exactly as on the Cortex-M boards. The
//!   stdout handle (semihosting `SYS_OPEN` of `:tt`) is opened on the first
//!   frame.
//! * **Traps.** riscv-rt sends every exception without its own handler to
//!   `ExceptionHandler` and every interrupt to `DefaultHandler`. The firmware
//!   enables no interrupt, so both are fatal: they log `mcause`/`mepc`/
//!   `mtval` and exit with 102 (CPU exception, the HardFault of Cortex-M) or
//!   103 (unexpected interrupt). A trap taken while already dying (e.g. the
//!   semihosting `ebreak` itself trapping because QEMU runs without
//!   `-semihosting-config enable=on`) spins instead of recursing; the
//!   runner's timeout ends it.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use semihosting::io::Write as _;

use crate::error::{EXIT_HARD_FAULT, EXIT_UNEXPECTED_EXCEPTION};

/// defmt's global logger: frames over semihosting stdout.
#[defmt::global_logger]
struct Logger;

/// Logger state, only touched inside the logger's critical section.
struct State {
    restore: critical_section::RestoreState,
    encoder: defmt::Encoder,
    stdout: Option<semihosting::io::Stdout>,
}

struct Shared(UnsafeCell<State>);

// SAFETY: the state is only accessed between `acquire` and `release`, which
// hold a critical section (single hart, interrupts masked) and refuse
// re-entry through `TAKEN`.
unsafe impl Sync for Shared {}

static TAKEN: AtomicBool = AtomicBool::new(false);
static STATE: Shared = Shared(UnsafeCell::new(State {
    restore: critical_section::RestoreState::invalid(),
    encoder: defmt::Encoder::new(),
    stdout: None,
}));

/// Writes encoded bytes to the host; errors are dropped (there is nowhere
/// else to report them).
fn emit(stdout: &mut Option<semihosting::io::Stdout>, bytes: &[u8]) {
    if stdout.is_none() {
        *stdout = semihosting::io::stdout().ok();
    }
    if let Some(out) = stdout {
        let _ = out.write_all(bytes);
    }
}

// SAFETY: `acquire`/`release` bracket every frame with a critical section and
// the `TAKEN` flag, so `write` and `flush` never run concurrently or
// re-entrantly, as `defmt::Logger` requires.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: paired with the `release` below, which defmt guarantees to
        // call after every successful `acquire`.
        let restore = unsafe { critical_section::acquire() };
        if TAKEN.swap(true, Ordering::Acquire) {
            // A log call from inside a log call (a panic while logging):
            // the panic handler's second-panic path exits without logging.
            panic!("defmt logger taken reentrantly");
        }
        // SAFETY: inside the critical section, with TAKEN held.
        let state = unsafe { &mut *STATE.0.get() };
        state.restore = restore;
        let State {
            encoder, stdout, ..
        } = state;
        encoder.start_frame(|b| emit(stdout, b));
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: defmt calls this only after `acquire`, so the critical
        // section and TAKEN are held.
        let state = unsafe { &mut *STATE.0.get() };
        let State {
            encoder,
            stdout,
            restore,
        } = state;
        encoder.end_frame(|b| emit(stdout, b));
        let restore = *restore;
        TAKEN.store(false, Ordering::Release);
        // SAFETY: the state `acquire` got from the matching critical section.
        unsafe { critical_section::release(restore) };
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: defmt calls this only between `acquire` and `release`.
        let state = unsafe { &mut *STATE.0.get() };
        let State {
            encoder, stdout, ..
        } = state;
        encoder.write(bytes, |b| emit(stdout, b));
    }
}

/// Every exception riscv-rt has no specific handler for.
#[unsafe(no_mangle)]
extern "C" fn ExceptionHandler(_frame: &riscv_rt::TrapFrame) -> ! {
    if crate::DYING.swap(true, Ordering::AcqRel) {
        spin()
    }
    defmt::error!(
        "CPU exception mcause={=usize} at mepc={=usize:#010x} mtval={=usize:#010x}",
        riscv::register::mcause::read().bits(),
        riscv::register::mepc::read(),
        riscv::register::mtval::read()
    );
    crate::exit(EXIT_HARD_FAULT)
}

/// Every interrupt (none is enabled, so any is unexpected).
#[unsafe(no_mangle)]
extern "C" fn DefaultHandler() -> ! {
    if crate::DYING.swap(true, Ordering::AcqRel) {
        spin()
    }
    defmt::error!(
        "unexpected interrupt mcause={=usize:#010x}",
        riscv::register::mcause::read().bits()
    );
    crate::exit(EXIT_UNEXPECTED_EXCEPTION)
}

fn spin() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
