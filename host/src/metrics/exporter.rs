//! The `/metrics` endpoint: a small HTTP/1.1 server on its own thread (a
//! `mio` loop, never the tunnel's), answering `GET /metrics` with the
//! exposition a render function produces, then closing the connection.
//!
//! It is a resource like any other: at most [`MAX_SCRAPES`] connections
//! are served at once (more are accepted and closed at once), a request
//! head may hold [`MAX_REQUEST`] bytes, and a whole exchange must finish
//! within [`SCRAPE_TIMEOUT`], so a slow or hostile scraper can hold neither
//! memory nor the tunnel. There is no authentication: bind it to loopback
//! (a warning is logged otherwise).
//!
//! Content negotiation: a scraper whose `Accept` names
//! `application/openmetrics-text` (Prometheus does) gets OpenMetrics;
//! anything else gets the Prometheus text format 0.0.4 (curl, promtool).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Scrapes served at once.
pub const MAX_SCRAPES: usize = 4;
/// The most bytes of a request head.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time for a whole exchange, from accept to the last response byte.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Produces the exposition at scrape time.
pub type Render = Arc<dyn Fn(Format) -> String + Send + Sync>;

/// Why the endpoint could not start.
#[derive(Debug)]
pub enum ExporterError {
    /// Binding the metrics address failed.
    Bind(SocketAddr, io::Error),
    /// Setting up its poll loop or thread failed.
    Io(io::Error),
}

impl std::fmt::Display for ExporterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExporterError::Bind(addr, e) => write!(f, "cannot serve metrics on {addr}: {e}"),
            ExporterError::Io(e) => write!(f, "metrics endpoint setup failed: {e}"),
        }
    }
}

impl std::error::Error for ExporterError {}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET` (or `HEAD`: `body` false) `/metrics` in `format`.
    Metrics {
        /// Send the body (false for HEAD).
        body: bool,
        /// The negotiated format.
        format: Format,
    },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// The length of the request head in `buf` (through the blank line), if
/// it is complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete request head (request line and headers).
pub fn parse_request(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::BadRequest;
    };
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::BadRequest;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Request::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Request::NotFound;
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value
                    .to_ascii_lowercase()
                    .contains("application/openmetrics-text")
        })
    });
    let format = if openmetrics {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    };
    Request::Metrics { body, format }
}

/// The full response to `request`.
pub fn respond(request: Request, render: &dyn Fn(Format) -> String) -> Vec<u8> {
    let (status, content_type, body, send_body) = match request {
        Request::Metrics { body, format } => {
            ("200 OK", format.content_type(), render(format), body)
        }
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_string(),
            true,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
            true,
        ),
        Request::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            true,
        ),
    };
    let allow = if matches!(request, Request::MethodNotAllowed) {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// A running metrics endpoint; stopped (and its thread joined) when
/// dropped.
pub struct Exporter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds `addr` and serves `render`'s output on its own thread, named
    /// `thread_name`.
    pub fn start(
        addr: SocketAddr,
        render: Render,
        thread_name: &str,
    ) -> Result<Exporter, ExporterError> {
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|e| ExporterError::Bind(addr, e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(ExporterError::Io)?;
        let bound = std_listener.local_addr().map_err(ExporterError::Io)?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new().map_err(ExporterError::Io)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ExporterError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ExporterError::Io)?);
        let stop = Arc::new(AtomicBool::new(false));
        if !bound.ip().is_loopback() {
            warn!(
                "metrics on {bound}: not a loopback address, and the endpoint has no authentication"
            );
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || serve(poll, listener, render, &flag))
            .map_err(ExporterError::Io)?;
        Ok(Exporter {
            addr: bound,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    sock: TcpStream,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
}

enum Step {
    /// Waiting for more input or write space.
    Wait,
    /// The exchange is over (answered, failed or abandoned).
    Done,
}

impl Conn {
    fn on_ready(&mut self, render: &dyn Fn(Format) -> String) -> Step {
        if self.output.is_none() {
            let mut buf = [0u8; 1024];
            loop {
                match self.sock.read(&mut buf) {
                    Ok(0) => return Step::Done,
                    Ok(n) => {
                        self.input.extend_from_slice(&buf[..n]);
                        if let Some(len) = head_len(&self.input) {
                            let request = parse_request(&self.input[..len]);
                            self.output = Some(respond(request, render));
                            self.input = Vec::new();
                            break;
                        }
                        if self.input.len() >= MAX_REQUEST {
                            self.output = Some(respond(Request::BadRequest, render));
                            self.input = Vec::new();
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Done,
                }
            }
        }
        let Some(out) = &self.output else {
            return Step::Wait;
        };
        while self.written < out.len() {
            match self.sock.write(&out[self.written..]) {
                Ok(0) => return Step::Done,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Done,
            }
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        Step::Done
    }
}

fn serve(mut poll: Poll, listener: TcpListener, render: Render, stop: &AtomicBool) {
    let mut events = Events::with_capacity(64);
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = FIRST_CONN;
    loop {
        let now = Instant::now();
        let timeout = conns
            .values()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min();
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            warn!("metrics endpoint stopped: {e}");
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut sock, peer)) => {
                            if conns.len() >= MAX_SCRAPES {
                                debug!("{peer}: metrics scrape refused: {MAX_SCRAPES} in progress");
                                continue;
                            }
                            next += 1;
                            let token = Token(next);
                            if poll
                                .registry()
                                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                conns.insert(
                                    token,
                                    Conn {
                                        sock,
                                        input: Vec::new(),
                                        output: None,
                                        written: 0,
                                        deadline: Instant::now() + SCRAPE_TIMEOUT,
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // EMFILE and friends: the tunnel matters more;
                            // try again on the next readiness.
                            debug!("metrics accept failed: {e}");
                            break;
                        }
                    }
                },
                WAKER => {}
                token => {
                    if let Some(c) = conns.get_mut(&token)
                        && matches!(c.on_ready(&*render), Step::Done)
                        && let Some(mut c) = conns.remove(&token)
                    {
                        let _ = poll.registry().deregister(&mut c.sock);
                    }
                }
            }
        }
        let now = Instant::now();
        conns.retain(|_, c| {
            let keep = c.deadline > now;
            if !keep {
                let _ = poll.registry().deregister(&mut c.sock);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpStream as StdStream};

    fn render(f: Format) -> String {
        match f {
            Format::OpenMetrics => "om 1\n# EOF\n".into(),
            Format::PrometheusText => "text 1\n".into(),
        }
    }

    #[test]
    fn requests_are_parsed_and_negotiated() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics {
                body: true,
                format: Format::PrometheusText
            }
        );
        assert_eq!(
            parse_request(
                b"GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
            ),
            Request::Metrics {
                body: true,
                format: Format::OpenMetrics
            }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            Request::Metrics {
                body: false,
                format: Format::PrometheusText
            }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Request::BadRequest);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_carry_length_and_type() {
        let r = respond(
            Request::Metrics {
                body: true,
                format: Format::OpenMetrics,
            },
            &render,
        );
        let text = String::from_utf8(r).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: application/openmetrics-text"));
        assert!(text.contains("Content-Length: 11\r\n"));
        assert!(text.ends_with("\r\n\r\nom 1\n# EOF\n"));
        let head = respond(
            Request::Metrics {
                body: false,
                format: Format::PrometheusText,
            },
            &render,
        );
        assert!(
            String::from_utf8_lossy(&head)
                .ends_with("Content-Length: 7\r\nConnection: close\r\n\r\n")
        );
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = StdStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_scrapes_and_sheds_idle_connections() {
        let exporter = Exporter::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Arc::new(render),
            "test-metrics",
        )
        .expect("start");
        let addr = exporter.local_addr();
        // Idle connections that never send a request take every slot ...
        let idle: Vec<StdStream> = (0..MAX_SCRAPES)
            .map(|_| StdStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // ... so the next one is closed at once, without an answer.
        let refused = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(refused, "", "a scrape past the limit must be closed");
        // They are dropped at the deadline, and scrapes work again.
        std::thread::sleep(SCRAPE_TIMEOUT + Duration::from_millis(300));
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("text 1\n"));
        let big = vec![b'a'; MAX_REQUEST];
        let bad = get(addr, &big);
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        drop(idle);
        drop(exporter);
    }
}
