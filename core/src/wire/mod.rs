//! Wire formats: parse and emit the bytes of hytun messages, with no state.
//!
//! Everything here is a pure function of its input, in the style of smoltcp's
//! `wire` module: a parser takes an untrusted byte slice and either returns a
//! typed value borrowing from it or a [`WireError`]; an emitter writes a value
//! into a caller-owned buffer and reports how many bytes it used. Nothing in
//! this module allocates, panics on input, or knows about keys or sessions.
//!
//! * [`handshake`] — the four handshake messages (`ClientHello`,
//!   `ServerHello`, `Finished`, `Alert`) and their outer framing.
//! * [`record`] — the 2-byte record header that frames every AEAD record.
//! * [`frame`] — the stream frames carried inside decrypted records.

pub mod frame;
pub mod handshake;
pub mod record;

use core::fmt;

/// Why a byte string is not a valid hytun message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WireError {
    /// The input ended before the field named here was complete.
    Truncated(&'static str),
    /// A field holds a value the protocol does not allow.
    InvalidField(&'static str),
    /// A message or frame type byte that this version does not define.
    UnknownType(u8),
    /// Bytes were left over after a message that has a fixed end.
    TrailingBytes,
    /// The output buffer is too small; `required` bytes are needed.
    BufferTooSmall {
        /// How many bytes the emitter needs in total.
        required: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated(what) => write!(f, "message truncated in field `{what}`"),
            WireError::InvalidField(what) => write!(f, "invalid value in field `{what}`"),
            WireError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            WireError::TrailingBytes => f.write_str("trailing bytes after message"),
            WireError::BufferTooSmall { required } => {
                write!(f, "output buffer too small ({required} bytes needed)")
            }
        }
    }
}

impl core::error::Error for WireError {}

/// A bounds-checked cursor over untrusted input. Every read names the field
/// it is reading so that a truncation error says where the input ended.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated(field));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<&'a [u8; N], WireError> {
        let bytes = self.bytes(N, field)?;
        bytes.try_into().map_err(|_| WireError::Truncated(field))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(*self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(*self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(*self.array(field)?))
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// A bounds-checked writer into a caller-owned buffer. Emitters first compute
/// their exact length, so a too-small buffer is reported before any byte is
/// written.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Checks that `buf` can hold `required` bytes and wraps it.
    pub(crate) fn with_capacity(buf: &'a mut [u8], required: usize) -> Result<Self, WireError> {
        if buf.len() < required {
            return Err(WireError::BufferTooSmall { required });
        }
        Ok(Writer { buf, pos: 0 })
    }

    // The callers reserved the exact length with `with_capacity`, so the
    // slicing below stays in bounds; it is still checked (and would panic)
    // rather than unchecked, and the unit tests exercise every emitter.
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    pub(crate) fn written(&self) -> usize {
        self.pos
    }
}
