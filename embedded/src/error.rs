//! Firmware failure reasons and the process exit codes they map to.
//!
//! Under QEMU the firmware ends with a semihosting `SYS_EXIT_EXTENDED` call,
//! so the code below becomes `qemu-system-arm`'s (or `qemu-system-riscv32`'s)
//! exit status (and, through
//! `qemu-run.sh`, the status of `cargo run`). Every failure has its own code
//! so a test harness can tell them apart without parsing the defmt log.
//!
//! | code | meaning                                                                |
//! |-----:|------------------------------------------------------------------------|
//! |    0 | success: page fetched through the tunnel and checked (or, serving, the status pages answered), session closed |
//! |    1 | *not used by the firmware*: QEMU's own failure (bad option, `-serial tcp:` listener not accepting, ...) |
//! |    2 | board bring-up failed (UART0 or the core peripherals already taken)   |
//! |    3 | RNG seed file missing, unreadable, shorter than 32 bytes or degenerate |
//! |    4 | RNG seed file could not be deleted after reading (would be reused)    |
//! |   10 | transport (UART) I/O error                                             |
//! |   20 | provisioned device private key does not parse (PKCS#8 RSA 2048..4096)  |
//! |   21 | provisioned server public key does not parse (SPKI RSA 2048..4096)     |
//! |   30 | handshake failed (peer alert such as an unauthorized device key, server authentication failure, handshake timeout, truncation) |
//! |   31 | the server refused the stream (`OPEN_FAIL` with a `StreamErrorCode`)   |
//! |   32 | the server reset the stream                                            |
//! |   33 | the HTTP status line is not `HTTP/1.x 200`                             |
//! |   34 | the response body does not contain the expected marker                 |
//! |   35 | the session closed before the exchange completed (peer CLOSE, idle timeout, protocol error, truncation) |
//! |   36 | malformed HTTP response (no header end, or headers larger than the buffer) |
//! |   37 | a stream call was refused locally (`StreamError`, e.g. peer going away) |
//! |   38 | the exchange did not complete within 60 s of `Connected` (origin or server stalled; when serving: the last status page not served by then) |
//! |   39 | the server refused the device's remote listener (`LISTEN_FAIL` with a `ListenErrorCode`; device as server) |
//! |  101 | Rust panic (including heap exhaustion: look for `heap exhausted`)      |
//! |  102 | CPU fault: HardFault (Cortex-M), an exception such as an illegal instruction or access fault (RISC-V, `mcause` logged) |
//! |  103 | unexpected exception or interrupt                                      |
//! |  124 | *not from the firmware*: `qemu-run.sh` timeout (`HYTUN_QEMU_TIMEOUT`)  |

use hytun_core::{ConnectionError, ListenErrorCode, StreamError, StreamErrorCode};

/// Why the firmware stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum FirmwareError {
    /// UART0 or the Cortex-M core peripherals were already handed out.
    BoardTaken,
    /// The host seed file could not be used (see [`crate::seed::SeedError`]).
    Seed(crate::seed::SeedError),
    /// The host seed file was read but could not be deleted.
    SeedNotConsumed,
    /// The transport reported an error (its [`embedded_io::ErrorKind`]).
    Transport(embedded_io::ErrorKind),
    /// The provisioned device key is not a usable PKCS#8 RSA private key.
    DeviceKey,
    /// The provisioned server key is not a usable SPKI RSA public key.
    ServerKey,
    /// The session ended before `Connected`.
    Handshake(ConnectionError),
    /// The server answered the stream's OPEN with OPEN_FAIL.
    StreamRefused(StreamErrorCode),
    /// The server reset the stream.
    StreamReset(StreamErrorCode),
    /// The status line is not `HTTP/1.x 200`.
    BadStatus,
    /// The body lacks the expected marker.
    BodyMismatch,
    /// The session ended after the handshake but before the exchange
    /// completed.
    SessionClosed(ConnectionError),
    /// The response has no complete header block, or one too large to keep.
    MalformedResponse,
    /// The core refused a stream call.
    Stream(StreamError),
    /// The page did not arrive (or, serving, the pages were not all
    /// served) in time after the handshake.
    ExchangeTimeout,
    /// The server refused the device's remote listener.
    ListenRefused(ListenErrorCode),
}

/// Exit code of a Rust panic (see the module table).
pub const EXIT_PANIC: i32 = 101;
/// Exit code of a CPU fault (HardFault; a RISC-V exception).
pub const EXIT_HARD_FAULT: i32 = 102;
/// Exit code of an unexpected exception or interrupt.
pub const EXIT_UNEXPECTED_EXCEPTION: i32 = 103;

impl FirmwareError {
    /// The process exit code for this failure (see the module table).
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::BoardTaken => 2,
            Self::Seed(_) => 3,
            Self::SeedNotConsumed => 4,
            Self::Transport(_) => 10,
            Self::DeviceKey => 20,
            Self::ServerKey => 21,
            Self::Handshake(_) => 30,
            Self::StreamRefused(_) => 31,
            Self::StreamReset(_) => 32,
            Self::BadStatus => 33,
            Self::BodyMismatch => 34,
            Self::SessionClosed(_) => 35,
            Self::MalformedResponse => 36,
            Self::Stream(_) => 37,
            Self::ExchangeTimeout => 38,
            Self::ListenRefused(_) => 39,
        }
    }

    /// Wraps any transport error, keeping its [`embedded_io::ErrorKind`].
    pub fn transport<E: embedded_io::Error>(e: E) -> Self {
        Self::Transport(e.kind())
    }
}
