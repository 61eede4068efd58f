//! The server's resource model under attack, over real loopback sockets
//! against the real `hytun server` binary (so its RSS, descriptor limit and
//! exit status are those of a real process). Distinct 127.x.y.z source
//! addresses stand in for distinct hosts. Limits are lowered through flags
//! so each test spends its budget quickly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hytun_host::origin::{HELLO_BODY, Origin};
use hytun_tests::harness::keydir;
use hytun_tests::*;

fn key(name: &str) -> String {
    keydir().join(name).to_string_lossy().into_owned()
}

/// `hytun server` on 127.0.0.1:`port` with the test keys and `extra` flags,
/// optionally under a descriptor limit (soft and hard); returns once it
/// listens.
fn server(port: u16, allow: &str, extra: &[&str], nofile: Option<u32>) -> ServerProc {
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "server",
        "--listen",
        &listen,
        "--key",
        &key("server.key"),
        "--authorized-keys",
        &key("authorized_keys"),
        "--allow",
        allow,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(hytun_bin())
                .args(&args);
            c
        }
        None => {
            let mut c = Command::new(hytun_bin());
            c.args(&args);
            c
        }
    };
    let child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hytun server");
    let mut guard = ChildGuard(child);
    // Drain the log as it comes: a full pipe would block the server.
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = guard.0.stderr.take() {
        let log = log.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
    }
    assert!(
        wait_listening(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30)
        ),
        "server did not start"
    );
    ServerProc { guard, log }
}

/// A running server process and its log so far.
struct ServerProc {
    guard: ChildGuard,
    log: Arc<Mutex<String>>,
}

impl ServerProc {
    fn pid(&self) -> u32 {
        self.guard.0.id()
    }
}

/// `hytun client` forwarding 127.0.0.1:`local` to `dest` through the server.
fn client(server_port: u16, local: u16, dest: SocketAddr) -> ChildGuard {
    let child = Command::new(hytun_bin())
        .args([
            "client",
            "--server",
            &format!("127.0.0.1:{server_port}"),
            "--key",
            &key("client.key"),
            "--server-key",
            &key("server.pub"),
            "-L",
            &format!("127.0.0.1:{local}:{}:{}", dest.ip(), dest.port()),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hytun client");
    let guard = ChildGuard(child);
    assert!(
        wait_listening(
            SocketAddr::from((Ipv4Addr::LOCALHOST, local)),
            Duration::from_secs(30)
        ),
        "client did not start"
    );
    guard
}

/// GET /hello through a local forward; the body on success.
fn get_hello(local: u16, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, local))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A connection to `to` from source address `from` (port chosen by the
/// kernel).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((from, 0)).into())?;
    sock.connect(&to.into())?;
    Ok(sock.into())
}

/// True while the server has not closed `s` (a non-blocking read would
/// block).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut b = [0u8; 64];
    let open = matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).ok();
    open
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Stops the server and returns everything it logged.
fn stderr_of(mut srv: ServerProc) -> String {
    let _ = srv.guard.0.kill();
    let _ = srv.guard.0.wait();
    thread::sleep(Duration::from_millis(100));
    srv.log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A destination that accepts connections and never reads from them.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { addr, stop }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn stalled_handshakes_from_many_hosts_cannot_lock_out_a_client() {
    let origin = Origin::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = free_port();
    let srv = server(
        port,
        &format!("127.0.0.1:{}", origin.addr().port()),
        &[
            "--threads",
            "1",
            "--max-pending",
            "32",
            "--max-pending-per-source",
            "4",
            "--hello-timeout",
            "60",
            "--handshake-timeout",
            "60",
        ],
        None,
    );
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // 48 "hosts" × 6 stalled connections each: one byte of a ClientHello,
    // then nothing, far more than the pending table holds.
    let hosts: Vec<Ipv4Addr> = (1..=48).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let mut stalled = Vec::new();
    for _round in 0..6 {
        for h in &hosts {
            if let Ok(mut s) = connect_from(*h, server_addr) {
                let _ = s.write_all(&[0x01]);
                stalled.push(s);
            }
        }
    }
    assert!(stalled.len() >= 250, "opened {}", stalled.len());
    // The flood goes on while the real client connects.
    let flooding = Arc::new(AtomicBool::new(true));
    let f = flooding.clone();
    let flood = thread::spawn(move || {
        let mut more = Vec::new();
        let mut i = 0u32;
        while f.load(Ordering::Relaxed) {
            let h = Ipv4Addr::new(127, 0, 2, (i % 200) as u8 + 1);
            if let Ok(mut s) = connect_from(h, server_addr) {
                let _ = s.write_all(&[0x01]);
                more.push(s);
            }
            i += 1;
            thread::sleep(Duration::from_millis(2));
        }
        more.len()
    });
    let local = free_port();
    let started = Instant::now();
    let _client = client(port, local, origin.addr());
    let body = loop {
        match get_hello(local, Duration::from_secs(5)) {
            Ok(b) if b.ends_with(HELLO_BODY) => break b,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the authorized client never got through"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let took = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let flooded = flood.join().unwrap();
    assert!(body.ends_with(HELLO_BODY));
    // The table was full the whole time: stalled connections are still
    // held (the server evicts the oldest, never refuses the newcomer).
    let open = stalled.iter_mut().map(still_open).filter(|&o| o).count();
    eprintln!(
        "client through in {took:?} with {} stalled + {flooded} flooding connections; {open} of the first {} still open",
        stalled.len(),
        stalled.len()
    );
    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(500),
        "client took {took:?} (process start included)"
    );
    drop(srv);
}

#[test]
fn server_memory_stays_within_its_budget_while_clients_push_at_dead_upstreams() {
    let sink = Sink::start();
    let port = free_port();
    let budget_mib = 24u64;
    let srv = server(
        port,
        &format!("127.0.0.1:{}", sink.addr.port()),
        &[
            "--threads",
            "1",
            "--memory-budget",
            &budget_mib.to_string(),
            "--session-memory",
            "16",
        ],
        None,
    );
    let pid = srv.pid();
    // Two authorized sessions, each with 400 streams writing as fast as
    // the tunnel takes it toward a destination that never reads.
    let locals = [free_port(), free_port()];
    let _clients: Vec<ChildGuard> = locals.iter().map(|&l| client(port, l, sink.addr)).collect();
    thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid);
    let mut socks = Vec::new();
    for &l in &locals {
        for _ in 0..400 {
            if let Ok(s) = TcpStream::connect((Ipv4Addr::LOCALHOST, l)) {
                s.set_nonblocking(true).unwrap();
                socks.push(s);
            }
        }
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let mut peak = baseline;
    let mut pushed = 0u64;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for s in &mut socks {
            if let Ok(n) = s.write(&chunk) {
                pushed += n as u64;
            }
        }
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(20));
    }
    let grew_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!(
        "pushed {} MiB into {} streams; server RSS {baseline} KiB -> peak {peak} KiB (+{grew_mib:.1} MiB, budget {budget_mib} MiB)",
        pushed >> 20,
        socks.len()
    );
    assert!(
        pushed > (budget_mib << 20),
        "the clients pushed too little to test anything"
    );
    // Budget plus a fixed margin for allocator slack and queue capacity.
    assert!(
        grew_mib <= budget_mib as f64 + 24.0,
        "server RSS grew {grew_mib:.1} MiB with a {budget_mib} MiB budget"
    );
    let err = stderr_of(srv);
    assert!(err.contains("memory budget spent"), "{err}");
}

#[test]
fn a_session_that_spends_its_descriptors_does_not_stop_another_client() {
    let sink = Sink::start();
    let origin = Origin::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = free_port();
    // 200 descriptors: 8 sessions + 8 pending + 64 reserved, so 120 for
    // upstreams, at most 60 of them per session.
    let origin_rule = format!("127.0.0.1:{}", origin.addr().port());
    let srv = server(
        port,
        &format!("127.0.0.1:{}", sink.addr.port()),
        &[
            "--allow",
            &origin_rule,
            "--threads",
            "1",
            "--max-sessions",
            "8",
            "--max-pending",
            "8",
        ],
        Some(200),
    );
    let hog_local = free_port();
    let _hog = client(port, hog_local, sink.addr);
    let mut held = Vec::new();
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect((Ipv4Addr::LOCALHOST, hog_local)) {
            held.push(s);
        }
    }
    // Let the server refuse what is over the session's share.
    thread::sleep(Duration::from_millis(1500));
    let local = free_port();
    let _second = client(port, local, origin.addr());
    let started = Instant::now();
    let body = loop {
        match get_hello(local, Duration::from_secs(5)) {
            Ok(b) if b.ends_with(HELLO_BODY) => break b,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "second client failed: {other:?}"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(body.ends_with(HELLO_BODY));
    drop(held);
    let err = stderr_of(srv);
    assert!(
        err.contains("descriptor share spent"),
        "the hog was never refused: {err}"
    );
    assert!(!err.contains("accept failed"), "accept failed: {err}");
}

#[test]
fn a_second_server_on_the_same_address_exits_with_a_clear_error() {
    let port = free_port();
    let _first = server(port, "127.0.0.1:80", &[], None);
    let listen = format!("127.0.0.1:{port}");
    let out = Command::new(hytun_bin())
        .args([
            "server",
            "--listen",
            &listen,
            "--key",
            &key("server.key"),
            "--authorized-keys",
            &key("authorized_keys"),
            "--allow",
            "127.0.0.1:80",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run second server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("address already in use (is another hytun server running?)"),
        "{err}"
    );
}

/// Runs one client session over `sock` with the core directly: handshake,
/// then one stream that echoes `msg` through `echo`, then nothing. Returns
/// once the echo came back in full.
fn idle_session_after_one_exchange(
    mut sock: TcpStream,
    core: Arc<hytun_core::ClientConfig>,
    echo: SocketAddr,
    msg: &[u8],
) -> TcpStream {
    use hytun_core::{Destination, Event, Host, HostConnection, Instant as CoreInstant};
    let t0 = Instant::now();
    let now = || CoreInstant::from_millis(t0.elapsed().as_millis() as u64);
    let mut rng = hytun_host::runtime::os_rng();
    let mut conn = Box::new(HostConnection::client(core, now(), &mut rng));
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ip = match echo.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 echo expected"),
    };
    let mut stream = None;
    let mut back = 0usize;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let out = conn.transmit_pending().to_vec();
        if !out.is_empty() {
            sock.write_all(&out).unwrap();
            conn.transmit_done(out.len());
        }
        if back == msg.len() {
            return sock;
        }
        let n = sock.read(&mut buf).expect("read from server");
        assert!(n > 0, "server closed the session");
        let mut off = 0;
        while off < n {
            off += conn.handle_input(&buf[off..n], now(), &mut rng);
            let mut connected = false;
            let mut consumed = Vec::new();
            while let Some(ev) = conn.poll_event() {
                match ev {
                    Event::Connected => connected = true,
                    Event::Data { id, data } => {
                        back += data.len();
                        consumed.push((id, data.len()));
                    }
                    Event::Closed { error } => panic!("session closed: {error}"),
                    _ => {}
                }
            }
            for (id, n) in consumed {
                conn.stream_consumed(id, n);
            }
            if connected {
                let id = conn
                    .open_stream(Destination {
                        host: Host::Ipv4(ip),
                        port: echo.port(),
                    })
                    .unwrap();
                stream = Some(id);
            }
            if let Some(id) = stream
                && back == 0
                && conn.stream_send(id, msg).unwrap_or(0) == msg.len()
            {
                let _ = conn.stream_finish(id);
                stream = None;
            }
        }
    }
}

#[test]
fn a_thousand_idle_sessions_cost_at_most_16_kib_each() {
    const SESSIONS: usize = 1000;
    // Room for this process's 1000 sockets.
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
    let echo = EchoServer::start().unwrap();
    let port = free_port();
    let srv = server(
        port,
        &format!("127.0.0.1:{}", echo.addr.port()),
        &[
            "--threads",
            "1",
            "--max-sessions",
            "1100",
            "--max-pending",
            "1100",
            "--handshake-rate",
            "1000",
            "--key-ops-rate",
            "5000",
        ],
        None,
    );
    let pid = srv.pid();
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let core = hytun_host::setup::client_options(hytun_host::setup::ClientFlags {
        key: Some(keydir().join("client.key")),
        server_key: Some(keydir().join("server.pub")),
        ..Default::default()
    })
    .expect("client options")
    .core;
    // Warm-up: the first session allocates the loop's own buffers.
    let warm = connect_from(Ipv4Addr::new(127, 0, 4, 1), server_addr).unwrap();
    let warm = idle_session_after_one_exchange(warm, core.clone(), echo.addr, &[7u8; 1000]);
    thread::sleep(Duration::from_millis(2500));
    let baseline = rss_kib(pid);
    // Sessions from 250 "hosts", four each, on four threads.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let core = core.clone();
            let echo = echo.addr;
            thread::spawn(move || {
                (0..SESSIONS / 4)
                    .map(|i| {
                        let n = w * (SESSIONS / 4) + i;
                        let src = Ipv4Addr::new(127, 0, 5 + (n / 250) as u8, (n % 250) as u8 + 1);
                        let s = connect_from(src, server_addr).expect("connect");
                        idle_session_after_one_exchange(s, core.clone(), echo, &[n as u8; 1000])
                    })
                    .collect::<Vec<TcpStream>>()
            })
        })
        .collect();
    let sessions: Vec<TcpStream> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("session worker"))
        .collect();
    assert_eq!(sessions.len(), SESSIONS);
    // Quiet for longer than the server's idle-release delay.
    thread::sleep(Duration::from_millis(2500));
    let after = rss_kib(pid);
    let per_session = after.saturating_sub(baseline) as f64 / SESSIONS as f64;
    eprintln!(
        "{SESSIONS} idle sessions: server RSS {baseline} KiB -> {after} KiB, {per_session:.1} KiB each"
    );
    assert!(
        per_session <= 16.0,
        "an idle session costs {per_session:.1} KiB"
    );
    drop(sessions);
    drop(warm);
}

/// A ClientHello from a fresh client session with the test keys.
fn client_hello(config: &std::sync::Arc<hytun_core::ClientConfig>) -> Vec<u8> {
    let mut rng = hytun_host::runtime::os_rng();
    let mut conn: Box<hytun_core::Connection<4096, 2048, 1>> =
        Box::new(hytun_core::Connection::client(
            config.clone(),
            hytun_core::Instant::from_millis(0),
            &mut rng,
        ));
    conn.transmit_pending().to_vec()
}

#[test]
fn a_full_key_queue_answers_busy_and_the_server_carries_on() {
    use hytun_core::{ConnectionError, HandshakeError, PrivateIdentity, PublicIdentity};
    let mut rng = hytun_host::runtime::os_rng();
    let identity = PrivateIdentity::new(
        hytun_keys::load_private_key(&keydir().join("client.key")).unwrap(),
        &mut rng,
    )
    .unwrap();
    let pinned =
        PublicIdentity::new(hytun_keys::load_public_key(&keydir().join("server.pub")).unwrap())
            .unwrap();
    let config = std::sync::Arc::new(hytun_core::ClientConfig::new(
        identity,
        pinned,
        hytun_core::SessionConfig::HOST,
    ));
    // One key worker and room for one waiting job: of 24 ClientHellos that
    // arrive together, most find the queue full. Other limits are lifted
    // so that only the key queue refuses.
    let port = free_port();
    let origin = Origin::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let srv = server(
        port,
        &origin.addr().to_string(),
        &[
            "--key-workers",
            "1",
            "--key-queue",
            "1",
            "--handshake-rate",
            "100000",
            "--key-ops-rate",
            "100000",
            "--max-pending-per-source",
            "1000",
        ],
        None,
    );
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let hellos: Vec<Vec<u8>> = (0..24).map(|_| client_hello(&config)).collect();
    let mut socks: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(to).unwrap()).collect();
    for (s, hello) in socks.iter_mut().zip(&hellos) {
        s.write_all(hello).unwrap();
    }
    let (mut busy, mut served) = (0, 0);
    for s in &mut socks {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 2048];
        // The answer is an alert then EOF, or a ServerHello and Finished
        // (and the session then waits for the client's Finished).
        while reply.len() < 3 + 32 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        let mut conn: Box<hytun_core::Connection<4096, 2048, 1>> =
            Box::new(hytun_core::Connection::client(
                config.clone(),
                hytun_core::Instant::from_millis(0),
                &mut rng,
            ));
        // A fresh client state reads the reply: an alert is its error.
        let _ = conn.handle_input(&reply, hytun_core::Instant::from_millis(1), &mut rng);
        match conn.error() {
            Some(ConnectionError::Handshake(HandshakeError::PeerAlert(
                hytun_core::AlertReason::Busy,
                _,
            ))) => busy += 1,
            _ if reply.first() == Some(&hytun_core::wire::handshake::TYPE_SERVER_HELLO) => {
                served += 1
            }
            other => panic!(
                "neither Busy nor a ServerHello: {other:?}, {} bytes",
                reply.len()
            ),
        }
    }
    eprintln!("key queue: {busy} busy, {served} served");
    assert!(busy >= 1, "the queue never filled ({served} served)");
    assert!(served >= 1, "every handshake was refused");
    // The refusals are logged, and the server still serves a real client.
    let local = free_port();
    let _client = client(port, local, origin.addr());
    let page = get_hello(local, Duration::from_secs(30)).expect("a page after the burst");
    assert!(page.ends_with(HELLO_BODY), "{page}");
    let log = stderr_of(srv);
    assert!(log.contains("private-key work queue full"), "{log}");
}
