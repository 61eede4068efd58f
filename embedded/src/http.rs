//! A streaming check of the HTTP/1.x response read from the tunnel.
//!
//! The response arrives in pieces of at most one record (1 KiB). [`Response`]
//! keeps the first [`KEEP`] bytes (status line, headers and the start of the
//! body) in a fixed buffer for logging, finds the end of the header block
//! (`\r\n\r\n`) as the bytes go by, counts the body and searches it for the
//! expected marker with a Knuth–Morris–Pratt matcher, so a body of any
//! length is checked in O(1) memory and O(n) time.

use heapless::Vec;

/// Bytes of the response kept for the status line, headers and body prefix.
pub const KEEP: usize = 2048;
/// Longest marker supported (`build.rs` enforces the same limit).
pub const MAX_MARKER: usize = 64;

const HEADER_END: &[u8] = b"\r\n\r\n";

/// Why a response is not the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum HttpError {
    /// No complete header block within [`KEEP`] bytes (or before the end).
    Malformed,
    /// The status line is not `HTTP/1.x 200 ...`.
    BadStatus,
    /// The body does not contain the marker.
    MarkerMissing,
}

/// The incremental state of one response.
pub struct Response<'m> {
    kept: Vec<u8, KEEP>,
    /// Offset of the body in `kept`, once the header block ended.
    body_start: Option<usize>,
    /// How much of [`HEADER_END`] the last bytes matched.
    header_match: usize,
    body_len: usize,
    marker: &'m [u8],
    /// KMP failure function of `marker`.
    fail: [u8; MAX_MARKER],
    /// How much of `marker` the last body bytes matched.
    marker_match: usize,
    found: bool,
}

impl<'m> Response<'m> {
    /// A fresh response that must contain `marker` (1..=[`MAX_MARKER`]
    /// bytes; longer markers are cut, an empty one always matches).
    pub fn new(marker: &'m [u8]) -> Self {
        let marker = &marker[..marker.len().min(MAX_MARKER)];
        let mut fail = [0u8; MAX_MARKER];
        let mut k = 0usize;
        for i in 1..marker.len() {
            while k > 0 && marker[i] != marker[k] {
                k = usize::from(fail[k - 1]);
            }
            if marker[i] == marker[k] {
                k += 1;
            }
            fail[i] = k as u8;
        }
        Self {
            kept: Vec::new(),
            body_start: None,
            header_match: 0,
            body_len: 0,
            marker,
            fail,
            marker_match: 0,
            found: marker.is_empty(),
        }
    }

    /// Consumes the next piece of the response.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HttpError> {
        let mut rest = data;
        if self.body_start.is_none() {
            let mut used = 0;
            for &b in rest {
                used += 1;
                if self.kept.push(b).is_err() {
                    return Err(HttpError::Malformed);
                }
                self.header_match = if b == HEADER_END[self.header_match] {
                    self.header_match + 1
                } else if b == HEADER_END[0] {
                    1
                } else {
                    0
                };
                if self.header_match == HEADER_END.len() {
                    self.body_start = Some(self.kept.len());
                    break;
                }
            }
            rest = &rest[used..];
            if self.body_start.is_none() {
                return Ok(());
            }
        }
        let room = KEEP - self.kept.len();
        // Cannot fail: at most `room` bytes are added.
        let _ = self.kept.extend_from_slice(&rest[..rest.len().min(room)]);
        self.body_len += rest.len();
        self.scan(rest);
        Ok(())
    }

    fn scan(&mut self, body: &[u8]) {
        if self.found {
            return;
        }
        let m = self.marker;
        let mut k = self.marker_match;
        for &b in body {
            while k > 0 && b != m[k] {
                k = usize::from(self.fail[k - 1]);
            }
            if b == m[k] {
                k += 1;
                if k == m.len() {
                    self.found = true;
                    return;
                }
            }
        }
        self.marker_match = k;
    }

    /// The status line without its CRLF (what arrived of it so far).
    pub fn status_line(&self) -> &[u8] {
        let end = self
            .kept
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(self.kept.len());
        &self.kept[..end]
    }

    /// Body bytes received.
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// Up to `n` bytes of the start of the body.
    pub fn body_prefix(&self, n: usize) -> &[u8] {
        match self.body_start {
            Some(start) => {
                let body = &self.kept[start..];
                &body[..body.len().min(n)]
            }
            None => &[],
        }
    }

    /// Checks the complete response: a header block, status `200` on
    /// HTTP/1.0 or 1.1, and the marker in the body.
    pub fn finish(&self) -> Result<(), HttpError> {
        if self.body_start.is_none() {
            return Err(HttpError::Malformed);
        }
        let status = self.status_line();
        let ok = status.len() >= 12
            && (status.starts_with(b"HTTP/1.0 ") || status.starts_with(b"HTTP/1.1 "))
            && &status[9..12] == b"200"
            && status.get(12).is_none_or(|&b| b == b' ');
        if !ok {
            return Err(HttpError::BadStatus);
        }
        if !self.found {
            return Err(HttpError::MarkerMissing);
        }
        Ok(())
    }
}
