//! Reverse forwards (`-R`) end to end over loopback: the server listens
//! for the client, connections accepted there reach an origin on the
//! client's side; refusals (not permitted, port taken, listener budget)
//! end the client at first contact with the reason; the listener goes away
//! with the session and comes back when the client reconnects. Target
//! names are looked up off the client's loop (a slow name stalls no other
//! stream) and their addresses tried in order.

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hytun_host::allow::DestHost;
use hytun_host::client::{Client, ClientError, ClientOptions};
use hytun_host::config::ReverseSpec;
use hytun_host::resolver::LookupFn;
use hytun_host::runtime::StopHandle;
use hytun_host::server::ServerOptions;
use hytun_host::server::listener::PermitListen;
use hytun_host::setup::{self, ServerFlags};
use hytun_tests::harness::{RunningClient, RunningServer, client_opts, keydir, server_opts};
use hytun_tests::{EchoServer, free_port, wait_listening};
use sha2::{Digest, Sha256};

fn server_permitting(permits: &[&str]) -> ServerOptions {
    let mut opts = server_opts(&[]);
    opts.listen_policy.server = permits
        .iter()
        .map(|p| PermitListen::parse(p).expect("permit"))
        .collect();
    opts
}

fn reverse(remote_port: u16, target: SocketAddr) -> ReverseSpec {
    ReverseSpec {
        bind: SocketAddr::from(([127, 0, 0, 1], remote_port)),
        host: DestHost::Ip(target.ip()),
        port: target.port(),
    }
}

fn client_with(server: SocketAddr, specs: Vec<ReverseSpec>) -> ClientOptions {
    let mut opts = client_opts(server, Vec::new());
    opts.reverse = specs;
    opts
}

/// Runs a client that is expected to give up; returns its error.
fn run_until_error(opts: ClientOptions) -> ClientError {
    let client = Client::bind(opts).expect("bind client");
    let stop = client.stop_handle();
    let t = thread::spawn(move || client.run(false));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.is_finished() {
        if Instant::now() > deadline {
            stop.stop();
            panic!("client did not exit after the refusal");
        }
        thread::sleep(Duration::from_millis(20));
    }
    match t.join().expect("client thread") {
        Err(e) => e,
        Ok(()) => panic!("client exited without an error"),
    }
}

fn up(addr: SocketAddr) -> bool {
    wait_listening(addr, Duration::from_secs(10))
}

fn closed_within(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_err() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A one-response HTTP origin on loopback.
fn http_origin(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("origin");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
            });
        }
    });
    addr
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_through_the_server_port_reaches_an_origin_on_the_client_side() {
    let origin = http_origin("hello from the client side");
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let port = free_port();
    let _client = RunningClient::start(client_with(server.addr, vec![reverse(port, origin)]));
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(up(remote), "the server listens on {remote}");
    for _ in 0..3 {
        assert_eq!(
            curl(&format!("http://{remote}/")),
            "hello from the client side"
        );
    }
}

#[test]
fn sixty_four_mib_both_ways_keep_their_sha256() {
    let echo = EchoServer::start().expect("echo");
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let port = free_port();
    let _client = RunningClient::start(client_with(server.addr, vec![reverse(port, echo.addr)]));
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(up(remote));
    let s = TcpStream::connect(remote).expect("connect");
    let mut w = s.try_clone().expect("clone");
    const TOTAL: usize = 64 << 20;
    let writer = thread::spawn(move || {
        let mut h = Sha256::new();
        let mut block = vec![0u8; 1 << 16];
        let mut x: u32 = 0x9e37_79b9;
        let mut sent = 0;
        while sent < TOTAL {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            w.write_all(&block).expect("write");
            h.update(&block);
            sent += block.len();
        }
        w.shutdown(Shutdown::Write).expect("shutdown");
        h.finalize()
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    let sent = writer.join().expect("writer");
    assert_eq!(got, TOTAL);
    assert_eq!(
        h.finalize(),
        sent,
        "SHA-256 of the echo equals what was sent"
    );
}

#[test]
fn a_port_not_permitted_for_the_key_is_refused_and_the_client_exits() {
    // The server permits any loopback port, but this key's options line
    // narrows it to one port.
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = free_port();
    let pub_pem = std::fs::read_to_string(keydir().join("client.pub")).expect("client.pub");
    let auth = dir.path().join("authorized_keys");
    std::fs::write(
        &auth,
        format!("# narrowed\npermitlisten=\"127.0.0.1:{allowed}\"\n{pub_pem}"),
    )
    .expect("write authorized_keys");
    let mut opts = setup::server_options(ServerFlags {
        listen: Some(hytun_host::config::ListenSpec {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }),
        key: Some(keydir().join("server.key")),
        authorized_keys: Some(auth),
        permit_listen: vec![PermitListen::parse("127.0.0.1:*").expect("permit")],
        ..ServerFlags::default()
    })
    .expect("server options");
    opts.limits.handshakes_per_source_per_sec = std::num::NonZeroU32::new(1000).expect("nz");
    let server = RunningServer::start(opts);
    let origin = http_origin("x");
    let other = free_port();
    let err = run_until_error(client_with(server.addr, vec![reverse(other, origin)]));
    let shown = err.to_string();
    assert!(matches!(err, ClientError::ReverseRefused(_)), "{shown}");
    assert!(
        shown.contains(&format!("127.0.0.1:{other}")) && shown.contains("not permitted"),
        "{shown}"
    );
    assert!(TcpStream::connect(("127.0.0.1", other)).is_err());
    // The permitted port works for the same key.
    let _client = RunningClient::start(client_with(server.addr, vec![reverse(allowed, origin)]));
    assert!(up(SocketAddr::from(([127, 0, 0, 1], allowed))));
    assert_eq!(curl(&format!("http://127.0.0.1:{allowed}/")), "x");
}

#[test]
fn nothing_is_listened_on_by_default() {
    let server = RunningServer::start(server_opts(&[]));
    let err = run_until_error(client_with(
        server.addr,
        vec![reverse(free_port(), http_origin("x"))],
    ));
    assert!(err.to_string().contains("not permitted"), "{err}");
}

#[test]
fn a_second_client_asking_for_the_same_port_is_refused() {
    let origin = http_origin("first");
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let port = free_port();
    let _first = RunningClient::start(client_with(server.addr, vec![reverse(port, origin)]));
    assert!(up(SocketAddr::from(([127, 0, 0, 1], port))));
    let err = run_until_error(client_with(server.addr, vec![reverse(port, origin)]));
    assert!(err.to_string().contains("already in use"), "{err}");
    // The first client's forward is untouched.
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/")), "first");
}

#[test]
fn the_session_listener_budget_is_spent_then_refused() {
    let mut opts = server_permitting(&["127.0.0.1:*"]);
    opts.limits.max_listeners = 2;
    let server = RunningServer::start(opts);
    let origin = http_origin("x");
    let ports = [free_port(), free_port(), free_port()];
    let specs = ports.iter().map(|p| reverse(*p, origin)).collect();
    let err = run_until_error(client_with(server.addr, specs));
    let shown = err.to_string();
    assert!(shown.contains("too many listeners"), "{shown}");
    assert!(
        shown.contains(&format!("127.0.0.1:{}", ports[2])),
        "{shown}"
    );
}

#[test]
fn the_listener_goes_away_with_the_client_and_comes_back_on_reconnect() {
    let origin = http_origin("again");
    // A fixed server address, so a restarted server is the same endpoint.
    let server_port = free_port();
    let server_opts_fixed = || {
        let mut o = server_permitting(&["127.0.0.1:*"]);
        o.listen = SocketAddr::from(([127, 0, 0, 1], server_port));
        o
    };
    let server = RunningServer::start(server_opts_fixed());
    let port = free_port();
    let remote = SocketAddr::from(([127, 0, 0, 1], port));

    // Gone after the client stops.
    let client = RunningClient::start(client_with(server.addr, vec![reverse(port, origin)]));
    assert!(up(remote));
    client.stop();
    assert!(
        closed_within(remote, Duration::from_secs(10)),
        "listener still open after the client stopped"
    );

    // Re-established when the same client reconnects after its session
    // died (here: the server restarted).
    let _client = RunningClient::start(client_with(server.addr, vec![reverse(port, origin)]));
    assert!(up(remote));
    drop(server);
    assert!(closed_within(remote, Duration::from_secs(10)));
    let _server = RunningServer::start(server_opts_fixed());
    assert!(up(remote), "the client asked again after reconnecting");
    assert_eq!(curl(&format!("http://{remote}/")), "again");
}

#[test]
fn toml_keys_configure_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("hytun.toml");
    std::fs::write(
        &cfg,
        "[server]\npermit-listen = [\"127.0.0.1:8080\"]\n[client]\nreverse = [\"8080:127.0.0.1:3000\"]\n",
    )
    .expect("write config");
    let server = setup::server_options(ServerFlags {
        key: Some(keydir().join("server.key")),
        authorized_keys: Some(keydir().join("authorized_keys")),
        config: Some(cfg.clone()),
        ..ServerFlags::default()
    })
    .expect("server options");
    assert_eq!(server.listen_policy.server.len(), 1);
    let client = setup::client_options(hytun_host::setup::ClientFlags {
        key: Some(keydir().join("client.key")),
        server_key: Some(keydir().join("server.pub")),
        config: Some(cfg),
        ..Default::default()
    })
    .expect("client options");
    assert_eq!(client.reverse.len(), 1);
    assert_eq!(client.reverse[0].bind.port(), 8080);
}

fn reverse_to_name(remote_port: u16, name: &str, port: u16) -> ReverseSpec {
    ReverseSpec {
        bind: SocketAddr::from(([127, 0, 0, 1], remote_port)),
        host: DestHost::Domain(name.into()),
        port,
    }
}

/// A client whose `-R` target names `lookup` resolves; stopped when dropped.
struct LookupClient {
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), ClientError>>>,
}

impl LookupClient {
    fn start(opts: ClientOptions, lookup: impl LookupFn) -> LookupClient {
        let mut client = Client::bind(opts).expect("bind client");
        client.resolve_targets_with(lookup).expect("resolver");
        let stop = client.stop_handle();
        let thread = Some(thread::spawn(move || client.run(false)));
        LookupClient { stop, thread }
    }
}

impl Drop for LookupClient {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Writes `msg` and reads its echo back (bounded by a generous timeout).
fn echo_round(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo within 20 s");
    assert_eq!(back, msg);
}

#[test]
fn a_name_target_is_resolved_by_the_system_and_reaches_the_origin() {
    // `localhost` through the system resolver, to an origin on 127.0.0.1
    // only: should the system list ::1 first, that address is refused and
    // the next one tried.
    let origin = http_origin("found by name");
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let port = free_port();
    let _client = RunningClient::start(client_with(
        server.addr,
        vec![reverse_to_name(port, "localhost", origin.port())],
    ));
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(up(remote));
    for _ in 0..2 {
        assert_eq!(curl(&format!("http://{remote}/")), "found by name");
    }
}

#[test]
fn the_addresses_of_a_name_are_tried_in_order_until_one_connects() {
    // The origin listens on 127.0.0.1 only; the name lists a closed port
    // and ::1 first, as a resolver preferring IPv6 would.
    let origin = http_origin("third address");
    let closed = closed_port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    let lookup = move |host: &str, port: u16| -> io::Result<Vec<SocketAddr>> {
        log.lock().expect("lock").push((host.to_string(), port));
        Ok(vec![
            closed,
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            SocketAddr::from(([127, 0, 0, 1], port)),
        ])
    };
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let port = free_port();
    let _client = LookupClient::start(
        client_with(
            server.addr,
            vec![reverse_to_name(port, "target.test", origin.port())],
        ),
        lookup,
    );
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(up(remote));
    assert_eq!(curl(&format!("http://{remote}/")), "third address");
    // One lookup per stream (the readiness probe made one too), each of
    // the forward's name and port.
    let asked = asked.lock().expect("lock").clone();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|(h, p)| h == "target.test" && *p == origin.port()),
        "{asked:?}"
    );
}

#[test]
fn a_name_that_does_not_resolve_refuses_its_stream_and_nothing_else() {
    let origin = http_origin("still here");
    let lookup = |host: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}: no such name"),
        ))
    };
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let (good, bad) = (free_port(), free_port());
    let _client = LookupClient::start(
        client_with(
            server.addr,
            vec![
                reverse(good, origin),
                reverse_to_name(bad, "missing.test", 80),
            ],
        ),
        lookup,
    );
    let (good, bad) = (
        SocketAddr::from(([127, 0, 0, 1], good)),
        SocketAddr::from(([127, 0, 0, 1], bad)),
    );
    assert!(up(good) && up(bad));
    for _ in 0..2 {
        // The server resets the connection it accepted for the refused
        // stream: never a clean end, never data.
        let mut s = TcpStream::connect(bad).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).expect_err("a refused stream is reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
    assert_eq!(curl(&format!("http://{good}/")), "still here");
}

/// A lookup that blocks names starting with `slow` until opened, and
/// counts the lookups blocked.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn wait_blocked(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(30);
        let mut st = self.state.lock().expect("lock");
        while st.1 != n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "never {n} lookups blocked");
            st = self.changed.wait_timeout(st, left).expect("lock").0;
        }
    }

    fn blocked(&self) -> usize {
        self.state.lock().expect("lock").1
    }

    fn open(&self) {
        self.state.lock().expect("lock").0 = true;
        self.changed.notify_all();
    }
}

#[test]
fn a_slow_lookup_does_not_stall_the_other_streams() {
    let echo = EchoServer::start().expect("echo");
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    let target = echo.addr;
    let lookup = move |host: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
        if host.starts_with("slow") {
            let mut st = g.state.lock().expect("lock");
            st.1 += 1;
            g.changed.notify_all();
            while !st.0 {
                st = g.changed.wait(st).expect("lock");
            }
            st.1 -= 1;
        }
        Ok(vec![target])
    };
    let server = RunningServer::start(server_permitting(&["127.0.0.1:*"]));
    let (direct, named) = (free_port(), free_port());
    let _client = LookupClient::start(
        client_with(
            server.addr,
            vec![
                reverse(direct, echo.addr),
                reverse_to_name(named, "slow.test", echo.addr.port()),
            ],
        ),
        lookup,
    );
    let (direct, named) = (
        SocketAddr::from(([127, 0, 0, 1], direct)),
        SocketAddr::from(([127, 0, 0, 1], named)),
    );
    assert!(up(direct));
    let mut established = TcpStream::connect(direct).expect("connect");
    echo_round(&mut established, b"before");

    // Streams whose target name hangs in the resolver (the readiness
    // probe's, then one that waits)...
    assert!(up(named));
    gate.wait_blocked(1);
    let mut waiting = TcpStream::connect(named).expect("connect");
    gate.wait_blocked(2);
    // ...while the established stream keeps moving and a new one to an IP
    // target connects: the loop is not blocked in the lookups.
    echo_round(&mut established, b"during the lookup");
    let mut fresh = TcpStream::connect(direct).expect("connect");
    echo_round(&mut fresh, b"a new stream meanwhile");
    assert_eq!(gate.blocked(), 2, "the lookups were blocked throughout");

    // Once the name resolves, its streams connect too. The one that
    // waited does unless the machine stalled past the lookup deadline
    // (5 s) meanwhile; then it is refused, which resets it: it never
    // hangs and never ends cleanly.
    gate.open();
    let mut later = TcpStream::connect(named).expect("connect");
    echo_round(&mut later, b"a name resolved at once");
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut back = [0u8; 16];
    match waiting
        .write_all(b"after the lookup")
        .and_then(|()| waiting.read_exact(&mut back))
    {
        Ok(()) => assert_eq!(&back, b"after the lookup"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    echo_round(&mut established, b"after");
}
