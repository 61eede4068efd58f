//! End-to-end tests over real loopback sockets: a `hytun` server and client
//! (library entry points in threads, or the real binary where the test is
//! about the command line) with real origin/echo servers behind them.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::thread::{self};
use std::time::{Duration, Instant};

use hytun_host::allow::DestHost;
use hytun_host::client::{Client, ClientOptions, ListenerKind};
use hytun_host::config::{Endpoint, ListenSpec};
use hytun_host::origin::{HELLO_BODY, Origin};
use hytun_host::server::Server;
use hytun_host::setup::{self, ClientFlags, ServerFlags};
use hytun_tests::harness::{
    RunningClient, RunningServer, forward_to, keydir, loopback, server_process,
};
use hytun_tests::*;
use sha2::{Digest, Sha256};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A server in a thread on `listen`, allowing `allow`; stopped when dropped.
fn start_server(listen: SocketAddr, allow: &[&str]) -> RunningServer {
    let mut opts = setup::server_options(ServerFlags {
        listen: Some(ListenSpec { addr: listen }),
        key: Some(keydir().join("server.key")),
        authorized_keys: Some(keydir().join("authorized_keys")),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..ServerFlags::default()
    })
    .expect("server options");
    opts.limits.handshakes_per_source_per_sec = std::num::NonZeroU32::new(1000).unwrap();
    RunningServer::start(opts)
}

fn client_opts(
    server: SocketAddr,
    key: &str,
    pinned: &str,
    listeners: Vec<(SocketAddr, ListenerKind)>,
) -> ClientOptions {
    let mut opts = setup::client_options(ClientFlags {
        server: Some(Endpoint {
            host: DestHost::Ip(server.ip()),
            port: server.port(),
        }),
        key: Some(keydir().join(format!("{key}.key"))),
        server_key: Some(keydir().join(format!("{pinned}.pub"))),
        ..ClientFlags::default()
    })
    .expect("client options");
    opts.listeners = listeners;
    opts
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect local listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn http_get(sock: &mut TcpStream, path: &str) -> String {
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).unwrap();
    out
}

fn socks_connect(proxy: SocketAddr, host: &str, port: u16) -> (TcpStream, u8) {
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[0], 5);
    (s, rep[1])
}

/// Runs `hytun fetch URL EXTRA.. --server 127.0.0.1:port` with the test
/// client keys.
fn fetch_process(dir: &Path, url: &str, port: u16, extra: &[&str]) -> std::process::Output {
    let ck = keydir().join("client.key");
    let sp = keydir().join("server.pub");
    let server = format!("127.0.0.1:{port}");
    let mut args = vec!["fetch", url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--server",
        &server,
        "--key",
        ck.to_str().unwrap(),
        "--server-key",
        sp.to_str().unwrap(),
    ]);
    hytun(dir, &args)
}

/// A server allowing `allow` and a client with one listener of `kind`.
fn tunnel(allow: &[&str], kind: ListenerKind) -> (RunningServer, RunningClient) {
    let server = start_server(loopback(), allow);
    let client = RunningClient::start(client_opts(
        server.addr,
        "client",
        "server",
        vec![(loopback(), kind)],
    ));
    (server, client)
}

// ------------------------------------------------------------- commands --

#[test]
fn keygen_writes_files_with_modes_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = hytun(
        dir.path(),
        &["keygen", "--bits", "2048", "--out", "k", "--name", "alice"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fingerprint: SHA256:"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("k/alice.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(dir.path().join("k/alice.pub")).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let again = hytun(
        dir.path(),
        &["keygen", "--bits", "2048", "--out", "k", "--name", "alice"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = hytun(
        dir.path(),
        &[
            "keygen", "--bits", "2048", "--out", "k", "--name", "alice", "--force",
        ],
    );
    assert!(forced.status.success());
}

#[test]
fn demo_exits_zero_and_prints_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = hytun(dir.path(), &["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Hello from the origin server"), "{stdout}");
    assert!(stdout.contains("HTTP/1.1 200 OK"));
    assert!(dir.path().join("keys/demo/server.key").exists());
    // Second run reuses the keys.
    let again = hytun(dir.path(), &["demo"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("generated"));
}

#[test]
fn operator_mistakes_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = hytun(
        dir.path(),
        &[
            "server",
            "--key",
            "missing.key",
            "--authorized-keys",
            "x",
            "--allow",
            "127.0.0.1:*",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.key"), "{err}");
    // A too-open private key.
    std::fs::copy(keydir().join("server.key"), dir.path().join("open.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("open.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = hytun(
        dir.path(),
        &["server", "--key", "open.key", "--authorized-keys", "x"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too open"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown flag.
    let out = hytun(dir.path(), &["client", "--bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    // Address in use.
    let busy = std::net::TcpListener::bind(loopback()).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let key = keydir().join("server.key");
    let auth = keydir().join("authorized_keys");
    let out = hytun(
        dir.path(),
        &[
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key",
            key.to_str().unwrap(),
            "--authorized-keys",
            auth.to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("address already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fetch_command_through_a_server_process() {
    let origin = Origin::start(loopback()).unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _server = server_process(
        dir.path(),
        port,
        &format!("127.0.0.1:{}", origin.addr().port()),
    );
    let url = format!("http://127.0.0.1:{}/hello", origin.addr().port());
    let out = fetch_process(dir.path(), &url, port, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO_BODY);
    // To a file.
    let url = format!("http://127.0.0.1:{}/bytes/300000", origin.addr().port());
    let out = fetch_process(dir.path(), &url, port, &["-o", "body.bin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = std::fs::read(dir.path().join("body.bin")).unwrap();
    assert_eq!(body.len(), 300_000);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == hytun_host::origin::pattern_byte(i as u64))
    );
}

// ------------------------------------------------------------- proxies --

#[test]
fn port_forward_carries_a_request_to_the_origin() {
    let origin = Origin::start(loopback()).unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], forward_to(origin.addr()));
    for _ in 0..3 {
        let mut s = connect(client.addrs[0]);
        let resp = http_get(&mut s, "/hello");
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with(HELLO_BODY));
    }
}

#[test]
fn socks5_carries_a_request_and_reports_refusals() {
    let origin = Origin::start(loopback()).unwrap();
    let allowed = format!("127.0.0.1:{}", origin.addr().port());
    let closed = free_port();
    let allowed_closed = format!("127.0.0.1:{closed}");
    // `localhost:*` alone never reaches a loopback address: each loopback
    // port the name may reach needs its own IP rule.
    let server = start_server(loopback(), &[&allowed, &allowed_closed, "localhost:*"]);
    let client = RunningClient::start(client_opts(
        server.addr,
        "client",
        "server",
        vec![(loopback(), ListenerKind::Socks)],
    ));
    let proxy = client.addrs[0];
    // Domain name resolved by the server (socks5h semantics).
    let (mut s, code) = socks_connect(proxy, "localhost", origin.addr().port());
    assert_eq!(code, 0, "succeeded");
    let resp = http_get(&mut s, "/hello");
    assert!(resp.ends_with(HELLO_BODY), "{resp}");
    // IPv4 literal via ATYP 3 text is a domain; use ATYP 1 too.
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&origin.addr().port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0);
    assert!(http_get(&mut s, "/hello").ends_with(HELLO_BODY));
    // Not allowed -> 0x02.
    let (_, code) = socks_connect(proxy, "127.0.0.2", 9);
    assert_eq!(code, 2, "connection not allowed by ruleset");
    // Allowed but nothing listening -> 0x05 connection refused.
    let (_, code) = socks_connect(proxy, "localhost", closed);
    assert!(code == 5 || code == 4, "refused/unreachable, got {code}");
    // A name rule matches, but the name resolves to loopback, which no IP
    // rule allows on this port -> refused like any destination not allowed.
    let (_, code) = socks_connect(proxy, "localhost", origin.addr().port() ^ 1);
    assert_eq!(code, 2, "loopback behind a name rule needs an IP rule");
}

#[test]
fn http_proxy_connect_and_absolute_form() {
    let origin = Origin::start(loopback()).unwrap();
    let allowed = format!("127.0.0.1:{}", origin.addr().port());
    let server = start_server(loopback(), &[&allowed]);
    let client = RunningClient::start(client_opts(
        server.addr,
        "client",
        "server",
        vec![(loopback(), ListenerKind::HttpProxy)],
    ));
    let proxy = client.addrs[0];
    // CONNECT
    let mut s = connect(proxy);
    s.write_all(format!("CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 39];
    s.read_exact(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let resp = http_get(&mut s, "/hello");
    assert!(resp.ends_with(HELLO_BODY), "{resp}");
    // Absolute-form GET
    let mut s = connect(proxy);
    s.write_all(
        format!("GET http://{allowed}/hello HTTP/1.1\r\nHost: {allowed}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.ends_with(HELLO_BODY),
        "{out}"
    );
    // Not allowed -> 403
    let mut s = connect(proxy);
    s.write_all(b"CONNECT 127.0.0.3:80 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

// ---------------------------------------------------------- data paths --

#[test]
fn sixty_four_mib_each_way_with_sha256() {
    let echo = EchoServer::start().unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], forward_to(echo.addr));
    let s = connect(client.addrs[0]);
    let mut w = s.try_clone().unwrap();
    const TOTAL: usize = 64 << 20;
    let writer = thread::spawn(move || {
        let mut h = Sha256::new();
        let mut block = vec![0u8; 1 << 16];
        let mut sent = 0usize;
        let mut x: u32 = 0x1234_5678;
        while sent < TOTAL {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            w.write_all(&block).unwrap();
            h.update(&block);
            sent += block.len();
        }
        w.shutdown(Shutdown::Write).unwrap();
        h.finalize()
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    let sent_hash = writer.join().unwrap();
    assert_eq!(got, TOTAL);
    assert_eq!(
        h.finalize(),
        sent_hash,
        "SHA-256 of what came back equals what was sent"
    );
}

#[test]
fn two_hundred_concurrent_streams() {
    let echo = EchoServer::start().unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], forward_to(echo.addr));
    let local = client.addrs[0];
    let workers: Vec<_> = (0..200u32)
        .map(|i| {
            thread::spawn(move || -> Result<(), String> {
                let mut s = connect(local);
                let payload: Vec<u8> = (0..10_000u32)
                    .map(|k| (k.wrapping_mul(i + 1) >> 3) as u8)
                    .collect();
                s.write_all(&payload).map_err(|e| format!("write: {e}"))?;
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let mut back = Vec::new();
                s.read_to_end(&mut back)
                    .map_err(|e| format!("read: {e} after {} bytes", back.len()))?;
                if back == payload {
                    Ok(())
                } else {
                    Err(format!("got {} bytes back", back.len()))
                }
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = workers
        .into_iter()
        .map(|w| w.join().unwrap_or_else(|_| Err("panicked".into())))
        .collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 200 failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn half_close_is_carried_end_to_end() {
    let counter = start_count_server().unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], forward_to(counter));
    let mut s = connect(client.addrs[0]);
    s.write_all(&[7u8; 12345]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 12345 bytes");
}

// ------------------------------------------------------------- security --

#[test]
fn unauthorized_client_is_refused() {
    let server = start_server(loopback(), &["127.0.0.1:*"]);
    let opts = client_opts(server.addr, "stranger", "server", vec![]);
    let client = Client::bind(opts).unwrap();
    let started = Instant::now();
    let err = client.run(false).expect_err("must fail");
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(msg.contains("not authorized"), "{msg}");
}

#[test]
fn wrong_pinned_server_key_is_refused_naming_both_fingerprints() {
    let server = start_server(loopback(), &["127.0.0.1:*"]);
    let opts = client_opts(server.addr, "client", "stranger", vec![]);
    let pinned = opts.core.server.id().to_string();
    let client = Client::bind(opts).unwrap();
    let msg = client.run(false).expect_err("must fail").to_string();
    let real = hytun_keys::fingerprint(
        &hytun_keys::load_public_key(&keydir().join("server.pub")).unwrap(),
    )
    .to_string();
    assert!(msg.contains(&pinned), "names the pinned key: {msg}");
    assert!(msg.contains(&real), "names the server's key: {msg}");
}

// ----------------------------------------------------------- resilience --

#[test]
fn client_reconnects_after_server_restart() {
    let origin = Origin::start(loopback()).unwrap();
    let server = start_server(loopback(), &["127.0.0.1:*"]);
    let addr = server.addr;
    let client = RunningClient::start(client_opts(
        addr,
        "client",
        "server",
        vec![(loopback(), forward_to(origin.addr()))],
    ));
    let mut s = connect(client.addrs[0]);
    assert!(http_get(&mut s, "/hello").ends_with(HELLO_BODY));
    drop(server);
    // Restart on the same address.
    let mut restarted = None;
    for _ in 0..50 {
        let r = std::panic::catch_unwind(|| start_server(addr, &["127.0.0.1:*"]));
        if let Ok(r) = r {
            restarted = Some(r);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _server = restarted.expect("server restarts on the same port");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = connect(client.addrs[0]);
        let mut out = String::new();
        let _ = s.write_all(b"GET /hello HTTP/1.0\r\n\r\n");
        let _ = s.read_to_string(&mut out);
        if out.ends_with(HELLO_BODY) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client did not reconnect: {out:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn refused_destination_fails_one_stream_while_others_continue() {
    let echo = EchoServer::start().unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], ListenerKind::Socks);
    let proxy = client.addrs[0];
    let (mut live, code) = socks_connect(proxy, "127.0.0.1", echo.addr.port());
    assert_eq!(code, 0);
    live.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).unwrap();
    let dead_port = free_port();
    for _ in 0..5 {
        let (_, code) = socks_connect(proxy, "127.0.0.1", dead_port);
        assert_eq!(code, 5, "connection refused");
    }
    live.write_all(b"after!").unwrap();
    live.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!");
}

#[test]
fn bad_clients_do_not_hurt_the_server() {
    let origin = Origin::start(loopback()).unwrap();
    let server = start_server(loopback(), &["127.0.0.1:*"]);
    // Garbage, a truncated hello, an oversized length, and a silent client.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[1, 0xff, 0xff][..],
        &[1, 0, 200, b'H', b'Y'][..],
        &[0x42; 4096][..],
    ] {
        let mut s = connect(server.addr);
        let _ = s.write_all(junk);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(
            sink.len() < 64,
            "the server answers junk with at most an alert"
        );
    }
    let _silent = connect(server.addr);
    // A real client still works.
    let client = RunningClient::start(client_opts(
        server.addr,
        "client",
        "server",
        vec![(loopback(), forward_to(origin.addr()))],
    ));
    let mut s = connect(client.addrs[0]);
    assert!(http_get(&mut s, "/hello").ends_with(HELLO_BODY));
}

#[test]
fn broken_tunnel_closes_the_local_side_of_live_streams() {
    let echo = EchoServer::start().unwrap();
    let (server, client) = tunnel(&["127.0.0.1:*"], forward_to(echo.addr));
    let mut s = connect(client.addrs[0]);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    drop(server);
    // The local connection learns of the break: EOF or reset, not a hang.
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(r.is_ok() || r.is_err());
    assert!(rest.is_empty());
}

#[test]
fn server_process_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = server_process(dir.path(), free_port(), "127.0.0.1:*");
    let pid = child.0.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(err.contains("shutting down"), "{err}");
}

#[test]
fn fetch_fails_fast_when_the_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = fetch_process(dir.path(), "http://127.0.0.1:9/", free_port(), &[]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unreachable") || err.contains("Connection refused"),
        "{err}"
    );
    assert!(err.contains("cannot establish a tunnel"), "{err}");
}

#[test]
fn finished_streams_free_their_slots() {
    // More sequential connections than a session has stream slots (1024):
    // every stream closed by both sides must give its slot back.
    let echo = EchoServer::start().unwrap();
    let (_server, client) = tunnel(&["127.0.0.1:*"], forward_to(echo.addr));
    for i in 0..1100u32 {
        let mut s = connect(client.addrs[0]);
        s.write_all(&i.to_be_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, i.to_be_bytes(), "connection {i}");
    }
}

#[test]
fn server_with_three_loops_serves_every_session() {
    let origin = Origin::start(loopback()).unwrap();
    let opts = setup::server_options(ServerFlags {
        listen: Some(ListenSpec { addr: loopback() }),
        key: Some(keydir().join("server.key")),
        authorized_keys: Some(keydir().join("authorized_keys")),
        allow: vec!["127.0.0.1:*".into()],
        ..ServerFlags::default()
    })
    .unwrap();
    let server = Server::bind_group(opts, 3).unwrap();
    let addr = server.local_addr();
    let stop = server.stop_handle();
    let group = thread::spawn(move || server.run(false));
    // Several independent sessions, accepted by whichever loop is free.
    let clients: Vec<RunningClient> = (0..6)
        .map(|_| {
            RunningClient::start(client_opts(
                addr,
                "client",
                "server",
                vec![(loopback(), forward_to(origin.addr()))],
            ))
        })
        .collect();
    for c in &clients {
        let mut s = connect(c.addrs[0]);
        assert!(http_get(&mut s, "/hello").ends_with(HELLO_BODY));
    }
    drop(clients);
    stop.stop();
    group.join().unwrap().unwrap();
}

/// Answers `tunnel.test` with `ip` (at the asked port) once `open` is set,
/// holding every lookup until then (at most a minute); other names fail.
struct GatedLookup {
    ip: std::net::IpAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl hytun_host::resolver::LookupFn for GatedLookup {
    fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        let until = Instant::now() + Duration::from_secs(60);
        while !self.open.load(SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        if host == "tunnel.test" {
            Ok(vec![SocketAddr::new(self.ip, port)])
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "unknown name",
            ))
        }
    }
}

#[test]
fn a_server_name_is_looked_up_off_the_loop() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    let echo = EchoServer::start().unwrap();
    let server = start_server(loopback(), &[&echo.addr.to_string()]);
    let by_name = || {
        let mut opts = client_opts(
            server.addr,
            "client",
            "server",
            vec![(loopback(), forward_to(echo.addr))],
        );
        opts.server = Endpoint {
            host: DestHost::Domain("tunnel.test".into()),
            port: server.addr.port(),
        };
        opts
    };

    // A lookup that hangs does not hang the client: its loop still runs,
    // so a stop request ends it at once.
    let open = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut client = Client::bind(by_name()).expect("bind client");
    client
        .resolve_server_with(GatedLookup {
            ip: server.addr.ip(),
            open: open.clone(),
            calls: calls.clone(),
        })
        .expect("resolver");
    let stop = client.stop_handle();
    let running = thread::spawn(move || client.run(false));
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the server name was never looked up"
        );
        thread::sleep(Duration::from_millis(10));
    }
    stop.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the client did not stop while its server lookup hung"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(running.join().expect("client thread").is_ok());
    open.store(true, SeqCst);

    // Answered, the name leads to the server: a forward carries data.
    let mut client = Client::bind(by_name()).expect("bind client");
    client
        .resolve_server_with(GatedLookup {
            ip: server.addr.ip(),
            open: Arc::new(AtomicBool::new(true)),
            calls: Arc::new(AtomicUsize::new(0)),
        })
        .expect("resolver");
    let local = client.local_addrs()[0];
    let stop = client.stop_handle();
    let running = thread::spawn(move || client.run(false));
    let mut s = TcpStream::connect(local).expect("connect forward");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"by name").unwrap();
    let mut back = [0u8; 7];
    s.read_exact(&mut back).expect("echo through the tunnel");
    assert_eq!(&back, b"by name");
    stop.stop();
    assert!(running.join().expect("client thread").is_ok());
}
