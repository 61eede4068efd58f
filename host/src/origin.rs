//! A tiny HTTP/1.x origin server (one thread per connection) used by
//! `hytun demo` and the end-to-end tests as the destination behind the
//! tunnel. Paths: `/` (an HTML page), `/hello` (a short marker text),
//! `/bytes/N` (N bytes of a fixed pattern), `/chunked/N` (the same bytes
//! with chunked transfer coding, HTTP/1.1 requests only), `/redirect` (301 to
//! `/hello`). Anything else is 404.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// The text `/hello` answers with.
pub const HELLO_BODY: &str = "hytun-origin-ok: hello through the tunnel\n";
/// The largest `/bytes/N` served.
pub const MAX_BYTES: u64 = 1 << 30;

/// A running origin; stops when dropped.
pub struct Origin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Origin {
    /// Starts an origin on `bind` (use port 0 for any free port).
    pub fn start(bind: SocketAddr) -> io::Result<Origin> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::Builder::new()
            .name("hytun-origin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(sock) = conn {
                        let _ = thread::Builder::new()
                            .name("hytun-origin-conn".into())
                            .spawn(move || serve(sock));
                    }
                }
            })?;
        Ok(Origin { addr, stop })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The byte at offset `i` of `/bytes/N`.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

fn serve(sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let Ok(read_half) = sock.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = sock;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut keep_alive = line.contains("HTTP/1.1");
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                keep_alive = false;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let conn_hdr = if keep_alive { "keep-alive" } else { "close" };
        let result = if path == "/" {
            let body = "<!doctype html>\n<html><head><title>hytun demo origin</title></head>\n<body><h1>Hello from the origin server</h1>\n<p>This page travelled through an encrypted hytun tunnel.</p></body></html>\n";
            respond(
                &mut out,
                "200 OK",
                "text/html; charset=utf-8",
                body.as_bytes(),
                conn_hdr,
            )
        } else if path == "/hello" {
            respond(
                &mut out,
                "200 OK",
                "text/plain",
                HELLO_BODY.as_bytes(),
                conn_hdr,
            )
        } else if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n <= MAX_BYTES)
        {
            send_pattern(&mut out, n, conn_hdr)
        } else if let Some(n) = path
            .strip_prefix("/chunked/")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n <= MAX_BYTES && line.contains("HTTP/1.1"))
        {
            send_chunked(&mut out, n, conn_hdr)
        } else if path == "/redirect" {
            let head = format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: /hello\r\nContent-Length: 9\r\nConnection: {conn_hdr}\r\n\r\nredirect\n"
            );
            out.write_all(head.as_bytes())
        } else {
            respond(
                &mut out,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                conn_hdr,
            )
        };
        if result.is_err() || !keep_alive {
            return;
        }
    }
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    conn: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
        body.len()
    );
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    out.write_all(&msg)
}

fn send_pattern(out: &mut TcpStream, n: u64, conn: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: {conn}\r\n\r\n"
    );
    out.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0u64;
    while i < n {
        let chunk = (n - i).min(buf.len() as u64) as usize;
        for (k, b) in buf[..chunk].iter_mut().enumerate() {
            *b = pattern_byte(i + k as u64);
        }
        out.write_all(&buf[..chunk])?;
        i += chunk as u64;
    }
    Ok(())
}

/// `/bytes/N` content with chunked transfer coding, in uneven chunks.
fn send_chunked(out: &mut TcpStream, n: u64, conn: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: {conn}\r\n\r\n"
    );
    out.write_all(head.as_bytes())?;
    let mut i = 0u64;
    let mut size = 1u64;
    while i < n {
        let chunk = (n - i).min(size);
        let mut msg = format!("{chunk:x}\r\n").into_bytes();
        msg.extend((i..i + chunk).map(pattern_byte));
        msg.extend_from_slice(b"\r\n");
        out.write_all(&msg)?;
        i += chunk;
        size = (size * 3 + 7) % 40_000 + 1;
    }
    out.write_all(b"0\r\n\r\n")
}
