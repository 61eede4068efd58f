//! Firmware failure reasons and the process exit codes they map to.
//!
//! Under QEMU the firmware ends with a semihosting `SYS_EXIT_EXTENDED` call,
//! so the code below becomes `qemu-system-arm`'s exit status (and, through
//! `qemu-run.sh`, the status of `cargo run`). Every failure has its own code
//! so a test harness can tell them apart without parsing the defmt log.
//!
//! | code | meaning                                                                |
//! |-----:|------------------------------------------------------------------------|
//! |    0 | success                                                                |
//! |    1 | *not used by the firmware*: QEMU's own failure (bad option, `-serial tcp:` listener not accepting, ...) |
//! |    2 | board bring-up failed (UART0 already taken)                            |
//! |    3 | RNG seed file missing, unreadable, shorter than 32 bytes or degenerate |
//! |    4 | RNG seed file could not be deleted after reading (would be reused)    |
//! |   10 | transport (UART) I/O error                                             |
//! |   11 | transport closed (end of stream)                                       |
//! |   12 | peer sent an unexpected reply                                          |
//! |   13 | peer sent a line longer than the receive buffer                        |
//! |   20 | provisioned device private key does not parse (PKCS#8 RSA)             |
//! |   21 | provisioned server public key does not parse (SPKI RSA)                |
//! |   22 | cryptographic operation failed                                         |
//! |  101 | Rust panic (including heap exhaustion: look for `heap exhausted`)      |
//! |  102 | HardFault                                                              |
//! |  103 | unexpected exception or interrupt                                      |
//! |  124 | *not from the firmware*: `qemu-run.sh` timeout (`HYTUN_QEMU_TIMEOUT`)  |

/// Why the firmware stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum FirmwareError {
    /// UART0 was already handed out.
    UartTaken,
    /// The host seed file could not be used (see [`crate::seed::SeedError`]).
    Seed(crate::seed::SeedError),
    /// The host seed file was read but could not be deleted.
    SeedNotConsumed,
    /// The transport reported an error (its [`embedded_io::ErrorKind`]).
    Transport(embedded_io::ErrorKind),
    /// The transport reached end of stream.
    TransportClosed,
    /// The peer's reply was not the expected one.
    UnexpectedReply,
    /// The peer sent a line that does not fit the receive buffer.
    LineTooLong,
    /// The provisioned device key is not a PKCS#8 RSA private key.
    DeviceKey,
    /// The provisioned server key is not an SPKI RSA public key.
    ServerKey,
    /// A cryptographic operation failed.
    Crypto,
}

/// Exit code of a Rust panic (see the module table).
pub const EXIT_PANIC: i32 = 101;
/// Exit code of a HardFault.
pub const EXIT_HARD_FAULT: i32 = 102;
/// Exit code of an unexpected exception or interrupt.
pub const EXIT_UNEXPECTED_EXCEPTION: i32 = 103;

impl FirmwareError {
    /// The process exit code for this failure (see the module table).
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::UartTaken => 2,
            Self::Seed(_) => 3,
            Self::SeedNotConsumed => 4,
            Self::Transport(_) => 10,
            Self::TransportClosed => 11,
            Self::UnexpectedReply => 12,
            Self::LineTooLong => 13,
            Self::DeviceKey => 20,
            Self::ServerKey => 21,
            Self::Crypto => 22,
        }
    }
}

impl FirmwareError {
    /// Wraps any transport error, keeping its [`embedded_io::ErrorKind`].
    pub fn transport<E: embedded_io::Error>(e: E) -> Self {
        Self::Transport(e.kind())
    }
}
