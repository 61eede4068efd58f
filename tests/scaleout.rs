//! Scale-out behind a real load balancer: `haproxy` (the Debian package)
//! in front of two `hytun server` processes on loopback, with
//! `send-proxy-v2`, using the HAProxy sample of `docs/DEPLOYMENT.md` with
//! loopback addresses substituted. Shows both servers taking sessions, the
//! real client address in their logs (not the balancer's), health checks
//! (PROXY v2 LOCAL) accepted, a client reconnecting to the surviving server
//! when one is killed, and a PROXY header from an untrusted address
//! refused.
//!
//! The in-process tests put a relay that prepends a PROXY v1 header
//! between a client and a server that trusts 127.0.0.1: the per-source
//! budget follows the address in the header, the session is logged under
//! it, and a trusted peer without a header is closed.
//!
//! Addresses: the clients connect from 127.0.0.1 (the kernel's source for
//! loopback destinations), haproxy listens on and connects from
//! 127.0.0.20, the servers listen on 127.0.0.31 and 127.0.0.32 and trust
//! only 127.0.0.20. Needs `haproxy` (scripts/test-all.sh installs it);
//! `HYTUN_SKIP_HAPROXY=1` skips with a loud SKIP line.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hytun_host::server::admission::TrustedProxies;
use hytun_tests::harness::{
    RunningClient, RunningServer, capture_logs, client_opts, forward_to, keydir, loopback,
    server_opts, wait_log,
};
use hytun_tests::{ChildGuard, EchoServer, free_port, spawn_hytun, wait_listening};

const SKIP_VAR: &str = "HYTUN_SKIP_HAPROXY";
const BALANCER: &str = "127.0.0.20";
const WAIT: Duration = Duration::from_secs(30);

/// A child whose stderr lines are collected as they come.
struct Logged {
    child: Option<ChildGuard>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    fn new(mut child: ChildGuard) -> Logged {
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.0.stderr.take() {
            let sink = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Logged {
            child: Some(child),
            lines,
        }
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().filter(|s| s.contains(needle)).cloned().collect())
            .unwrap_or_default()
    }

    fn all(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until `count` lines contain `needle`.
    fn wait_for(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lines_with(needle).len() >= count {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        self.child.take();
    }
}

/// `hytun server` on `listen`, trusting `proxy_from`.
fn server(dir: &Path, listen: SocketAddr, proxy_from: &str) -> Logged {
    let key = keydir().join("server.key");
    let auth = keydir().join("authorized_keys");
    let listen_s = listen.to_string();
    let child = spawn_hytun(
        dir,
        &[
            "server",
            "--listen",
            &listen_s,
            "--key",
            key.to_str().unwrap_or_default(),
            "--authorized-keys",
            auth.to_str().unwrap_or_default(),
            "--allow",
            "127.0.0.1:*",
            "--proxy-protocol-from",
            proxy_from,
            "--handshake-rate",
            "1000",
            "--threads",
            "1",
            // Debug lines show each PROXY header as it is read.
            "-v",
        ],
    );
    assert!(
        wait_listening(listen, WAIT),
        "server on {listen} did not start"
    );
    Logged::new(child)
}

/// The ```haproxy block of docs/DEPLOYMENT.md with the test's addresses.
/// Every substitution must apply, so the doc and the test cannot drift.
fn haproxy_config(front: SocketAddr, a: SocketAddr, b: SocketAddr) -> String {
    let doc = std::fs::read_to_string(hytun_tests::workspace_root().join("docs/DEPLOYMENT.md"))
        .expect("docs/DEPLOYMENT.md");
    let start = doc
        .find("```haproxy\n")
        .expect("a ```haproxy block in DEPLOYMENT.md")
        + 11;
    let len = doc[start..].find("```").expect("end of the haproxy block");
    let mut config = doc[start..start + len].to_string();
    for (from, to) in [
        ("bind 192.0.2.10:7000", format!("bind {front}")),
        ("source 10.0.0.10", format!("source {BALANCER}")),
        ("10.0.0.11:7000", a.to_string()),
        ("10.0.0.12:7000", b.to_string()),
        // Quicker health checks for the test.
        (
            "inter 2s fall 2 rise 2",
            "inter 300ms fall 1 rise 1".to_string(),
        ),
    ] {
        assert!(
            config.contains(from),
            "the DEPLOYMENT.md sample no longer contains {from:?}"
        );
        config = config.replace(from, &to);
    }
    config
}

fn haproxy_ready() -> bool {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP scaleout: {SKIP_VAR}=1, the haproxy test did NOT run ***\n"
        );
        return false;
    }
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the scale-out test needs haproxy (apt-get install haproxy; scripts/test-all.sh \
         installs it), or set {SKIP_VAR}=1 to skip it"
    );
    true
}

/// Sends `msg` through `local` (a client's -L listener to the echo server)
/// and expects it back.
fn echo_once(local: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&local, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg)?;
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back)?;
    if back == msg {
        Ok(())
    } else {
        Err(std::io::Error::other("echo mismatch"))
    }
}

/// Retries [`echo_once`] until it works (the client may be reconnecting).
fn echo(local: SocketAddr, msg: &[u8]) {
    let deadline = Instant::now() + WAIT;
    loop {
        match echo_once(local, msg) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("echo through {local} failed: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn haproxy_spreads_sessions_over_two_servers_and_clients_fail_over() {
    if !haproxy_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let echo_server = EchoServer::start().unwrap();
    let addr = |ip: &str| -> SocketAddr { format!("{ip}:{}", free_port()).parse().unwrap() };
    let (a_addr, b_addr, front) = (addr("127.0.0.31"), addr("127.0.0.32"), addr(BALANCER));
    let mut a = server(dir.path(), a_addr, BALANCER);
    let b = server(dir.path(), b_addr, "127.0.0.20/32");

    let config = haproxy_config(front, a_addr, b_addr);
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, &config).unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy rejects the DEPLOYMENT.md sample:\n{}{}\n{config}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy = ChildGuard(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let haproxy = Logged::new(haproxy);
    assert!(wait_listening(front, WAIT), "haproxy did not listen");

    // haproxy's health checks arrive as PROXY v2 LOCAL (no client
    // address) from the balancer's own address, and are not refused.
    for s in [&a, &b] {
        assert!(
            s.wait_for("PROXY v2 header without a client address", 1, WAIT),
            "no health check seen: {}",
            s.all()
        );
        let check = s.lines_with("PROXY v2 header without").remove(0);
        assert!(check.contains(&format!("{BALANCER}:")), "{check}");
    }

    // Four clients, round-robin: both servers take sessions.
    let clients: Vec<RunningClient> = (0..4)
        .map(|_| {
            RunningClient::start(client_opts(
                front,
                vec![(loopback(), forward_to(echo_server.addr))],
            ))
        })
        .collect();
    for (i, c) in clients.iter().enumerate() {
        echo(c.addrs[0], format!("hello {i}").as_bytes());
    }
    assert!(a.wait_for("session up", 1, WAIT), "A: {}", a.all());
    assert!(b.wait_for("session up", 1, WAIT), "B: {}", b.all());
    let on_a = a.lines_with("session up").len();
    let on_b = b.lines_with("session up").len();
    assert_eq!(on_a + on_b, 4, "A:\n{}\nB:\n{}", a.all(), b.all());

    // The logs name the real client (127.0.0.1), never the balancer.
    for s in [&a, &b] {
        let headers = s.lines_with("PROXY v2 header: client 127.0.0.1:");
        assert!(!headers.is_empty(), "{}", s.all());
        assert!(headers.iter().all(|l| l.contains(&format!("{BALANCER}:"))));
        for line in s.lines_with("session up") {
            assert!(line.contains("127.0.0.1:"), "{line}");
            assert!(!line.contains(BALANCER), "{line}");
        }
        let refused = s.lines_with("refused");
        assert!(
            refused.is_empty(),
            "health checks or sessions refused: {refused:?}"
        );
    }

    // Server A dies: its clients reconnect through haproxy to B, and their
    // forwards work again.
    a.kill();
    for (i, c) in clients.iter().enumerate() {
        echo(c.addrs[0], format!("again {i}").as_bytes());
    }
    assert!(
        b.wait_for("session up", on_b + on_a, WAIT),
        "B took over A's {on_a} clients:\n{}\nhaproxy:\n{}",
        b.all(),
        haproxy.all()
    );
    for line in b.lines_with("session up") {
        assert!(line.contains("127.0.0.1:"), "{line}");
    }
    drop(clients);

    // A PROXY header straight from the client's address (not a trusted
    // proxy) is refused with a clear log line, and the connection closed.
    let mut forged = TcpStream::connect(b_addr).unwrap();
    forged
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    forged
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.32 4444 7000\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = forged.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply to a forged header: {rest:?}");
    assert!(
        b.wait_for("not a trusted proxy address", 1, WAIT),
        "B: {}",
        b.all()
    );
    let line = b.lines_with("not a trusted proxy address").remove(0);
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(b.lines_with("198.51.100.7").is_empty(), "{}", b.all());
}

/// A relay on 127.0.0.1 that opens a connection to `server` for each one
/// it accepts, writes `header` first, then copies both ways.
fn header_relay(server: SocketAddr, header: &'static [u8]) -> SocketAddr {
    let l = std::net::TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for down in l.incoming().flatten() {
            let Ok(mut up) = TcpStream::connect(server) else {
                continue;
            };
            if up.write_all(header).is_err() {
                continue;
            }
            let (Ok(mut up2), Ok(mut down2)) = (up.try_clone(), down.try_clone()) else {
                continue;
            };
            let mut down = down;
            thread::spawn(move || {
                let _ = std::io::copy(&mut down, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut up2, &mut down2);
                let _ = down2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A raw connection to `server` that sends `bytes`.
fn raw(server: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// What the server sent before closing `s`, or `None` if `s` is still
/// open after `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Some(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(got),
        Err(_) => None,
    }
}

#[test]
fn behind_a_trusted_relay_limits_and_logs_use_the_header_address() {
    capture_logs();
    let echo_server = EchoServer::start().unwrap();
    let mut opts = server_opts(&["127.0.0.1:*"]);
    opts.proxy_from = TrustedProxies::parse(&["127.0.0.1/32".to_string()]).unwrap();
    opts.limits.max_pending_per_source = 2;
    let server = RunningServer::start(opts);

    // Two stalled connections that claim client 198.51.100.1 use up that
    // client's pending share; a third is refused with Busy, while another
    // client behind the same proxy address is still admitted.
    let claim = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 1000 7000\r\n");
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = raw(server.addr, claim("198.51.100.1").as_bytes());
            thread::sleep(Duration::from_millis(100));
            s
        })
        .collect();
    let mut third = raw(server.addr, claim("198.51.100.1").as_bytes());
    let busy = closed_within(&mut third, Duration::from_secs(10))
        .expect("the third connection of one client is closed");
    assert!(!busy.is_empty(), "a Busy alert before the close");
    let mut other = raw(server.addr, claim("198.51.100.2").as_bytes());
    assert_eq!(
        closed_within(&mut other, Duration::from_millis(500)),
        None,
        "another client behind the same proxy is admitted"
    );

    // A trusted peer must send the header: a bare ClientHello is closed
    // without a reply, and the log says why.
    thread::sleep(Duration::from_millis(1100)); // past the refusal-log limiter
    let mut bare = raw(server.addr, &[0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    assert_eq!(
        closed_within(&mut bare, Duration::from_secs(10)),
        Some(Vec::new())
    );
    assert!(
        wait_log(
            "no PROXY protocol header",
            "trusted proxy",
            Duration::from_secs(10)
        )
        .is_some()
    );

    // A real client through a relay that adds a v1 header: the session
    // works and is logged under the address from the header.
    let relay = header_relay(
        server.addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 7000\r\n",
    );
    let client = RunningClient::start(client_opts(
        relay,
        vec![(loopback(), forward_to(echo_server.addr))],
    ));
    echo(client.addrs[0], b"through the relay");
    let up = wait_log("203.0.113.9:40000", "session up", Duration::from_secs(10));
    assert!(up.is_some(), "no 'session up' for the header's address");
}
