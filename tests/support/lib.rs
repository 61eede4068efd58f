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
