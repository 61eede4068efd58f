//! Build-only ESP32-C6 image of the hytun firmware client.
//!
//! The application is the Cortex-M firmware's, compiled unchanged from
//! `../src` (`app.rs`, `http.rs`, `error.rs`, `heap.rs`, `keys.rs`,
//! `origin.rs`, `serve.rs`, with the same `../build.rs` provisioning keys,
//! origin and serving settings);
//! only the board glue differs: esp-hal's hardware TRNG instead of the
//! emulation seed, UART1 (TX GPIO5, RX GPIO4) as the transport, the
//! system timer as the clock, defmt over esp-println (`espflash monitor`
//! decodes it). It compiles and links for `riscv32imac-unknown-none-elf`;
//! it has NOT run on hardware (there is no ESP32 emulator here).

#![no_std]
#![no_main]

extern crate alloc;

use esp_hal::rng::{Trng, TrngSource};
use esp_hal::uart::{Config as UartConfig, Uart};
use esp_println as _;

#[path = "../../src/app.rs"]
mod app;
// The QEMU-only exit codes, seed errors and heap-exhaustion helpers of
// these shared modules are unused here.
#[allow(dead_code)]
#[path = "../../src/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../src/heap.rs"]
mod heap;
#[path = "../../src/http.rs"]
mod http;
#[path = "../../src/keys.rs"]
mod keys;
#[path = "../../src/origin.rs"]
mod origin;
#[path = "../../src/serve.rs"]
mod serve;

mod clock;

/// Board constants used by the shared modules.
mod board {
    /// Heap for the RSA operations (512 KiB of SRAM on the C6).
    pub const HEAP_SIZE: usize = 32 * 1024;
}

/// The shared error type names the QEMU seed error; on hardware the TRNG
/// replaces the seed file, so it can never occur.
mod seed {
    /// Uninhabited: there is no seed file on the ESP32-C6.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
    pub enum SeedError {}
}

esp_bootloader_esp_idf::esp_app_desc!();

#[esp_hal::main]
fn main() -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    heap::init();
    defmt::info!(
        "hytun-firmware (esp32c6): heap {=usize} B",
        board::HEAP_SIZE
    );
    // The SAR ADC supplies the TRNG's entropy while `_entropy` lives.
    let _entropy = TrngSource::new(peripherals.RNG, peripherals.ADC1);
    let Ok(mut rng) = Trng::try_new() else {
        defmt::error!("TRNG not available");
        halt()
    };
    let Ok(uart) = Uart::new(peripherals.UART1, UartConfig::default()) else {
        defmt::error!("UART1 configuration rejected");
        halt()
    };
    let mut uart = uart.with_rx(peripherals.GPIO4).with_tx(peripherals.GPIO5);
    match app::run(&mut uart, &mut rng, &keys::PROVISIONED) {
        Ok(report) => defmt::info!("done: {}", report),
        Err(e) => defmt::error!("failed: {} (code {=i32})", e, e.exit_code()),
    }
    defmt::info!("mem: heap_peak={=usize}", heap::peak());
    halt()
}

fn halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    halt()
}
