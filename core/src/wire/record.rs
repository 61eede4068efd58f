//! The record header: `length: u16` (big endian) in front of every AEAD
//! record. `length` counts the ciphertext including the 16-byte GCM tag; the
//! two header bytes are also the record's associated data.

use super::WireError;

/// Bytes of the record header.
pub const HEADER_LEN: usize = 2;
/// Bytes of the AES-GCM authentication tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// Bytes a record adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Parses a record header and checks the ciphertext length against the
/// largest plaintext this side announced (`max_plaintext`).
///
/// Returns the ciphertext length (tag included) that follows the header.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_plaintext: usize) -> Result<usize, WireError> {
    let len = usize::from(u16::from_be_bytes(*bytes));
    // A record carries at least one frame byte.
    if len < TAG_LEN + 1 || len - TAG_LEN > max_plaintext {
        return Err(WireError::InvalidField("record length"));
    }
    Ok(len)
}

/// The header for a record of `plaintext_len` bytes.
pub fn header(plaintext_len: usize) -> [u8; HEADER_LEN] {
    ((plaintext_len + TAG_LEN) as u16).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(parse_header(&header(1), 1024), Ok(17));
        assert_eq!(parse_header(&header(1024), 1024), Ok(1040));
        assert!(parse_header(&header(1025), 1024).is_err());
        assert!(parse_header(&[0, 16], 1024).is_err());
        assert!(parse_header(&[0, 0], 1024).is_err());
        assert!(parse_header(&[0xff, 0xff], 16384).is_err());
        // No overflow for absurd limits (found by fuzzing).
        assert_eq!(parse_header(&[0xff, 0xff], usize::MAX), Ok(0xffff));
    }
}
