//! `hytun fetch`: one HTTP GET through the tunnel.
//!
//! The command starts a client loop in a thread with a single local forward
//! (127.0.0.1, any port) to the URL's host and port, sends an HTTP/1.0 GET
//! to that forward (HTTP/1.0 so the origin frames the body by length or by
//! closing, never chunked), and streams the body to the given writer.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::allow::DestHost;
use crate::client::{Client, ClientError, ClientOptions, ListenerKind};

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
    /// The tunnel client failed (e.g. authentication).
    Client(ClientError),
    /// The HTTP exchange failed.
    Io(io::Error),
    /// The response was not HTTP.
    BadResponse(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Client(e) => write!(f, "tunnel failed: {e}"),
            FetchError::Io(e) => write!(f, "request through the tunnel failed: {e}"),
            FetchError::BadResponse(s) => write!(f, "bad response: {s}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Runs the fetch; the body goes to `out`.
pub fn fetch(
    url: &HttpUrl,
    mut opts: ClientOptions,
    out: &mut dyn Write,
    progress: bool,
) -> Result<FetchResult, FetchError> {
    opts.listeners = vec![(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ListenerKind::Forward {
            host: url.host.clone(),
            port: url.port,
        },
    )];
    opts.fail_fast_on_auth = true;
    opts.fail_fast_on_first_attempt = true;
    let client = Client::bind(opts).map_err(FetchError::Client)?;
    let local = client.local_addrs()[0];
    let stop = client.stop_handle();
    let worker = thread::Builder::new()
        .name("hytun-client".into())
        .spawn(move || client.run(false))
        .map_err(FetchError::Io)?;
    let result = get(url, local, out, progress);
    stop.stop();
    let client_result = worker.join().unwrap_or(Ok(()));
    match (result, client_result) {
        (Ok(r), _) => Ok(r),
        // The client's own error explains a broken request best.
        (Err(_), Err(e)) => Err(FetchError::Client(e)),
        (Err(e), Ok(())) => Err(e),
    }
}

fn get(
    url: &HttpUrl,
    local: SocketAddr,
    out: &mut dyn Write,
    progress: bool,
) -> Result<FetchResult, FetchError> {
    let start = Instant::now();
    let mut sock = TcpStream::connect(local).map_err(FetchError::Io)?;
    sock.set_nodelay(true).map_err(FetchError::Io)?;
    let host_header = url.host.with_port(url.port);
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: hytun-fetch/{}\r\nAccept: */*\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION")
    );
    sock.write_all(req.as_bytes()).map_err(FetchError::Io)?;
    let mut reader = BufReader::with_capacity(64 * 1024, sock);
    let mut status_line = String::new();
    let n = reader.read_line(&mut status_line).map_err(FetchError::Io)?;
    if n == 0 {
        return Err(FetchError::BadResponse(
            "connection closed before any response (see the log above)".into(),
        ));
    }
    let first_byte = start.elapsed();
    let status_line = status_line.trim_end().to_string();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| {
            FetchError::BadResponse(format!("not an HTTP status line: {status_line:?}"))
        })?;
    let mut content_length: Option<u64> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_err(FetchError::Io)? == 0 {
            return Err(FetchError::BadResponse("headers truncated".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().ok();
        }
    }
    let show =
        progress && io::stderr().is_terminal() && content_length.is_none_or(|n| n > (1 << 20));
    let mut body_len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_report = Instant::now();
    loop {
        if content_length.is_some_and(|n| body_len >= n) {
            break;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::Io(e)),
        };
        out.write_all(&buf[..n]).map_err(FetchError::Io)?;
        body_len += n as u64;
        if show && last_report.elapsed() > Duration::from_millis(200) {
            last_report = Instant::now();
            let mib = body_len as f64 / 1048576.0;
            match content_length {
                Some(total) => eprint!(
                    "\r  {mib:.1} / {:.1} MiB ({:.0}%)",
                    total as f64 / 1048576.0,
                    100.0 * body_len as f64 / total as f64
                ),
                None => eprint!("\r  {mib:.1} MiB"),
            }
        }
    }
    if show {
        eprintln!(
            "\r  {:.1} MiB done{}",
            body_len as f64 / 1048576.0,
            " ".repeat(20)
        );
    }
    out.flush().map_err(FetchError::Io)?;
    if let Some(n) = content_length
        && body_len < n
    {
        return Err(FetchError::BadResponse(format!(
            "body truncated: {body_len} of {n} bytes"
        )));
    }
    Ok(FetchResult {
        status,
        status_line,
        body_len,
        first_byte,
        total: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
