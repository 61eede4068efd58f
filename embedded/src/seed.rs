//! RNG seed for emulation: 32 bytes read from a host file over semihosting.
//!
//! **EMULATION ONLY.** The QEMU boards have no true random number generator,
//! so at boot the firmware opens the host file [`SEED_PATH`] (set at build
//! time with `HYTUN_SEED_PATH`, default `hytun-seed.bin`; a relative path is
//! resolved by QEMU against QEMU's working directory), reads the first
//! [`SEED_LEN`] bytes and then **deletes the file**, so the same seed can
//! never be used for two boots: the test harness (or `qemu-run.sh`) must
//! write a fresh file from the host's CSPRNG before every boot. No seed is
//! ever compiled into the image. A missing, unreadable or short file, or a
//! file whose bytes are all equal, is a fatal error (exit code 3); a file
//! that cannot be deleted is fatal too (exit code 4). Firmware for real
//! hardware must replace this module with its TRNG.

use core::ffi::CStr;

use semihosting::io::Read as _;
use zeroize::Zeroizing;

/// Number of seed bytes the firmware needs.
pub const SEED_LEN: usize = 32;

/// Host path of the seed file, as a C string for semihosting `SYS_OPEN`.
pub const SEED_PATH: &CStr = semihosting::c!(env!("HYTUN_FW_SEED_PATH"));

/// Why the host seed could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum SeedError {
    /// The file could not be opened (host errno, if QEMU reported one).
    Open(Option<i32>),
    /// Reading failed (host errno, if QEMU reported one).
    Read(Option<i32>),
    /// The file held fewer than [`SEED_LEN`] bytes.
    TooShort(usize),
    /// All seed bytes are equal (e.g. a file of zeros): not a random seed.
    Degenerate,
}

/// Reads the seed from [`SEED_PATH`]. The caller must then delete the file
/// with [`consume`] before using the seed.
pub fn read() -> Result<Zeroizing<[u8; SEED_LEN]>, SeedError> {
    let mut file =
        semihosting::fs::File::open(SEED_PATH).map_err(|e| SeedError::Open(e.raw_os_error()))?;
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    let mut filled = 0;
    while filled < SEED_LEN {
        let n = file
            .read(&mut seed[filled..])
            .map_err(|e| SeedError::Read(e.raw_os_error()))?;
        if n == 0 {
            return Err(SeedError::TooShort(filled));
        }
        filled += n;
    }
    let first = seed[0];
    if seed.iter().all(|&b| b == first) {
        return Err(SeedError::Degenerate);
    }
    Ok(seed)
}

/// Deletes the seed file so the next boot cannot reuse it.
pub fn consume() -> Result<(), Option<i32>> {
    semihosting::fs::remove_file(SEED_PATH).map_err(|e| e.raw_os_error())
}

/// The seed path as text, for log messages.
pub fn path_str() -> &'static str {
    env!("HYTUN_FW_SEED_PATH")
}
