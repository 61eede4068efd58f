//! Sans-IO parser for the request head a client sends to the HTTP proxy
//! listener, and builders for the proxy's own responses.
//!
//! [`HttpProxyParser`] buffers input until the blank line ending the head
//! (`\r\n\r\n`, at most [`MAX_HEAD_BYTES`]) and never consumes a byte past
//! it: `input[consumed..]` of the chunk that completed the head is body or
//! tunnel payload that the caller must forward. Two request forms are served:
//! `CONNECT host:port` (a raw tunnel; the caller answers with
//! [`ProxyStatus::Established`]) and absolute-form requests for `http://`
//! URLs with any other method. For the latter the head is rewritten to
//! origin-form (`GET /path HTTP/1.1`), `Host` is set from the URL, the
//! hop-by-hop headers (`Proxy-Connection`, `Proxy-Authorization`,
//! `Keep-Alive`, `Connection` and headers it names) are removed and
//! `Connection: close` is forced. Each absolute-form request therefore uses
//! its own tunnel stream: the origin closes after one response, and a client
//! wanting another request opens a new proxy connection (no keep-alive or
//! pipelining across requests). Obsolete line folding, whitespace before a
//! header colon and bare CR/LF are rejected (request-smuggling hygiene).

use std::fmt;

use crate::allow::{DestHost, parse_port, split_host_port};

/// Largest request head accepted; larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A complete proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: answer 200 and relay raw bytes both ways.
    Connect {
        /// Destination host.
        host: DestHost,
        /// Destination port.
        port: u16,
        /// Bytes of the last input that were head; the rest is payload.
        consumed: usize,
    },
    /// An absolute-form request: send `head`, then the payload, to the origin.
    Forward {
        /// Destination host.
        host: DestHost,
        /// Destination port (80 when the URL has none).
        port: u16,
        /// The rewritten origin-form request head, ending in `\r\n\r\n`.
        head: Vec<u8>,
        /// Bytes of the last input that were head; the rest is request body.
        consumed: usize,
    },
}

/// Incremental request-head parser for one client connection.
#[derive(Debug, Clone, Default)]
pub struct HttpProxyParser {
    buf: Vec<u8>,
    finished: bool,
}

impl HttpProxyParser {
    /// A parser waiting for the first byte of a request.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns `Ok(None)` while the head is incomplete (all of
    /// `input` was consumed).
    ///
    /// # Errors
    /// A malformed or unsupported request; answer with
    /// [`HttpProxyError::response`] and close.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<ProxyRequest>, HttpProxyError> {
        if self.finished {
            return Err(HttpProxyError::Finished);
        }
        let old_len = self.buf.len();
        let search_from = old_len.saturating_sub(3);
        let room = MAX_HEAD_BYTES + 1 - old_len.min(MAX_HEAD_BYTES);
        // Look at no more than could still belong to an acceptable head.
        let window = &input[..input.len().min(room)];
        self.buf.extend_from_slice(window);
        let Some(pos) = find_head_end(&self.buf[search_from..]) else {
            if self.buf.len() > MAX_HEAD_BYTES {
                self.finished = true;
                return Err(HttpProxyError::HeadTooLarge);
            }
            return Ok(None);
        };
        let end = search_from + pos + 4;
        if end > MAX_HEAD_BYTES {
            self.finished = true;
            return Err(HttpProxyError::HeadTooLarge);
        }
        self.buf.truncate(end);
        self.finished = true;
        let consumed = end - old_len;
        let head = std::mem::take(&mut self.buf);
        parse_head(&head, consumed).map(Some)
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

fn parse_head(head: &[u8], consumed: usize) -> Result<ProxyRequest, HttpProxyError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpProxyError::NotText)?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    if request_line.contains(['\r', '\n']) {
        return Err(HttpProxyError::BadRequestLine);
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpProxyError::BadRequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) || target.is_empty() {
        return Err(HttpProxyError::BadRequestLine);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpProxyError::UnsupportedVersion(truncate(version)));
    }
    let headers = lines
        .enumerate()
        .map(|(i, line)| parse_header(line).ok_or(HttpProxyError::BadHeader { line: i + 2 }))
        .collect::<Result<Vec<_>, _>>()?;

    if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        return Ok(ProxyRequest::Connect {
            host,
            port,
            consumed,
        });
    }

    let Some(scheme_end) = target.find("://") else {
        return Err(HttpProxyError::NotAbsoluteForm);
    };
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(HttpProxyError::UnsupportedScheme(truncate(scheme)));
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (host, port) = parse_authority(authority, Some(80))?;
    let mut path = &rest[authority_end..];
    if let Some(hash) = path.find('#') {
        path = &path[..hash];
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };

    Ok(ProxyRequest::Forward {
        host,
        port,
        head: rewrite_head(method, &path, version, authority, &headers),
        consumed,
    })
}

/// Parses `host[:port]`; `default_port` is used when the port is absent or
/// empty, and `None` makes the port mandatory (CONNECT).
fn parse_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(DestHost, u16), HttpProxyError> {
    let bad = || HttpProxyError::BadAuthority(truncate(authority));
    if authority.contains('@') {
        return Err(HttpProxyError::CredentialsInUrl);
    }
    let bare_host = authority.ends_with(']') || !authority.contains(':');
    let (host, port) = if bare_host {
        (authority, None)
    } else {
        let (h, p) = split_host_port(authority).ok_or_else(bad)?;
        (h, (!p.is_empty()).then_some(p))
    };
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p).ok_or_else(bad)?,
        (None, Some(d)) => d,
        (None, None) => return Err(HttpProxyError::MissingPort(truncate(authority))),
    };
    let host = DestHost::parse(host).ok_or_else(bad)?;
    Ok((host, port))
}

/// A header line split into name and raw line.
struct Header<'a> {
    name: &'a str,
    value: &'a str,
    line: &'a str,
}

fn parse_header(line: &str) -> Option<Header<'_>> {
    if line.contains(['\r', '\n']) {
        return None;
    }
    let (name, value) = line.split_once(':')?;
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        // Also rejects obs-fold lines and whitespace before the colon.
        return None;
    }
    Some(Header {
        name,
        value: value.trim_matches([' ', '\t']),
        line,
    })
}

fn rewrite_head(
    method: &str,
    path: &str,
    version: &str,
    authority: &str,
    headers: &[Header<'_>],
) -> Vec<u8> {
    // Headers named in Connection are hop-by-hop too, except the ones that
    // frame the message or name the origin, which a client must not strip.
    let named_by_connection: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| {
            !t.is_empty() && !matches!(t.as_str(), "host" | "content-length" | "transfer-encoding")
        })
        .collect();
    let dropped = |name: &str| {
        let lower = name.to_ascii_lowercase();
        matches!(
            lower.as_str(),
            "host" | "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive"
        ) || named_by_connection.contains(&lower)
    };

    let mut out = format!("{method} {path} {version}\r\nHost: {authority}\r\n");
    for h in headers.iter().filter(|h| !dropped(h.name)) {
        out.push_str(h.line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Keeps client-supplied text in errors short and printable.
fn truncate(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The responses the proxy itself sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyStatus {
    /// 200 Connection established (CONNECT succeeded).
    Established,
    /// 400 Bad Request.
    BadRequest,
    /// 403 Forbidden (destination not allowed by the server).
    Forbidden,
    /// 405 Method Not Allowed.
    MethodNotAllowed,
    /// 431 Request Header Fields Too Large.
    HeadTooLarge,
    /// 502 Bad Gateway (connection refused or destination unreachable).
    BadGateway,
    /// 503 Service Unavailable (the server is out of a resource; retry).
    Unavailable,
    /// 504 Gateway Timeout.
    GatewayTimeout,
    /// 505 HTTP Version Not Supported.
    VersionNotSupported,
}

impl ProxyStatus {
    /// The numeric status code.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Self::Established => 200,
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::MethodNotAllowed => 405,
            Self::HeadTooLarge => 431,
            Self::BadGateway => 502,
            Self::Unavailable => 503,
            Self::GatewayTimeout => 504,
            Self::VersionNotSupported => 505,
        }
    }

    /// The reason phrase.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Established => "Connection established",
            Self::BadRequest => "Bad Request",
            Self::Forbidden => "Forbidden",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::HeadTooLarge => "Request Header Fields Too Large",
            Self::BadGateway => "Bad Gateway",
            Self::Unavailable => "Service Unavailable",
            Self::GatewayTimeout => "Gateway Timeout",
            Self::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// The full response, with `detail` as a plain-text body (ignored for 200).
    #[must_use]
    pub fn response(self, detail: &str) -> Vec<u8> {
        response(self.code(), self.reason(), detail)
    }
}

/// Builds a response. A 2xx is the bare status line (a 2xx answer to
/// CONNECT must carry no body headers); any other status gets a plain-text
/// body (`body` plus a newline, or the reason when `body` is empty),
/// `Content-Length` and `Connection: close`. CR and LF in `reason` and
/// `body` are replaced so the caller cannot inject headers.
#[must_use]
pub fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let reason = clean(reason);
    if (200..300).contains(&status) {
        return format!("HTTP/1.1 {status} {reason}\r\n\r\n").into_bytes();
    }
    let body = if body.is_empty() {
        format!("{status} {reason}\n")
    } else {
        format!("{}\n", clean(body))
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Why a proxy request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpProxyError {
    /// The head exceeded [`MAX_HEAD_BYTES`] (431).
    HeadTooLarge,
    /// The head is not valid UTF-8 text (400).
    NotText,
    /// The request line is not `METHOD TARGET VERSION` (400).
    BadRequestLine,
    /// Not HTTP/1.0 or HTTP/1.1 (505).
    UnsupportedVersion(String),
    /// A header line is malformed; `line` is its 1-based line in the head (400).
    BadHeader {
        /// 1-based line number within the head.
        line: usize,
    },
    /// CONNECT target without a port (400).
    MissingPort(String),
    /// The host or port in the target is invalid (400).
    BadAuthority(String),
    /// `user:pass@` in the target URL (400).
    CredentialsInUrl,
    /// A non-CONNECT request whose target is not an absolute URL (400).
    NotAbsoluteForm,
    /// An absolute URL whose scheme is not `http` (400).
    UnsupportedScheme(String),
    /// `feed` was called after the head was complete or rejected.
    Finished,
}

impl HttpProxyError {
    /// The status to answer with.
    #[must_use]
    pub fn status(&self) -> ProxyStatus {
        match self {
            Self::HeadTooLarge => ProxyStatus::HeadTooLarge,
            Self::UnsupportedVersion(_) => ProxyStatus::VersionNotSupported,
            _ => ProxyStatus::BadRequest,
        }
    }

    /// The complete response to send before closing.
    #[must_use]
    pub fn response(&self) -> Vec<u8> {
        self.status().response(&self.to_string())
    }
}

impl fmt::Display for HttpProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadTooLarge => write!(f, "request head larger than {MAX_HEAD_BYTES} bytes"),
            Self::NotText => f.write_str("request head is not valid UTF-8 text"),
            Self::BadRequestLine => {
                f.write_str("malformed request line (expected 'METHOD TARGET HTTP/1.1')")
            }
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version '{v}' (HTTP/1.0 and 1.1 only)"
                )
            }
            Self::BadHeader { line } => write!(f, "malformed header on line {line}"),
            Self::MissingPort(a) => write!(f, "CONNECT target '{a}' has no port"),
            Self::BadAuthority(a) => write!(f, "invalid host or port in '{a}'"),
            Self::CredentialsInUrl => f.write_str("credentials in the URL are not supported"),
            Self::NotAbsoluteForm => f.write_str(
                "this is a proxy: send absolute URLs (http://host/path) or CONNECT host:port",
            ),
            Self::UnsupportedScheme(s) => write!(
                f,
                "scheme '{s}' is not supported for plain proxying; only http:// \
                 (use CONNECT for https)"
            ),
            Self::Finished => f.write_str("request head already parsed"),
        }
    }
}

impl std::error::Error for HttpProxyError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn parse_all(input: &[u8]) -> Result<ProxyRequest, HttpProxyError> {
        match HttpProxyParser::new().feed(input)? {
            Some(r) => Ok(r),
            None => panic!("head incomplete"),
        }
    }

    fn forward_head(input: &[u8]) -> String {
        match parse_all(input) {
            Ok(ProxyRequest::Forward { head, .. }) => match String::from_utf8(head) {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn connect_byte_by_byte_keeps_payload() {
        let input =
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01";
        let mut parser = HttpProxyParser::new();
        for (i, byte) in input.iter().enumerate() {
            match parser.feed(std::slice::from_ref(byte)) {
                Ok(None) => {}
                Ok(Some(ProxyRequest::Connect {
                    host,
                    port,
                    consumed,
                })) => {
                    assert_eq!(host, DestHost::Domain("example.com".into()));
                    assert_eq!(port, 443);
                    assert_eq!(consumed, 1);
                    assert_eq!(&input[i + 1..], b"\x16\x03\x01");
                    assert_eq!(parser.feed(b"x"), Err(HttpProxyError::Finished));
                    return;
                }
                other => panic!("byte {i}: unexpected {other:?}"),
            }
        }
        panic!("never completed");
    }

    #[test]
    fn split_terminator_across_feeds() {
        let mut parser = HttpProxyParser::new();
        assert_eq!(parser.feed(b"CONNECT a.b:1 HTTP/1.1\r\n\r"), Ok(None));
        match parser.feed(b"\nrest") {
            Ok(Some(ProxyRequest::Connect { consumed, .. })) => assert_eq!(consumed, 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn connect_ipv6_and_errors() {
        match parse_all(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n") {
            Ok(ProxyRequest::Connect { host, port, .. }) => {
                assert_eq!(host, DestHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
                assert_eq!(port, 8443);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_all(b"CONNECT example.com HTTP/1.1\r\n\r\n"),
            Err(HttpProxyError::MissingPort(_))
        ));
        assert!(matches!(
            parse_all(b"CONNECT ::1:443 HTTP/1.1\r\n\r\n"),
            Err(HttpProxyError::BadAuthority(_))
        ));
        assert!(matches!(
            parse_all(b"CONNECT a.b:99999 HTTP/1.1\r\n\r\n"),
            Err(HttpProxyError::BadAuthority(_))
        ));
    }

    #[test]
    fn absolute_form_is_rewritten() {
        let input = b"GET http://Example.com:8080/a/b?q=1#frag HTTP/1.1\r\n\
            Host: wrong.example\r\n\
            User-Agent: t\r\n\
            Proxy-Connection: keep-alive\r\n\
            Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
            Connection: keep-alive, X-Trace\r\n\
            X-Trace: 1\r\n\
            Keep-Alive: timeout=5\r\n\
            Accept: */*\r\n\r\n";
        match parse_all(input) {
            Ok(ProxyRequest::Forward {
                host, port, head, ..
            }) => {
                assert_eq!(host, DestHost::Domain("Example.com".into()));
                assert_eq!(port, 8080);
                assert_eq!(
                    String::from_utf8_lossy(&head),
                    "GET /a/b?q=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUser-Agent: t\r\n\
                     Accept: */*\r\nConnection: close\r\n\r\n"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_port_and_path_default() {
        match parse_all(b"HEAD http://example.com HTTP/1.0\r\n\r\n") {
            Ok(ProxyRequest::Forward {
                port, head, host, ..
            }) => {
                assert_eq!(port, 80);
                assert_eq!(host, DestHost::Domain("example.com".into()));
                assert!(head.starts_with(b"HEAD / HTTP/1.0\r\nHost: example.com\r\n"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let head = forward_head(b"GET http://[::1]?x HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("GET /?x HTTP/1.1\r\nHost: [::1]\r\n"),
            "{head}"
        );
        let head = forward_head(b"GET http://a.b:/p HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("GET /p HTTP/1.1\r\n"), "{head}");
    }

    #[test]
    fn pipelined_body_bytes_are_not_consumed() {
        let input = b"POST http://a.b/up HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        match parse_all(input) {
            Ok(ProxyRequest::Forward { consumed, head, .. }) => {
                assert_eq!(&input[consumed..], b"hello");
                let head = String::from_utf8_lossy(&head).into_owned();
                assert!(head.contains("\r\nContent-Length: 5\r\n"), "{head}");
                assert!(head.ends_with("Connection: close\r\n\r\n"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_head_is_431() {
        let mut parser = HttpProxyParser::new();
        assert_eq!(parser.feed(b"GET http://a.b/ HTTP/1.1\r\n"), Ok(None));
        let filler = format!("X-Fill: {}\r\n", "a".repeat(1000));
        let mut result = Ok(None);
        for _ in 0..20 {
            result = parser.feed(filler.as_bytes());
            if result.is_err() {
                break;
            }
        }
        let err = match result {
            Err(e) => e,
            Ok(r) => panic!("accepted oversized head: {r:?}"),
        };
        assert_eq!(err, HttpProxyError::HeadTooLarge);
        assert_eq!(err.status().code(), 431);
        assert!(err.response().starts_with(b"HTTP/1.1 431 "));
        // A head of exactly the limit is accepted.
        let line = b"CONNECT a.b:1 HTTP/1.1\r\n";
        let pad = MAX_HEAD_BYTES - line.len() - "X: \r\n\r\n".len();
        let exact = format!("CONNECT a.b:1 HTTP/1.1\r\nX: {}\r\n\r\n", "p".repeat(pad));
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        assert!(parse_all(exact.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_requests_are_400() {
        type Check = fn(&HttpProxyError) -> bool;
        let cases: [(&[u8], Check); 8] = [
            (b"GET /index.html HTTP/1.1\r\n\r\n", |e| {
                *e == HttpProxyError::NotAbsoluteForm
            }),
            (
                b"GET https://a.b/ HTTP/1.1\r\n\r\n",
                |e| matches!(e, HttpProxyError::UnsupportedScheme(s) if s == "https"),
            ),
            (b"GET http://u:p@a.b/ HTTP/1.1\r\n\r\n", |e| {
                *e == HttpProxyError::CredentialsInUrl
            }),
            (b"GET  http://a.b/ HTTP/1.1\r\n\r\n", |e| {
                *e == HttpProxyError::BadRequestLine
            }),
            (b"GET http://a.b/ HTTP/1.1\r\nBad Header: x\r\n\r\n", |e| {
                *e == HttpProxyError::BadHeader { line: 2 }
            }),
            (
                b"GET http://a.b/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
                |e| *e == HttpProxyError::BadHeader { line: 3 },
            ),
            (b"GET http://a.b/ HTTP/1.1\r\nA: b\nC: d\r\n\r\n", |e| {
                *e == HttpProxyError::BadHeader { line: 2 }
            }),
            (b"GET http://a.b/ \xff\r\n\r\n", |e| {
                *e == HttpProxyError::NotText
            }),
        ];
        for (input, check) in cases {
            match parse_all(input) {
                Err(e) => {
                    assert!(check(&e), "{}: {e:?}", String::from_utf8_lossy(input));
                    assert_eq!(e.status(), ProxyStatus::BadRequest);
                }
                Ok(r) => panic!("accepted {r:?}"),
            }
        }
        let e = parse_all(b"GET http://a.b/ HTTP/2\r\n\r\n").unwrap_err();
        assert_eq!(e.status().code(), 505);
    }

    #[test]
    fn response_builders() {
        assert_eq!(
            ProxyStatus::Established.response("ignored"),
            b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()
        );
        let r = String::from_utf8(ProxyStatus::Forbidden.response("destination not allowed"))
            .unwrap_or_default();
        assert_eq!(
            r,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 24\r\nConnection: close\r\n\r\ndestination not allowed\n"
        );
        for (status, code) in [
            (ProxyStatus::BadGateway, 502),
            (ProxyStatus::GatewayTimeout, 504),
            (ProxyStatus::BadRequest, 400),
            (ProxyStatus::MethodNotAllowed, 405),
        ] {
            assert_eq!(status.code(), code);
            let bytes = status.response("");
            assert!(bytes.starts_with(format!("HTTP/1.1 {code} ").as_bytes()));
        }
        let injected =
            String::from_utf8(response(400, "Bad\r\nX: y", "a\r\nb")).unwrap_or_default();
        assert!(
            injected.starts_with("HTTP/1.1 400 Bad  X: y\r\n"),
            "{injected}"
        );
        assert!(injected.ends_with("\r\n\r\na  b\n"), "{injected}");
    }
}
