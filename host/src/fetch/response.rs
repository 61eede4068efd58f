//! The HTTP/1.x response reader of `hytun fetch`, sans-IO: bytes in, the
//! parsed head and the decoded body out, and a verdict on whether the body
//! is complete.
//!
//! Limits protect against a hostile origin: the status line and each
//! header (or chunk-size / trailer) line are at most [`MAX_LINE`] bytes,
//! the whole header block at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! lines. The body is framed by `Transfer-Encoding: chunked` (decoded
//! here), else by `Content-Length`, else by the end of the stream — which
//! only the caller can judge (an authenticated FIN is complete, anything
//! else is not). Interim 1xx responses are skipped.

use core::fmt;

/// Longest status, header, chunk-size or trailer line.
pub const MAX_LINE: usize = 8 * 1024;
/// Largest header block (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in one response (trailers counted separately).
pub const MAX_HEADERS: usize = 100;

/// The parsed status line and the headers `fetch` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Numeric status.
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 404 Not Found`.
    pub status_line: String,
    /// `Content-Length`, if given (and not overridden by chunked framing).
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Location`, if given.
    pub location: Option<String>,
}

/// What is wrong with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The status line exceeded [`MAX_LINE`].
    StatusLineTooLong,
    /// A header line exceeded [`MAX_LINE`].
    HeaderLineTooLong,
    /// The header block exceeded [`MAX_HEAD`].
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// The first line is not an HTTP status line.
    BadStatusLine(String),
    /// `Content-Length` is not a number, or two disagree.
    BadContentLength,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferEncoding(String),
    /// A malformed chunk size or chunk terminator.
    BadChunk,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::StatusLineTooLong => {
                write!(f, "status line longer than {} KiB", MAX_LINE / 1024)
            }
            ResponseError::HeaderLineTooLong => {
                write!(f, "a header line is longer than {} KiB", MAX_LINE / 1024)
            }
            ResponseError::HeadTooLarge => {
                write!(f, "response headers larger than {} KiB", MAX_HEAD / 1024)
            }
            ResponseError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header lines"),
            ResponseError::BadStatusLine(l) => write!(f, "not an HTTP status line: {l:?}"),
            ResponseError::BadContentLength => f.write_str("invalid Content-Length"),
            ResponseError::UnsupportedTransferEncoding(t) => {
                write!(f, "unsupported Transfer-Encoding {t:?}")
            }
            ResponseError::BadChunk => f.write_str("malformed chunked encoding"),
        }
    }
}

impl std::error::Error for ResponseError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StatusLine,
    Headers,
    /// Body framed by length: bytes still expected.
    Length(u64),
    /// Body framed by the end of the stream.
    UntilEnd,
    Chunked(Chunk),
    /// The body is complete.
    Done,
}

/// Incremental response parser.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    line: Vec<u8>,
    head_bytes: usize,
    header_lines: usize,
    head: Option<Head>,
    body_len: u64,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser waiting for the status line.
    pub fn new() -> Self {
        ResponseParser {
            state: State::StatusLine,
            line: Vec::new(),
            head_bytes: 0,
            header_lines: 0,
            head: None,
            body_len: 0,
        }
    }

    /// The head, once the header block is complete.
    pub fn head(&self) -> Option<&Head> {
        if matches!(self.state, State::StatusLine | State::Headers) {
            None
        } else {
            self.head.as_ref()
        }
    }

    /// Decoded body bytes so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// True once the body is complete by its own framing (length reached,
    /// last chunk and trailers read). A body framed by the end of the
    /// stream is never complete here; see [`Self::complete_at_end`].
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True if the body is framed by the end of the stream (no length, not
    /// chunked): then it is complete exactly when the stream ended cleanly.
    pub fn complete_at_end(&self) -> bool {
        self.state == State::UntilEnd
    }

    /// Feeds response bytes; decoded body bytes are passed to `body`.
    /// Bytes after a complete body are ignored.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        body: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ResponseError> {
        while !input.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::StatusLine
                | State::Headers
                | State::Chunked(Chunk::Size)
                | State::Chunked(Chunk::DataEnd)
                | State::Chunked(Chunk::Trailers(_)) => {
                    let (used, line_done) = self.take_line(input)?;
                    input = &input[used..];
                    if line_done {
                        let line = std::mem::take(&mut self.line);
                        self.line_complete(&line)?;
                    }
                }
                State::Length(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    body(&input[..n]);
                    self.body_len += n as u64;
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                }
                State::UntilEnd => {
                    body(input);
                    self.body_len += input.len() as u64;
                    input = &[];
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    body(&input[..n]);
                    self.body_len += n as u64;
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                }
            }
        }
        Ok(())
    }

    /// Appends bytes of the current line; returns (bytes used, line ended).
    fn take_line(&mut self, input: &[u8]) -> Result<(usize, bool), ResponseError> {
        let (used, done) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (input.len(), false),
        };
        let in_head = matches!(self.state, State::StatusLine | State::Headers);
        if self.line.len() + used > MAX_LINE + 2 {
            return Err(match self.state {
                State::StatusLine => ResponseError::StatusLineTooLong,
                State::Headers | State::Chunked(Chunk::Trailers(_)) => {
                    ResponseError::HeaderLineTooLong
                }
                _ => ResponseError::BadChunk,
            });
        }
        if in_head {
            self.head_bytes += used;
            if self.head_bytes > MAX_HEAD {
                return Err(ResponseError::HeadTooLarge);
            }
        }
        self.line.extend_from_slice(&input[..used]);
        if done {
            // Strip LF and an optional CR.
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        }
        Ok((used, done))
    }

    fn line_complete(&mut self, line: &[u8]) -> Result<(), ResponseError> {
        match self.state {
            State::StatusLine => {
                let text = String::from_utf8_lossy(line).into_owned();
                let status = parse_status(&text)
                    .ok_or_else(|| ResponseError::BadStatusLine(shorten(&text)))?;
                self.head = Some(Head {
                    status,
                    status_line: text,
                    content_length: None,
                    chunked: false,
                    location: None,
                });
                self.header_lines = 0;
                self.state = State::Headers;
            }
            State::Headers if line.is_empty() => self.head_complete()?,
            State::Headers => {
                self.header_lines += 1;
                if self.header_lines > MAX_HEADERS {
                    return Err(ResponseError::TooManyHeaders);
                }
                let text = String::from_utf8_lossy(line);
                if let (Some((name, value)), Some(head)) = (text.split_once(':'), &mut self.head) {
                    let value = value.trim();
                    if name.eq_ignore_ascii_case("content-length") {
                        let n: u64 = value.parse().map_err(|_| ResponseError::BadContentLength)?;
                        if head.content_length.is_some_and(|m| m != n) {
                            return Err(ResponseError::BadContentLength);
                        }
                        head.content_length = Some(n);
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                            if coding.eq_ignore_ascii_case("chunked") {
                                head.chunked = true;
                            } else if !coding.eq_ignore_ascii_case("identity") {
                                return Err(ResponseError::UnsupportedTransferEncoding(shorten(
                                    coding,
                                )));
                            }
                        }
                    } else if name.eq_ignore_ascii_case("location") {
                        head.location = Some(shorten(value));
                    }
                }
            }
            State::Chunked(Chunk::Size) => {
                let text = core::str::from_utf8(line).map_err(|_| ResponseError::BadChunk)?;
                let hex = text.split(';').next().unwrap_or("").trim();
                if hex.is_empty() || hex.len() > 16 {
                    return Err(ResponseError::BadChunk);
                }
                let size = u64::from_str_radix(hex, 16).map_err(|_| ResponseError::BadChunk)?;
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            State::Chunked(Chunk::DataEnd) => {
                if !line.is_empty() {
                    return Err(ResponseError::BadChunk);
                }
                self.state = State::Chunked(Chunk::Size);
            }
            State::Chunked(Chunk::Trailers(n)) => {
                self.state = if line.is_empty() {
                    State::Done
                } else if n + 1 > MAX_HEADERS {
                    return Err(ResponseError::TooManyHeaders);
                } else {
                    State::Chunked(Chunk::Trailers(n + 1))
                };
            }
            State::Length(_) | State::UntilEnd | State::Chunked(Chunk::Data(_)) | State::Done => {}
        }
        Ok(())
    }

    fn head_complete(&mut self) -> Result<(), ResponseError> {
        let Some(head) = &self.head else {
            return Err(ResponseError::BadStatusLine(String::new()));
        };
        // Interim responses (100 Continue, 103 Early Hints) precede the
        // real one.
        if (100..200).contains(&head.status) && head.status != 101 {
            self.head = None;
            self.state = State::StatusLine;
            return Ok(());
        }
        self.state = if head.status == 204 || head.status == 304 {
            State::Done
        } else if head.chunked {
            State::Chunked(Chunk::Size)
        } else {
            match head.content_length {
                Some(0) => State::Done,
                Some(n) => State::Length(n),
                None => State::UntilEnd,
            }
        };
        Ok(())
    }
}

fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// At most 200 characters of hostile text for an error message.
fn shorten(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> (ResponseParser, Vec<u8>, Result<(), ResponseError>) {
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        for c in chunks {
            if let Err(e) = p.feed(c, &mut |b| body.extend_from_slice(b)) {
                return (p, body, Err(e));
            }
        }
        (p, body, Ok(()))
    }

    #[test]
    fn content_length_body_completes() {
        let (p, body, r) = parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"]);
        r.unwrap();
        assert_eq!(body, b"hello");
        assert!(p.is_done());
        assert_eq!(p.head().unwrap().status, 200);
    }

    #[test]
    fn short_content_length_body_is_not_done() {
        let (p, _, r) = parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhel"]);
        r.unwrap();
        assert!(!p.is_done() && !p.complete_at_end());
        assert_eq!(p.body_len(), 3);
    }

    #[test]
    fn unframed_body_depends_on_the_end() {
        let (p, body, r) = parse_all(&[b"HTTP/1.0 200 OK\nServer: x\n\nabc", b"def"]);
        r.unwrap();
        assert_eq!(body, b"abcdef");
        assert!(!p.is_done());
        assert!(p.complete_at_end());
    }

    #[test]
    fn chunked_body_is_decoded_byte_by_byte() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, chunked!\r\n0\r\nX-Trailer: y\r\n\r\n";
        let chunks: Vec<&[u8]> = raw.chunks(1).collect();
        let (p, body, r) = parse_all(&chunks);
        r.unwrap();
        assert_eq!(body, b"hello, chunked!");
        assert!(p.is_done());
    }

    #[test]
    fn chunked_without_last_chunk_is_not_done() {
        let (p, _, r) =
            parse_all(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"]);
        r.unwrap();
        assert!(!p.is_done() && !p.complete_at_end());
    }

    #[test]
    fn bad_chunks_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX\r\n",
            b"11111111111111111\r\n",
        ] {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(bad);
            let (_, _, r) = parse_all(&[&raw]);
            assert_eq!(r, Err(ResponseError::BadChunk), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = vec![b'a'; MAX_LINE + 10];
        let mut raw = b"HTTP/1.1 200 ".to_vec();
        raw.extend_from_slice(&long);
        assert_eq!(parse_all(&[&raw]).2, Err(ResponseError::StatusLineTooLong));

        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.extend_from_slice(&long);
        assert_eq!(parse_all(&[&raw]).2, Err(ResponseError::HeaderLineTooLong));

        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        assert_eq!(parse_all(&[&raw]).2, Err(ResponseError::TooManyHeaders));

        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        let line = format!("X: {}\r\n", "v".repeat(MAX_LINE - 10));
        for _ in 0..(MAX_HEAD / line.len() + 1) {
            raw.extend_from_slice(line.as_bytes());
        }
        assert_eq!(parse_all(&[&raw]).2, Err(ResponseError::HeadTooLarge));
    }

    #[test]
    fn head_fields_and_interim_responses() {
        let (p, _, r) = parse_all(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 301 Moved Permanently\r\nLocation: http://x/y\r\nContent-Length: 0\r\n\r\n",
        ]);
        r.unwrap();
        let h = p.head().unwrap();
        assert_eq!(h.status, 301);
        assert_eq!(h.status_line, "HTTP/1.1 301 Moved Permanently");
        assert_eq!(h.location.as_deref(), Some("http://x/y"));
        assert!(p.is_done());
    }

    #[test]
    fn garbage_and_conflicting_lengths_are_errors() {
        assert!(matches!(
            parse_all(&[b"SSH-2.0-OpenSSH\r\n"]).2,
            Err(ResponseError::BadStatusLine(_))
        ));
        assert_eq!(
            parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]).2,
            Err(ResponseError::BadContentLength)
        );
        assert!(matches!(
            parse_all(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"]).2,
            Err(ResponseError::UnsupportedTransferEncoding(_))
        ));
    }
}
