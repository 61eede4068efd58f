//! hytun client firmware for Cortex-M (QEMU `mps2-an385` / `lm3s6965evb`)
//! and RISC-V (QEMU `virt`, RV32IMAC: the ESP32-C6's ISA).
//!
//! Boot sequence: (RISC-V: paint the stack), heap init, read and delete the
//! host seed file (emulation only, see [`seed`]), instantiate the
//! [`drbg::Drbg`], start the [`clock`] (SysTick on Cortex-M, the CLINT's
//! `mtime` on RISC-V), take UART0, then hand everything to [`app::run`], the
//! hytun tunnel client. Afterwards the stack and heap high-water
//! marks are logged as `mem: stack_peak=.. heap_peak=..` and the firmware
//! exits through semihosting with 0, or with the failure's exit code (table
//! in [`error`]). Logging is defmt over semihosting (`defmt-semihosting` on
//! Cortex-M, the logger in `riscv.rs` on RISC-V): QEMU writes the frames
//! to its stdout, `qemu-run.sh` decodes them with `defmt-print`. Panics,
//! CPU faults and stray exceptions log and exit with 101/102/103 instead of
//! hanging until the runner's timeout. Board specifics live in [`board`]
//! (one module per machine) and [`uart`]; the application is the same on
//! every board.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use core::sync::atomic::{AtomicBool, Ordering};

#[cfg(target_arch = "arm")]
use cortex_m_rt::{ExceptionFrame, exception};
// Links the `critical-section` implementation for single-core Cortex-M.
#[cfg(target_arch = "arm")]
use cortex_m as _;
#[cfg(target_arch = "arm")]
use defmt_semihosting as _;

mod app;
mod board;
#[cfg(target_arch = "arm")]
mod clock;
#[cfg(target_arch = "riscv32")]
#[path = "mtime.rs"]
mod clock;
mod drbg;
mod error;
mod heap;
mod http;
mod keys;
mod origin;
#[cfg(target_arch = "riscv32")]
mod riscv;
mod seed;
mod serve;
mod stack;
mod uart;

use error::FirmwareError;

/// Firmware version, logged at boot.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    #[cfg(target_arch = "riscv32")]
    stack::paint();
    heap::init();
    defmt::info!(
        "hytun-firmware {=str} on {=str} (UART0 at {=usize:#x}): heap {=usize} B, stack region {=usize} B",
        VERSION,
        board::QEMU_MACHINE,
        board::UART0_BASE,
        board::HEAP_SIZE,
        stack::size()
    );
    let result = boot_and_run();
    log_memory();
    match result {
        Ok(report) => {
            defmt::info!("done: {}", report);
            exit(0)
        }
        Err(e) => {
            defmt::error!("failed: {} (exit code {=i32})", e, e.exit_code());
            exit(e.exit_code())
        }
    }
}

fn boot_and_run() -> Result<app::Report, FirmwareError> {
    defmt::warn!("EMULATION ONLY: RNG seeded from host file, not a TRNG");
    let seed = seed::read().map_err(|e| {
        defmt::error!(
            "seed: cannot use host file `{=str}` ({} bytes needed): {}",
            seed::path_str(),
            seed::SEED_LEN,
            e
        );
        FirmwareError::Seed(e)
    })?;
    seed::consume().map_err(|errno| {
        defmt::error!(
            "seed: cannot delete `{=str}` after reading (errno {}); refusing to run with a reusable seed",
            seed::path_str(),
            errno
        );
        FirmwareError::SeedNotConsumed
    })?;
    let mut rng = drbg::Drbg::from_seed(&seed);
    drop(seed);

    #[cfg(target_arch = "arm")]
    {
        let core = cortex_m::Peripherals::take().ok_or(FirmwareError::BoardTaken)?;
        clock::start(core.SYST);
    }
    let mut uart = board::uart0().ok_or(FirmwareError::BoardTaken)?;
    app::run(&mut uart, &mut rng, &keys::PROVISIONED)
}

fn log_memory() {
    let stack_peak = u32::try_from(stack::peak()).unwrap_or(u32::MAX);
    let heap_peak = u32::try_from(heap::peak()).unwrap_or(u32::MAX);
    defmt::info!(
        "mem: stack_peak={=u32} heap_peak={=u32}",
        stack_peak,
        heap_peak
    );
}

/// Ends the QEMU process with `code` (semihosting `SYS_EXIT_EXTENDED`).
pub(crate) fn exit(code: i32) -> ! {
    semihosting::process::exit(code)
}

/// Set by the first panic or fault; a second one exits without logging
/// (the defmt logger may be the thing that failed).
pub(crate) static DYING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if DYING.swap(true, Ordering::AcqRel) {
        exit(error::EXIT_PANIC);
    }
    if heap::exhausted() {
        defmt::error!(
            "heap exhausted ({=usize} of {=usize} B in use)",
            heap::used(),
            board::HEAP_SIZE
        );
    }
    match info.location() {
        Some(loc) => defmt::error!(
            "panic at {=str}:{=u32}: {}",
            loc.file(),
            loc.line(),
            defmt::Display2Format(&info.message())
        ),
        None => defmt::error!("panic: {}", defmt::Display2Format(&info.message())),
    }
    log_memory();
    exit(error::EXIT_PANIC)
}

#[cfg(target_arch = "arm")]
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    if !DYING.swap(true, Ordering::AcqRel) {
        defmt::error!(
            "HardFault at pc={=u32:#010x} lr={=u32:#010x}",
            frame.pc(),
            frame.lr()
        );
    }
    exit(error::EXIT_HARD_FAULT)
}

#[cfg(target_arch = "arm")]
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if !DYING.swap(true, Ordering::AcqRel) {
        defmt::error!("unexpected exception or interrupt {=i16}", irqn);
    }
    exit(error::EXIT_UNEXPECTED_EXCEPTION)
}
