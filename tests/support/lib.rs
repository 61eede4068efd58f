//! Shared helpers for the end-to-end tests: locating the built `hytun`
//! binary, temp dirs, free loopback ports, and child processes that are
//! killed when dropped.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub mod qemu;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `target/<profile>` directory the tests were built into.
pub fn target_profile_dir() -> PathBuf {
    // current_exe = target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

/// Path to the `hytun` binary, built once if needed.
pub fn hytun_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = target_profile_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "-q",
            "-p",
            "hytun-host",
            "--bin",
            "hytun",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build of hytun");
        assert!(status.success(), "building the hytun binary failed");
        dir.join("hytun")
    })
    .clone()
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `hytun ARGS` to completion in `cwd`.
pub fn hytun(cwd: &Path, args: &[&str]) -> Output {
    Command::new(hytun_bin())
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hytun")
}

/// Starts `hytun ARGS` in the background.
pub fn spawn_hytun(cwd: &Path, args: &[&str]) -> ChildGuard {
    ChildGuard(
        Command::new(hytun_bin())
            .current_dir(cwd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hytun"),
    )
}

/// An unused loopback port (bound then released; tests tolerate the race
/// by retrying where it matters).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A loopback listener with a chosen backlog (std always uses 128, which
/// makes a burst of hundreds of connects wait for SYN retransmits).
pub fn listen_loopback(backlog: i32) -> io::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// A loopback TCP echo server (thread per connection) that half-closes its
/// write side when the peer half-closes.
pub struct EchoServer {
    /// Bound address.
    pub addr: SocketAddr,
}

impl EchoServer {
    /// Starts the server.
    pub fn start() -> io::Result<EchoServer> {
        let l = listen_loopback(1024)?;
        let addr = l.local_addr()?;
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let _ = s.set_nodelay(true);
                    let mut r = match s.try_clone() {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                    let mut w = s;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if w.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = w.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(EchoServer { addr })
    }
}

/// A server that reads until EOF, then replies `got N bytes` and closes:
/// proves half-close is carried (the reply comes after the client's FIN).
pub fn start_count_server() -> io::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut total = 0usize;
                let mut buf = [0u8; 8192];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("got {total} bytes").as_bytes());
            });
        }
    });
    Ok(addr)
}

/// In-process tunnels, key files, a log capture and a cuttable relay, for
/// the tests of stream ends (`edges.rs`) and `fetch` (`fetch.rs`).
pub mod harness {
    use std::io::{self, Read, Write};
    use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::thread::{self, JoinHandle};
    use std::time::{Duration, Instant};

    use hytun_host::allow::DestHost;
    use hytun_host::client::{Client, ClientError, ClientOptions, ListenerKind};
    use hytun_host::config::{Endpoint, ListenSpec};
    use hytun_host::runtime::StopHandle;
    use hytun_host::server::{Server, ServerOptions};
    use hytun_host::setup::{self, ClientFlags, ServerFlags};

    use super::{ChildGuard, hytun, spawn_hytun, wait_listening};

    /// Key files shared by the tests of one process: `server`, `client`
    /// (authorized) and `stranger`.
    pub fn keydir() -> &'static Path {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            for name in ["server", "client", "stranger"] {
                let key = hytun_keys::generate(2048).expect("keygen");
                hytun_keys::write_keypair(dir.path(), name, &key, false).expect("write keys");
            }
            std::fs::copy(
                dir.path().join("client.pub"),
                dir.path().join("authorized_keys"),
            )
            .expect("authorized");
            dir
        })
        .path()
    }

    /// `127.0.0.1:0`.
    pub fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// Server options with the test keys, allowing `allow`.
    pub fn server_opts(allow: &[&str]) -> ServerOptions {
        let mut opts = setup::server_options(ServerFlags {
            listen: Some(ListenSpec { addr: loopback() }),
            key: Some(keydir().join("server.key")),
            authorized_keys: Some(keydir().join("authorized_keys")),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..ServerFlags::default()
        })
        .expect("server options");
        opts.limits.handshakes_per_source_per_sec =
            std::num::NonZeroU32::new(1000).expect("nonzero");
        opts
    }

    /// A server running in a thread; stopped when dropped.
    pub struct RunningServer {
        /// Its address.
        pub addr: SocketAddr,
        stop: hytun_host::server::GroupStop,
        thread: Option<JoinHandle<io::Result<()>>>,
    }

    impl RunningServer {
        /// Starts a server with `opts`.
        pub fn start(opts: ServerOptions) -> RunningServer {
            let server = Server::bind(opts).expect("bind server");
            let addr = server.local_addr();
            let stop = server.stop_handle();
            let thread = Some(thread::spawn(move || server.run(false)));
            RunningServer { addr, stop, thread }
        }

        /// Asks the server to stop (graceful: GOAWAY, then CLOSE after the
        /// grace period) without waiting.
        pub fn request_stop(&self) {
            self.stop.stop();
        }
    }

    impl Drop for RunningServer {
        fn drop(&mut self) {
            self.stop.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A client running in a thread; stopped when dropped.
    pub struct RunningClient {
        /// Its listeners' addresses.
        pub addrs: Vec<SocketAddr>,
        stop: StopHandle,
        thread: Option<JoinHandle<Result<(), ClientError>>>,
    }

    impl RunningClient {
        /// Starts a client with `opts`.
        pub fn start(opts: ClientOptions) -> RunningClient {
            let client = Client::bind(opts).expect("bind client");
            let addrs = client.local_addrs().to_vec();
            let stop = client.stop_handle();
            let thread = Some(thread::spawn(move || client.run(false)));
            RunningClient {
                addrs,
                stop,
                thread,
            }
        }

        /// Stops the client and waits for it.
        pub fn stop(mut self) {
            self.stop.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Drop for RunningClient {
        fn drop(&mut self) {
            self.stop.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Client options with the test keys for `server` and `listeners`.
    pub fn client_opts(
        server: SocketAddr,
        listeners: Vec<(SocketAddr, ListenerKind)>,
    ) -> ClientOptions {
        let mut opts = setup::client_options(ClientFlags {
            server: Some(Endpoint {
                host: DestHost::Ip(server.ip()),
                port: server.port(),
            }),
            key: Some(keydir().join("client.key")),
            server_key: Some(keydir().join("server.pub")),
            ..ClientFlags::default()
        })
        .expect("client options");
        opts.listeners = listeners;
        opts
    }

    /// A `-L` listener kind to `dest`.
    pub fn forward_to(dest: SocketAddr) -> ListenerKind {
        ListenerKind::Forward {
            host: DestHost::Ip(dest.ip()),
            port: dest.port(),
        }
    }

    /// The real `hytun server` binary on `127.0.0.1:port`.
    pub fn server_process(dir: &Path, port: u16, allow: &str) -> ChildGuard {
        let key = keydir().join("server.key");
        let auth = keydir().join("authorized_keys");
        let listen = format!("127.0.0.1:{port}");
        let args = [
            "server",
            "--listen",
            &listen,
            "--key",
            key.to_str().unwrap_or_default(),
            "--authorized-keys",
            auth.to_str().unwrap_or_default(),
            "--allow",
            allow,
        ];
        let child = spawn_hytun(dir, &args);
        assert!(wait_listening(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(20)
        ));
        child
    }

    /// Runs `hytun fetch URL EXTRA.. --server SERVER` with the test keys.
    pub fn fetch_process(
        dir: &Path,
        url: &str,
        server: SocketAddr,
        extra: &[&str],
    ) -> std::process::Output {
        let ck = keydir().join("client.key");
        let sp = keydir().join("server.pub");
        let server = server.to_string();
        let mut args = vec!["fetch", url];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--server",
            &server,
            "--key",
            ck.to_str().unwrap_or_default(),
            "--server-key",
            sp.to_str().unwrap_or_default(),
        ]);
        hytun(dir, &args)
    }

    // ------------------------------------------------------------ logs --

    struct Capture;

    fn lines() -> &'static Mutex<Vec<String>> {
        static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
        LINES.get_or_init(|| Mutex::new(Vec::new()))
    }

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Debug
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata())
                && let Ok(mut l) = lines().lock()
            {
                l.push(format!("{} {}", r.level(), r.args()));
            }
        }
        fn flush(&self) {}
    }

    /// Captures this process's log records (debug and above: per-stream
    /// lines are debug) for
    /// [`log_lines_with`]. Idempotent.
    pub fn capture_logs() {
        static CAPTURE: Capture = Capture;
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    }

    /// Captured log lines containing `needle`.
    pub fn log_lines_with(needle: &str) -> Vec<String> {
        lines()
            .lock()
            .map(|l| l.iter().filter(|s| s.contains(needle)).cloned().collect())
            .unwrap_or_default()
    }

    /// Drops the captured lines containing `needle`: a test that looks up
    /// lines by a local address calls it when it opens the connection, so
    /// a line of an earlier connection that used the same port (another
    /// test of the same process) cannot be taken for this one's.
    pub fn forget_log_lines_with(needle: &str) {
        if let Ok(mut l) = lines().lock() {
            l.retain(|s| !s.contains(needle));
        }
    }

    /// Waits until a captured log line contains both `a` and `b`.
    pub fn wait_log(a: &str, b: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = log_lines_with(a).into_iter().find(|l| l.contains(b)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    // ----------------------------------------------------------- relay --

    /// A TCP relay in front of `target` whose connections can be cut (both
    /// sides closed at once, no CLOSE from either tunnel end), on demand or
    /// after a number of bytes towards the connecting side.
    pub struct Relay {
        /// Where to connect instead of `target`.
        pub addr: SocketAddr,
        cut: Arc<AtomicBool>,
        /// Bytes relayed from `target` to the connecting side.
        pub downstream: Arc<AtomicU64>,
    }

    impl Relay {
        /// Starts a relay; with `cut_after` it cuts by itself once that many
        /// bytes went downstream.
        pub fn start(target: SocketAddr, cut_after: Option<u64>) -> io::Result<Relay> {
            let l = TcpListener::bind(loopback())?;
            let addr = l.local_addr()?;
            let cut = Arc::new(AtomicBool::new(false));
            let downstream = Arc::new(AtomicU64::new(0));
            let (c, d) = (cut.clone(), downstream.clone());
            thread::spawn(move || {
                for inbound in l.incoming().flatten() {
                    let Ok(outbound) = TcpStream::connect(target) else {
                        continue;
                    };
                    let (c1, c2, d1) = (c.clone(), c.clone(), d.clone());
                    let (i2, o2) = match (inbound.try_clone(), outbound.try_clone()) {
                        (Ok(i), Ok(o)) => (i, o),
                        _ => continue,
                    };
                    thread::spawn(move || pump(outbound, inbound, c1, Some((d1, cut_after))));
                    thread::spawn(move || pump(i2, o2, c2, None));
                }
            });
            Ok(Relay {
                addr,
                cut,
                downstream,
            })
        }

        /// Cuts every connection now (and refuses to carry more bytes).
        pub fn cut(&self) {
            self.cut.store(true, Ordering::SeqCst);
        }
    }

    type Counter = (Arc<AtomicU64>, Option<u64>);

    fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, count: Option<Counter>) {
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 16 * 1024];
        loop {
            if cut.load(Ordering::SeqCst) {
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if let Some((total, limit)) = &count {
                        let t = total.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if limit.is_some_and(|l| t >= l) {
                            cut.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        // A plain close of both sides: each tunnel end sees EOF without an
        // authenticated CLOSE.
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}
