//! Helpers for the QEMU firmware tests (`tests/firmware.rs`): tool checks,
//! firmware builds in `embedded/`, a `hytun server` child whose bound port
//! is read from its log, QEMU runs with a hard deadline, and a tiny text
//! origin for bulk transfers.
//!
//! The firmware is its own cargo workspace built for `thumbv7m-none-eabi`
//! (Cortex-M boards) or `riscv32imac-unknown-none-elf` (QEMU `virt`); it is
//! built here with `cargo build --release` in `embedded/` (target dir
//! `embedded/target`), one build at a time because every build of a target
//! writes the same ELF path, which is then copied into the test's temp dir.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ChildGuard, hytun_bin, workspace_root};

/// Set to `1` to skip the QEMU tests (they print a SKIP line instead).
pub const SKIP_VAR: &str = "HYTUN_SKIP_QEMU";
/// Seconds a firmware run may take before `qemu-run.sh` stops it.
pub const QEMU_TIMEOUT_SECS: u64 = 120;
/// The firmware's exit code for a failed handshake (`embedded/src/error.rs`).
pub const EXIT_HANDSHAKE_FAILED: i32 = 30;

/// A QEMU machine the firmware supports, with its cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// `mps2-an385` (feature `board-an385`, the default).
    Mps2An385,
    /// `lm3s6965evb` (feature `board-lm3s6965`).
    Lm3s6965Evb,
    /// `virt` of `qemu-system-riscv32` (feature `board-virt`): RV32IMAC,
    /// the ESP32-C6's instruction set.
    RiscvVirt,
}

impl Board {
    /// QEMU `-M` name.
    pub fn machine(self) -> &'static str {
        match self {
            Board::Mps2An385 => "mps2-an385",
            Board::Lm3s6965Evb => "lm3s6965evb",
            Board::RiscvVirt => "virt",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Board::Mps2An385 => "board-an385",
            Board::Lm3s6965Evb => "board-lm3s6965",
            Board::RiscvVirt => "board-virt",
        }
    }

    /// The Rust target the board's firmware is built for.
    pub fn target(self) -> &'static str {
        match self {
            Board::Mps2An385 | Board::Lm3s6965Evb => "thumbv7m-none-eabi",
            Board::RiscvVirt => "riscv32imac-unknown-none-elf",
        }
    }

    /// The QEMU system emulator and the Debian package that has it.
    fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Board::Mps2An385 | Board::Lm3s6965Evb => ("qemu-system-arm", "qemu-system-arm"),
            Board::RiscvVirt => ("qemu-system-riscv32", "qemu-system-misc"),
        }
    }

    /// The `size` the size scripts use and the Debian package that has it.
    fn size_tool(self) -> (&'static str, &'static str) {
        match self {
            Board::Mps2An385 | Board::Lm3s6965Evb => {
                ("arm-none-eabi-size", "binutils-arm-none-eabi")
            }
            Board::RiscvVirt => ("riscv64-unknown-elf-size", "binutils-riscv64-unknown-elf"),
        }
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.machine())
    }
}

/// The firmware workspace.
pub fn embedded_dir() -> PathBuf {
    workspace_root().join("embedded")
}

/// Whether the QEMU tests for `board` can run. `false` (after a loud SKIP
/// line) only when `HYTUN_SKIP_QEMU=1`; a missing tool otherwise fails the
/// test with the command that installs it.
pub fn ready(test: &str, board: Board) -> bool {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        // Straight to the stream, not `eprintln!`: the test harness would
        // capture (and hide) the output of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP {test}: {SKIP_VAR}=1, the QEMU firmware test did NOT run ***\n"
        );
        return false;
    }
    let missing = missing_prerequisites(board);
    assert!(
        missing.is_empty(),
        "the QEMU firmware tests need tools that are missing:\n  - {}\n\
         scripts/test-all.sh installs all of them; or set {SKIP_VAR}=1 to skip these tests",
        missing.join("\n  - ")
    );
    true
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Tools the firmware tests on `board` need and do not find, each with its
/// install command.
pub fn missing_prerequisites(board: Board) -> Vec<String> {
    let mut missing = Vec::new();
    let (qemu, qemu_package) = board.qemu();
    if !runs(qemu, &["--version"]) {
        missing.push(format!("{qemu} (apt-get install {qemu_package})"));
    }
    let (size, size_package) = board.size_tool();
    if !runs(size, &["--version"]) {
        missing.push(format!("{size} (apt-get install {size_package})"));
    }
    let defmt_print = std::env::var("DEFMT_PRINT").unwrap_or_else(|_| "defmt-print".into());
    if !runs(&defmt_print, &["--version"]) {
        missing.push(format!(
            "{defmt_print} (cargo install defmt-print --locked)"
        ));
    }
    let target = board.target();
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", target])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let has_core = libdir
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|mut entries| {
            entries
                .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        });
    if !has_core {
        missing.push(format!("Rust target {target} (rustup target add {target})"));
    }
    missing
}

/// Generates an RSA key pair with `hytun keygen` (`DIR/NAME.key`, PKCS#8
/// PEM; `DIR/NAME.pub`, SPKI PEM).
pub fn keygen(dir: &Path, name: &str, bits: u32) {
    let out = crate::hytun(
        dir,
        &[
            "keygen",
            "--bits",
            &bits.to_string(),
            "--out",
            ".",
            "--name",
            name,
        ],
    );
    assert!(
        out.status.success(),
        "hytun keygen {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `hytun server` and its log so far.
pub struct HytunServer {
    /// Where it accepts tunnel clients.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _child: ChildGuard,
}

impl HytunServer {
    /// Starts `hytun server --listen 127.0.0.1:0 --key KEY
    /// --authorized-keys AUTH --allow PATTERN...` in `dir` and waits for its
    /// `listening on ADDR` log line, which names the port the OS chose (so
    /// no port is probed, and the first connection to it is the firmware's).
    pub fn start(dir: &Path, key: &Path, authorized_keys: &Path, allow: &[&str]) -> HytunServer {
        Self::start_with(dir, key, authorized_keys, allow, &[])
    }

    /// [`Self::start`] with `extra` arguments appended (e.g.
    /// `--permit-listen 127.0.0.1:PORT` for a device that serves).
    pub fn start_with(
        dir: &Path,
        key: &Path,
        authorized_keys: &Path,
        allow: &[&str],
        extra: &[&str],
    ) -> HytunServer {
        let mut args: Vec<OsString> = vec![
            "server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--key".into(),
            key.into(),
            "--authorized-keys".into(),
            authorized_keys.into(),
        ];
        for pattern in allow {
            args.push("--allow".into());
            args.push((*pattern).into());
        }
        args.extend(extra.iter().map(OsString::from));
        let mut child = Command::new(hytun_bin())
            .current_dir(dir)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hytun server");
        let stderr = child.stderr.take().expect("piped stderr");
        let guard = ChildGuard(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "hytun server did not report `listening on ADDR` within 30 s; log:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                )
            });
        HytunServer {
            addr,
            log,
            _child: guard,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Serialises firmware builds: they all write the same ELF path.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Environment variables of the outer `cargo test` that must not leak into
/// the firmware's own cargo build (other target, other flags).
fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
            || k == "CARGO_ENCODED_RUSTFLAGS"
            || k == "CARGO_TARGET_DIR"
            || k == "CARGO_BUILD_TARGET"
            || k.starts_with("CARGO_BUILD_")
            || k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_TARGET_")
            || k.starts_with("HYTUN_")
        {
            cmd.env_remove(&key);
        }
    }
}

/// Builds the firmware for `board` with the build-time variables `vars`
/// (`HYTUN_DEVICE_KEY`, `HYTUN_SERVER_PUB`, `HYTUN_ORIGIN_PORT`, ...) and
/// copies the ELF to `out`. Returns the build time.
pub fn build_firmware(board: Board, vars: &[(&str, OsString)], out: &Path) -> Duration {
    let _lock = BUILD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = embedded_dir();
    let target_dir = dir.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    scrub(&mut cmd);
    cmd.current_dir(&dir)
        .args([
            "build",
            "--release",
            "--target",
            board.target(),
            "--no-default-features",
            "--features",
            board.feature(),
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("DEFMT_LOG", "info")
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let output = cmd.output().expect("run cargo build for the firmware");
    let took = start.elapsed();
    assert!(
        output.status.success(),
        "firmware build for {board} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let elf = target_dir
        .join(board.target())
        .join("release/hytun-firmware");
    std::fs::copy(&elf, out)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", elf.display(), out.display()));
    took
}

/// What one QEMU run produced.
pub struct QemuRun {
    /// The firmware's exit code (`qemu-run.sh`'s status; 124 = timeout).
    pub code: Option<i32>,
    /// The decoded defmt log (defmt-print's stdout).
    pub log: String,
    /// `qemu-run.sh`'s and QEMU's stderr.
    pub stderr: String,
    /// Wall time of the run.
    pub wall: Duration,
}

impl QemuRun {
    /// The value of `key=NUMBER` in the log, if present.
    pub fn number(&self, key: &str) -> Option<u64> {
        let pat = format!("{key}=");
        let rest = self.log.split(pat.as_str()).nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
}

impl fmt::Display for QemuRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?} after {:.1} s\n--- defmt log ---\n{}--- stderr ---\n{}",
            self.code,
            self.wall.as_secs_f64(),
            self.log,
            self.stderr
        )
    }
}

/// Boots `elf` on `board` with `embedded/qemu-run.sh`, UART0 connected to
/// `127.0.0.1:uart_port` (a listener that must already accept), under
/// `-icount shift=0` so the logged instruction counts are exact. The
/// script stops QEMU after [`QEMU_TIMEOUT_SECS`]; this function kills the
/// whole process group 30 s after that if the script is still running.
pub fn run_firmware(board: Board, elf: &Path, uart_port: u16) -> QemuRun {
    let mut cmd = Command::new(embedded_dir().join("qemu-run.sh"));
    cmd.arg(board.machine())
        .arg(elf)
        .env("HYTUN_UART_PORT", uart_port.to_string())
        .env("HYTUN_ICOUNT", "1")
        .env("HYTUN_FRESH_SEED", "1")
        .env("HYTUN_QEMU_TIMEOUT", QEMU_TIMEOUT_SECS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn qemu-run.sh");
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = start + Duration::from_secs(QEMU_TIMEOUT_SECS + 30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(pgid);
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(_) => {
                kill_group(pgid);
                break None;
            }
        }
    };
    let wall = start.elapsed();
    QemuRun {
        code: status.and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig))),
        log: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
        wall,
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// An HTTP/1.0 origin that answers every request with one fixed text body
/// (for bulk transfers whose end must be checked: put the marker last).
pub struct TextOrigin {
    /// Bound address.
    pub addr: SocketAddr,
}

impl TextOrigin {
    /// Serves `body` as `text/plain` to every connection, then closes it.
    pub fn start(body: Vec<u8>) -> std::io::Result<TextOrigin> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let body = Arc::new(body);
        thread::spawn(move || {
            for mut sock in listener.incoming().flatten() {
                let body = body.clone();
                thread::spawn(move || {
                    // Read the request head (up to the blank line), then answer.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        match sock.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let header = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(header.as_bytes());
                    let _ = sock.write_all(&body);
                });
            }
        });
        Ok(TextOrigin { addr })
    }
}

/// `len` bytes of numbered text lines ending in `marker` and a newline.
pub fn text_body(len: usize, marker: &str) -> Vec<u8> {
    let tail = format!("{marker}\n");
    let mut body = Vec::with_capacity(len);
    let mut line = 0u32;
    while body.len() + tail.len() < len {
        let text = format!("line {line:05} of the hytun bulk body\n");
        body.extend_from_slice(text.as_bytes());
        line += 1;
    }
    body.truncate(len - tail.len());
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The build variables for a firmware provisioned with `device_key` (PKCS#8
/// PEM), pinning `server_pub` (SPKI PEM), fetching `path` from
/// `127.0.0.1:origin_port` and expecting `marker` in the body.
pub fn firmware_vars(
    device_key: &Path,
    server_pub: &Path,
    origin_port: u16,
    path: &str,
    marker: &str,
) -> Vec<(&'static str, OsString)> {
    vec![
        ("HYTUN_DEVICE_KEY", device_key.into()),
        ("HYTUN_SERVER_PUB", server_pub.into()),
        ("HYTUN_ORIGIN_HOST", "127.0.0.1".into()),
        ("HYTUN_ORIGIN_PORT", origin_port.to_string().into()),
        ("HYTUN_ORIGIN_PATH", path.into()),
        ("HYTUN_EXPECT_BODY", marker.into()),
    ]
}
