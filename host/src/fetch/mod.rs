//! `hytun fetch`: one HTTP GET through the tunnel, correct or failing.
//!
//! No local listener and no client loop: [`tunnel::Session`] sets up one
//! session (retrying a busy server with backoff until the fetch deadline)
//! and drives a single stream. The request is HTTP/1.1 with
//! `Connection: close`; [`response::ResponseParser`] reads the answer with
//! bounded status and header lines and decodes chunked bodies.
//!
//! The exit is 0 only for a 2xx answer whose body is provably complete:
//! `Content-Length` reached, the last chunk of a chunked body read, or, with
//! neither, the stream ended by an authenticated FIN. Everything else is an
//! error naming what happened ("tunnel lost after 4.8 MiB", "origin reset
//! the connection"). With `-o FILE` the body goes to `FILE.part`, renamed
//! to `FILE` only on success and removed otherwise; the body of a non-2xx
//! answer is never written.

pub mod response;
pub mod tunnel;

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hytun_core::{ConnectionError, StreamErrorCode};

use crate::allow::DestHost;
use crate::client::ClientOptions;
use response::{ResponseError, ResponseParser};
use tunnel::{Flow, Session, SetupError, StreamEnd};

/// How long `fetch` keeps trying to get a session from a busy server.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(30);

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host (name or address).
    pub host: DestHost,
    /// Port (80 by default).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`. `https://` is refused with a
    /// clear message: the tunnel carries TCP, and TLS would have to be
    /// spoken by a TLS-capable local client (use `-L` or the SOCKS proxy).
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: https is not supported by `hytun fetch` (it speaks plain HTTP); use `hytun client -D` with curl for TLS origins"
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, tail) = inner
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed '['"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url}: bad port"))?,
                None if tail.is_empty() => 80,
                None => return Err(format!("{url}: bad authority")),
            };
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{url}: bad port"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if port == 0 {
            return Err(format!("{url}: port 0"));
        }
        let host = DestHost::parse(&host).ok_or_else(|| format!("{url}: bad host '{host}'"))?;
        Ok(HttpUrl {
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// What a fetch returned.
#[derive(Debug)]
pub struct FetchResult {
    /// Numeric status.
    pub status: u16,
    /// The status line.
    pub status_line: String,
    /// Body bytes written.
    pub body_len: u64,
    /// Time to the first response byte.
    pub first_byte: Duration,
    /// Total time.
    pub total: Duration,
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// No session: server unreachable, key refused, or busy too long.
    Tunnel(SetupError),
    /// The server would not connect the stream to the origin.
    Refused {
        /// The origin.
        origin: String,
        /// Why.
        code: StreamErrorCode,
    },
    /// The server reset the stream: the origin reset its connection (or
    /// the server failed the stream).
    OriginReset {
        /// Body bytes received before.
        after: u64,
        /// The code the server gave.
        code: StreamErrorCode,
    },
    /// The session died while the response was incomplete.
    TunnelLost {
        /// Body bytes received before.
        after: u64,
        /// Why the session ended.
        error: ConnectionError,
    },
    /// The origin ended the response (clean FIN) before it was complete.
    Truncated {
        /// Body bytes received.
        got: u64,
        /// What was missing.
        what: String,
    },
    /// The stream could not be opened on the session.
    CannotOpen(String),
    /// The response is malformed or breaks a limit.
    BadResponse(ResponseError),
    /// The origin answered with a non-2xx status.
    Status {
        /// The status line.
        status_line: String,
        /// `Location` of a redirect.
        location: Option<String>,
    },
    /// Writing the body failed.
    Output(String),
}

/// `n` bytes as a short human figure.
pub fn human_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / 1_048_576.0)
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Tunnel(e) => write!(f, "{e}"),
            FetchError::Refused { origin, code } => {
                write!(f, "the server could not connect to {origin}: {code}")
            }
            FetchError::OriginReset { after, code } => write!(
                f,
                "origin reset the connection after {} of the response (stream reset by the server: {code})",
                human_bytes(*after)
            ),
            FetchError::TunnelLost { after, error } => write!(
                f,
                "tunnel lost after {} of the response body: {error}",
                human_bytes(*after)
            ),
            FetchError::Truncated { got, what } => write!(
                f,
                "origin closed the connection after {} of the body: {what}",
                human_bytes(*got)
            ),
            FetchError::CannotOpen(e) => write!(f, "cannot open a stream: {e}"),
            FetchError::BadResponse(e) => write!(f, "bad response from the origin: {e}"),
            FetchError::Status {
                status_line,
                location,
            } => {
                let line = status_line.trim();
                let shown = line.split_once(' ').map_or(line, |(_, rest)| rest);
                write!(f, "origin answered HTTP {shown}")?;
                if let Some(loc) = location {
                    write!(f, " (Location: {loc})")?;
                }
                Ok(())
            }
            FetchError::Output(e) => write!(f, "cannot write the body: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// The request `fetch` sends.
fn request(url: &HttpUrl) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hytun-fetch/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.host.with_port(url.port),
        env!("CARGO_PKG_VERSION")
    )
}

/// Progress on stderr for big bodies when it is a terminal.
struct Progress {
    show: bool,
    last: Instant,
}

impl Progress {
    fn update(&mut self, got: u64, total: Option<u64>) {
        if !self.show || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let mib = got as f64 / 1_048_576.0;
        match total {
            // A closed terminal only loses the progress line.
            Some(t) if t > 0 => {
                _ = write!(
                    io::stderr(),
                    "\r  {mib:.1} / {:.1} MiB ({:.0}%)",
                    t as f64 / 1_048_576.0,
                    100.0 * got as f64 / t as f64
                )
            }
            _ => _ = write!(io::stderr(), "\r  {mib:.1} MiB"),
        }
    }

    fn done(&self, got: u64) {
        if self.show {
            let _ = writeln!(
                io::stderr(),
                "\r  {:.1} MiB done{}",
                got as f64 / 1_048_576.0,
                " ".repeat(20)
            );
        }
    }
}

/// Runs the fetch; the body of a 2xx answer goes to `out`. Succeeds only
/// when the body is complete; a non-2xx answer is [`FetchError::Status`].
pub fn fetch(
    url: &HttpUrl,
    opts: ClientOptions,
    out: &mut dyn Write,
    progress: bool,
) -> Result<FetchResult, FetchError> {
    let start = Instant::now();
    let mut session =
        Session::establish(&opts, start + SETUP_DEADLINE).map_err(FetchError::Tunnel)?;
    let result = exchange(url, &mut session, out, progress, start);
    session.close();
    result
}

fn exchange(
    url: &HttpUrl,
    session: &mut Session,
    out: &mut dyn Write,
    progress: bool,
    start: Instant,
) -> Result<FetchResult, FetchError> {
    let mut parser = ResponseParser::new();
    let mut first_byte = None;
    let mut failure: Option<FetchError> = None;
    let mut progress = Progress {
        show: progress && io::stderr().is_terminal(),
        last: Instant::now(),
    };
    let req = request(url);
    let mut body = Vec::new();
    let end = session.exchange(
        url.host.destination(url.port),
        req.as_bytes(),
        &mut |data| {
            first_byte.get_or_insert_with(|| start.elapsed());
            // Decoded body bytes are held until the status is known to be
            // 2xx: an error body is never written.
            body.clear();
            if let Err(e) = parser.feed(data, &mut |b| body.extend_from_slice(b)) {
                failure = Some(FetchError::BadResponse(e));
                return Flow::Done;
            }
            if let Some(head) = parser.head() {
                if !(200..300).contains(&head.status) {
                    failure = Some(FetchError::Status {
                        status_line: head.status_line.clone(),
                        location: head.location.clone(),
                    });
                    return Flow::Done;
                }
                if let Err(e) = out.write_all(&body) {
                    failure = Some(FetchError::Output(e.to_string()));
                    return Flow::Done;
                }
                progress.update(parser.body_len(), head.content_length);
            }
            if parser.is_done() {
                Flow::Done
            } else {
                Flow::More
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    let got = parser.body_len();
    let complete = match end {
        StreamEnd::Satisfied => parser.is_done(),
        StreamEnd::Fin => {
            // An authenticated FIN: a body framed by the end of the stream
            // is complete; a declared one must have been complete already.
            if parser.is_done() || parser.complete_at_end() {
                true
            } else {
                let what = match parser.head() {
                    None => "no complete response head".to_string(),
                    Some(h) if h.chunked => "the chunked body had no last chunk".to_string(),
                    Some(h) => format!(
                        "Content-Length is {} but only {got} bytes came",
                        h.content_length.unwrap_or(0)
                    ),
                };
                return Err(FetchError::Truncated { got, what });
            }
        }
        StreamEnd::Refused(code) => {
            return Err(FetchError::Refused {
                origin: url.host.with_port(url.port),
                code,
            });
        }
        StreamEnd::Reset(code) => return Err(FetchError::OriginReset { after: got, code }),
        StreamEnd::Lost(error) => return Err(FetchError::TunnelLost { after: got, error }),
        StreamEnd::CannotOpen(e) => return Err(FetchError::CannotOpen(e.to_string())),
    };
    let Some(head) = parser.head().filter(|_| complete) else {
        return Err(FetchError::Truncated {
            got,
            what: "the response is incomplete".into(),
        });
    };
    out.flush().map_err(|e| FetchError::Output(e.to_string()))?;
    progress.done(got);
    Ok(FetchResult {
        status: head.status,
        status_line: head.status_line.clone(),
        body_len: got,
        first_byte: first_byte.unwrap_or_default(),
        total: start.elapsed(),
    })
}

/// `FILE.part`, where the body is written until it is complete.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    path.with_file_name(name)
}

/// Fetches into `path`: the body is written to `path.part`, which is
/// renamed to `path` only when the fetch succeeded and removed otherwise,
/// so no file at `path` ever looks complete when it is not.
pub fn fetch_to_file(
    url: &HttpUrl,
    opts: ClientOptions,
    path: &Path,
    progress: bool,
) -> Result<FetchResult, FetchError> {
    let part = part_path(path);
    let mut file =
        File::create(&part).map_err(|e| FetchError::Output(format!("{}: {e}", part.display())))?;
    let result = fetch(url, opts, &mut file, progress).and_then(|r| {
        file.sync_all()
            .map_err(|e| FetchError::Output(format!("{}: {e}", part.display())))?;
        drop(file);
        std::fs::rename(&part, path)
            .map_err(|e| FetchError::Output(format!("{}: {e}", path.display())))?;
        Ok(r)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_sits_beside_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/out/page.html")),
            PathBuf::from("/tmp/out/page.html.part")
        );
    }

    #[test]
    fn error_wording_names_the_origin() {
        let e = FetchError::Status {
            status_line: "HTTP/1.1 301 Moved Permanently".into(),
            location: Some("http://x/new".into()),
        };
        assert_eq!(
            e.to_string(),
            "origin answered HTTP 301 Moved Permanently (Location: http://x/new)"
        );
        let e = FetchError::TunnelLost {
            after: 5 * 1024 * 1024 - 200 * 1024,
            error: ConnectionError::Truncated,
        };
        assert!(
            e.to_string().starts_with("tunnel lost after 4.8 MiB"),
            "{e}"
        );
    }

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/a?b").unwrap();
        assert_eq!(u.port, 8080);
        assert_eq!(u.path, "/a?b");
        let u = HttpUrl::parse("http://example.com").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = HttpUrl::parse("http://[::1]:81/x").unwrap();
        assert_eq!(u.host, DestHost::Ip("::1".parse().unwrap()));
        assert!(HttpUrl::parse("https://x/").unwrap_err().contains("https"));
        assert!(HttpUrl::parse("ftp://x/").is_err());
        assert!(HttpUrl::parse("http://x:0/").is_err());
        assert!(HttpUrl::parse("http://x:99999/").is_err());
    }
}
