//! `hytun fetch` is correct or fails: exit 0 only with a complete body,
//! a named failure otherwise, no complete-looking `-o` file after a
//! failure, bounded headers, clear wording for non-2xx answers, and a busy
//! server retried until a session is free.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::Duration;

use hytun_host::origin::{HELLO_BODY, Origin, pattern_byte};
use hytun_tests::harness::*;

fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

/// An origin that reads each request head, then runs `answer` on the
/// socket.
fn origin(answer: fn(&mut TcpStream)) -> SocketAddr {
    let l = TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                }
                let mut s = s;
                answer(&mut s);
            });
        }
    });
    addr
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fetch_to(dir: &Path, url: &str, server: SocketAddr) -> (Output, Vec<u8>) {
    let file = dir.join("body.bin");
    let out = fetch_process(dir, url, server, &["-o", file.to_str().unwrap()]);
    let body = std::fs::read(&file).unwrap_or_default();
    (out, body)
}

fn assert_no_file(dir: &Path) {
    assert!(!dir.join("body.bin").exists(), "no complete-looking file");
    assert!(!dir.join("body.bin.part").exists(), "no leftover part file");
}

#[test]
fn unframed_body_cut_mid_transfer_fails_and_leaves_no_file() {
    let origin = origin(|s| {
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let relay = Relay::start(server.addr, Some(5 << 20)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fetch_to(dir.path(), &format!("http://{origin}/big"), relay.addr);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("tunnel lost after"), "{err}");
    assert!(err.contains("MiB"), "{err}");
    assert_no_file(dir.path());
}

#[test]
fn unframed_body_ended_by_an_authenticated_fin_is_complete() {
    let origin = origin(|s| {
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        let _ = s.write_all(&pattern(3_000_000));
    });
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let (out, body) = fetch_to(dir.path(), &format!("http://{origin}/"), server.addr);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        body == pattern(3_000_000),
        "exact body ({} bytes)",
        body.len()
    );
    assert!(!dir.path().join("body.bin.part").exists());
}

#[test]
fn chunked_body_is_decoded() {
    let origin = Origin::start(loopback()).unwrap();
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/chunked/1000000", origin.addr());
    let (out, body) = fetch_to(dir.path(), &url, server.addr);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        body == pattern(1_000_000),
        "decoded body ({} bytes)",
        body.len()
    );
    // To stdout as well.
    let out = fetch_process(dir.path(), &url, server.addr, &[]);
    assert!(out.status.success());
    assert!(out.stdout == pattern(1_000_000));
}

#[test]
fn chunked_body_without_its_last_chunk_fails() {
    let origin = origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    });
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fetch_to(dir.path(), &format!("http://{origin}/"), server.addr);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no last chunk"), "{err}");
    assert_no_file(dir.path());
}

#[test]
fn oversized_headers_are_a_clear_error() {
    let long_line = origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Big: ");
        let junk = vec![b'a'; 64 * 1024];
        // Far more than any limit: the fetch must stop reading early.
        for _ in 0..1024 {
            if s.write_all(&junk).is_err() {
                return;
            }
        }
    });
    let many = origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
        for i in 0..100_000 {
            if s.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fetch_to(dir.path(), &format!("http://{long_line}/"), server.addr);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("header line is longer than 8 KiB"), "{err}");
    assert_no_file(dir.path());
    let (out, _) = fetch_to(dir.path(), &format!("http://{many}/"), server.addr);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("more than 100 header lines"), "{err}");
    assert_no_file(dir.path());
}

#[test]
fn non_2xx_answers_are_named_and_not_written() {
    let origin = Origin::start(loopback()).unwrap();
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fetch_to(
        dir.path(),
        &format!("http://{}/nope", origin.addr()),
        server.addr,
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("origin answered HTTP 404 Not Found"), "{err}");
    assert_no_file(dir.path());
    let out = fetch_process(
        dir.path(),
        &format!("http://{}/nope", origin.addr()),
        server.addr,
        &[],
    );
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "the error body is not written to stdout either"
    );
    let (out, _) = fetch_to(
        dir.path(),
        &format!("http://{}/redirect", origin.addr()),
        server.addr,
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("origin answered HTTP 301 Moved Permanently (Location: /hello)"),
        "{err}"
    );
    assert_no_file(dir.path());
    // A good answer still lands in the file.
    let (out, body) = fetch_to(
        dir.path(),
        &format!("http://{}/hello", origin.addr()),
        server.addr,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(body, HELLO_BODY.as_bytes());
}

#[test]
fn a_short_body_or_an_origin_reset_fails_with_its_cause() {
    let short = origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        let _ = s.write_all(&[b'z'; 500]);
    });
    let resets = origin(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        let _ = s.write_all(&[b'z'; 100_000]);
        thread::sleep(Duration::from_millis(300));
        let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
        let _ = s.shutdown(std::net::Shutdown::Read);
    });
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fetch_to(dir.path(), &format!("http://{short}/"), server.addr);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("origin closed the connection after 500 bytes"),
        "{err}"
    );
    assert!(err.contains("Content-Length is 1000"), "{err}");
    assert_no_file(dir.path());
    let (out, _) = fetch_to(dir.path(), &format!("http://{resets}/"), server.addr);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("origin reset the connection after"), "{err}");
    assert_no_file(dir.path());
}

#[test]
fn a_busy_server_is_retried_until_a_session_is_free() {
    let origin = Origin::start(loopback()).unwrap();
    let mut opts = server_opts(&["127.0.0.1:*"]);
    opts.limits.max_sessions = 1;
    let server = RunningServer::start(opts);
    // A client takes the only session slot.
    let holder = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(origin.addr()))],
    ));
    let mut s = TcpStream::connect(holder.addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.ends_with(HELLO_BODY));

    // The fetch is refused (busy) and keeps retrying; once it said so, the
    // slot is freed and the fetch must get through.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/hello", origin.addr());
    let server_arg = server.addr.to_string();
    let ck = keydir().join("client.key");
    let sp = keydir().join("server.pub");
    let mut child = hytun_tests::spawn_hytun(
        dir.path(),
        &[
            "fetch",
            &url,
            "--server",
            &server_arg,
            "--key",
            ck.to_str().unwrap(),
            "--server-key",
            sp.to_str().unwrap(),
        ],
    );
    let mut err_lines = BufReader::new(child.0.stderr.take().unwrap());
    let mut err = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err_lines.read_line(&mut line).unwrap() > 0,
            "fetch ended without retrying: {err}"
        );
        err.push_str(&line);
        if line.contains("retrying in") {
            break;
        }
    }
    holder.stop();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err_lines, &mut rest).unwrap();
    err.push_str(&rest);
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut child.0.stdout.take().unwrap(), &mut body).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("busy"), "{err}");
    assert_eq!(body, HELLO_BODY.as_bytes());
}
