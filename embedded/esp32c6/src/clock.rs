//! The clock of the shared application on the ESP32-C6: esp-hal's system
//! timer, in microseconds (one tick = 1 µs = 1000 ns).

/// Microseconds since boot; monotonic.
pub fn ticks() -> u64 {
    esp_hal::time::Instant::now()
        .duration_since_epoch()
        .as_micros()
}

/// Milliseconds since boot.
pub fn millis() -> u64 {
    ticks() / 1000
}

/// The core's notion of now.
pub fn instant() -> hytun_core::Instant {
    hytun_core::Instant::from_millis(millis())
}

/// Nanoseconds in `ticks`.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * 1000
}
