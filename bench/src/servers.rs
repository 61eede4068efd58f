//! The benchmark's targets on loopback: an HTTP server answering every
//! `GET` with a fixed 1 KiB body (keep-alive aware) and a TCP echo server.
//!
//! Both serve each connection on its own thread with blocking sockets and
//! small stacks: for the loads here (≤ 64 busy or ~1000 idle connections)
//! that is as cheap as an event loop, needs no readiness bookkeeping, and
//! the kernel wakes exactly the thread whose socket has data. Threads whose
//! connection ended wait for the next one, so a stream of short connections
//! (`ab`) pays a channel hand-off per connection instead of a thread spawn.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use core::net::SocketAddr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Size of the HTTP response body.
pub(crate) const BODY_LEN: usize = 1024;
const STACK: usize = 64 * 1024;
const MAX_HEADER: usize = 16 * 1024;

/// Accepts forever on `addr`, serving each connection with `handler` on a
/// thread of its own: an idle pooled one if there is one, a new one
/// otherwise.
fn serve(addr: SocketAddr, handler: fn(TcpStream) -> io::Result<()>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    // Workers parked on the channel that no connection was handed to yet.
    let idle = Arc::new(AtomicUsize::new(0));
    for sock in listener.incoming() {
        let sock = match sock {
            Ok(s) => s,
            // Out of descriptors or an aborted handshake: keep accepting.
            Err(_) => continue,
        };
        // Reserve a parked worker, so every socket sent has a taker.
        if idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            if tx.send(sock).is_err() {
                break;
            }
            continue;
        }
        let (rx, idle) = (rx.clone(), idle.clone());
        let spawned = thread::Builder::new().stack_size(STACK).spawn(move || {
            // Errors end only that connection.
            let _ = handler(sock);
            loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let next = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                match next {
                    Ok(s) => {
                        let _ = handler(s);
                    }
                    Err(_) => return,
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

/// Runs the HTTP target on `addr` (never returns unless binding fails).
pub(crate) fn run_http(addr: SocketAddr) -> io::Result<()> {
    serve(addr, serve_http)
}

/// Runs the echo target on `addr` (never returns unless binding fails).
pub(crate) fn run_echo(addr: SocketAddr) -> io::Result<()> {
    serve(addr, serve_echo)
}

fn serve_echo(mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        sock.write_all(&buf[..n])?;
    }
}

fn response(keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nServer: hytun-bench\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {BODY_LEN}\r\nConnection: {connection}\r\n\r\n"
    )
    .into_bytes();
    r.extend(core::iter::repeat_n(b'x', BODY_LEN));
    r
}

/// Whether the connection stays open after answering `head` (the request
/// line and headers): HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
/// with `Connection: keep-alive`.
fn keep_alive(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let mut lines = text.split("\r\n");
    let http11 = lines
        .next()
        .is_some_and(|l| l.trim_end().ends_with("http/1.1"));
    let connection = lines
        .filter_map(|l| l.strip_prefix("connection:"))
        .map(str::trim)
        .last();
    match connection {
        Some(v) if v.contains("close") => false,
        Some(v) if v.contains("keep-alive") => true,
        _ => http11,
    }
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn serve_http(mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let keep = response(true);
    let close = response(false);
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    let mut out = Vec::with_capacity(keep.len());
    loop {
        // Answer every complete request in the buffer (pipelining allowed),
        // with one write for the batch.
        let mut start = 0;
        while let Some(end) = find_header_end(&buf[start..len]) {
            let alive = keep_alive(&buf[start..start + end]);
            out.extend_from_slice(if alive { &keep } else { &close });
            start += end;
            if !alive {
                sock.write_all(&out)?;
                // Shutting down may fail if the client is gone already.
                let _ = sock.shutdown(Shutdown::Write);
                return Ok(());
            }
        }
        if !out.is_empty() {
            sock.write_all(&out)?;
            out.clear();
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header too large",
            ));
        }
        let n = sock.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        assert!(keep_alive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keep_alive(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep_alive(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"));
        assert!(keep_alive(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        ));
    }

    #[test]
    fn http_and_echo_answer() {
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let http_addr = http.local_addr().unwrap();
        thread::spawn(move || {
            for s in http.incoming() {
                let s = s.unwrap();
                thread::spawn(move || serve_http(s));
            }
        });
        let mut c = TcpStream::connect(http_addr).unwrap();
        // Two pipelined keep-alive requests, then one that closes.
        c.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 2 * response(true).len() + response(false).len());

        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        thread::spawn(move || {
            for s in echo.incoming() {
                thread::spawn(move || serve_echo(s.unwrap()));
            }
        });
        let mut e = TcpStream::connect(echo_addr).unwrap();
        e.write_all(b"z").unwrap();
        let mut b = [0u8; 1];
        e.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"z");
    }
}
