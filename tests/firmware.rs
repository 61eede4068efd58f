//! The firmware end to end: the tunnel client (`embedded/`) runs under QEMU
//! with its UART0 connected straight to a real `hytun server` on loopback,
//! opens a stream to an HTTP origin behind the server and checks the page
//! it gets back. The same application runs on two Cortex-M boards
//! (`mps2-an385`, `lm3s6965evb`) and on RISC-V (`virt` of
//! `qemu-system-riscv32`, RV32IMAC: the ESP32-C6's ISA); every case below
//! (page fetch, unauthorized key, 16 KiB body) runs on `mps2-an385` and on
//! `virt`, the page fetch also on `lm3s6965evb`. The device as a server
//! (a firmware built with `HYTUN_REVERSE_PORT`: it asks the server for a
//! remote listener and answers a status page on the streams the server
//! opens) runs on `lm3s6965evb` and `virt`:
//!
//! ```text
//! test (HTTP client) --TCP--> hytun server's remote listener
//!                              --INCOMING stream over UART0--> QEMU (firmware)
//! ```
//!
//! ```text
//! QEMU (firmware) --UART0 = TCP--> hytun server --TCP--> origin (127.0.0.1)
//! ```
//!
//! Each test generates fresh keys with `hytun keygen` (a 2048-bit device
//! key, the server's default 3072-bit key), builds the firmware with them
//! (`cargo build --release` in `embedded/`), boots it with
//! `embedded/qemu-run.sh` under `-icount shift=0` and asserts on its exit
//! code and decoded defmt log. Needs `qemu-system-arm`,
//! `qemu-system-riscv32` (Debian `qemu-system-misc`), `defmt-print`, the
//! binutils of both targets and the `thumbv7m-none-eabi` and
//! `riscv32imac-unknown-none-elf` Rust targets (`scripts/test-all.sh`
//! installs them); `HYTUN_SKIP_QEMU=1` skips with a loud SKIP line.

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hytun_host::origin::{HELLO_BODY, Origin};
use hytun_tests::qemu::{
    self, Board, EXIT_HANDSHAKE_FAILED, HytunServer, QemuRun, TextOrigin, build_firmware,
    firmware_vars, keygen, run_firmware, text_body,
};
use hytun_tests::workspace_root;

/// The marker `/hello` of the host's origin contains.
const MARKER: &str = "hytun-origin-ok";

/// Keys, origin and server of one test.
struct Fixture {
    dir: tempfile::TempDir,
    origin: Origin,
    server: HytunServer,
}

impl Fixture {
    /// Fresh keys (`device` authorized, `rogue` not), the host's origin and
    /// a `hytun server` allowing `127.0.0.1:*`.
    fn start() -> Fixture {
        Fixture::start_with(&[])
    }

    /// [`Fixture::start`] with extra `hytun server` arguments.
    fn start_with(server_args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(dir.path(), "device", 2048);
        keygen(dir.path(), "rogue", 2048);
        keygen(dir.path(), "server", 3072);
        std::fs::copy(
            dir.path().join("device.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("write authorized_keys");
        let origin = Origin::start("127.0.0.1:0".parse().expect("addr")).expect("origin");
        let server = HytunServer::start_with(
            dir.path(),
            &dir.path().join("server.key"),
            &dir.path().join("authorized_keys"),
            &["127.0.0.1:*"],
            server_args,
        );
        Fixture {
            dir,
            origin,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Builds the firmware for `board` provisioned with `device` (a key
    /// stem in the temp dir) to fetch `path` from `origin_port`.
    fn build(
        &self,
        board: Board,
        device: &str,
        origin_port: u16,
        path: &str,
        marker: &str,
    ) -> PathBuf {
        self.build_with(board, device, origin_port, path, marker, Vec::new())
    }

    /// [`Fixture::build`] with extra build variables.
    fn build_with(
        &self,
        board: Board,
        device: &str,
        origin_port: u16,
        path: &str,
        marker: &str,
        extra: Vec<(&'static str, OsString)>,
    ) -> PathBuf {
        let elf = self.path(&format!("fw-{}-{device}.elf", board.machine()));
        let mut vars = firmware_vars(
            &self.path(&format!("{device}.key")),
            &self.path("server.pub"),
            origin_port,
            path,
            marker,
        );
        vars.extend(extra);
        let took = build_firmware(board, &vars, &elf);
        eprintln!(
            "firmware for {board} ({device} key) built in {:.1} s",
            took.as_secs_f64()
        );
        elf
    }

    fn run(&self, board: Board, elf: &Path) -> QemuRun {
        let run = run_firmware(board, elf, self.server.addr.port());
        eprintln!("{board}: {run}\n--- server log ---\n{}", self.server.log());
        run
    }
}

fn assert_contains(run: &QemuRun, needle: &str) {
    assert!(
        run.log.contains(needle),
        "the firmware log lacks `{needle}`:\n{run}"
    );
}

/// Asserts a successful fetch of `/hello` and prints the measurements.
fn assert_fetched(board: Board, run: &QemuRun) {
    assert_eq!(run.code, Some(0), "firmware on {board} failed:\n{run}");
    assert_contains(run, "connected: handshake done");
    assert!(
        run.log.contains("HTTP/1.0 200") || run.log.contains("HTTP/1.1 200"),
        "no `HTTP/1.x 200` status line in the log:\n{run}"
    );
    assert_contains(run, MARKER);
    assert_contains(run, "session closed (CLOSE Normal sent)");
    assert_contains(run, "mem: stack_peak=");
    eprintln!(
        "SUMMARY {board}: handshake_instructions={:?} key_setup_instructions={:?} stack_peak={:?} heap_peak={:?}",
        run.number("handshake_instructions"),
        run.number("key_setup_instructions"),
        run.number("stack_peak"),
        run.number("heap_peak"),
    );
}

/// Flash and static RAM must stay within 10 % of embedded/expected-size.txt.
fn check_size(board: Board, elf: &Path) {
    let check = std::process::Command::new("bash")
        .arg(workspace_root().join("embedded/check-size.sh"))
        .arg(elf)
        .output()
        .expect("run embedded/check-size.sh");
    assert!(
        check.status.success(),
        "firmware size check failed for {board}:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&check.stdout).trim_end());
}

fn fetch_hello_on(board: Board, test: &str) {
    if !qemu::ready(test, board) {
        return;
    }
    assert!(
        HELLO_BODY.contains(MARKER),
        "the origin's /hello must carry the marker"
    );
    let fx = Fixture::start();
    let elf = fx.build(board, "device", fx.origin.addr().port(), "/hello", MARKER);
    check_size(board, &elf);
    let run = fx.run(board, &elf);
    assert_fetched(board, &run);
    // The server saw the same session from its side.
    let log = fx.server.log();
    assert!(
        log.contains("session up"),
        "server log lacks `session up`:\n{log}"
    );
}

#[test]
fn firmware_fetches_a_page_through_the_tunnel_on_mps2_an385() {
    fetch_hello_on(
        Board::Mps2An385,
        "firmware_fetches_a_page_through_the_tunnel_on_mps2_an385",
    );
}

#[test]
fn firmware_fetches_a_page_through_the_tunnel_on_lm3s6965evb() {
    fetch_hello_on(
        Board::Lm3s6965Evb,
        "firmware_fetches_a_page_through_the_tunnel_on_lm3s6965evb",
    );
}

#[test]
fn firmware_fetches_a_page_through_the_tunnel_on_riscv32_virt() {
    fetch_hello_on(
        Board::RiscvVirt,
        "firmware_fetches_a_page_through_the_tunnel_on_riscv32_virt",
    );
}

fn unauthorized_key_on(board: Board, test: &str) {
    if !qemu::ready(test, board) {
        return;
    }
    let fx = Fixture::start();
    let elf = fx.build(board, "rogue", fx.origin.addr().port(), "/hello", MARKER);
    let run = fx.run(board, &elf);
    assert_eq!(
        run.code,
        Some(EXIT_HANDSHAKE_FAILED),
        "an unauthorized device key must end with the handshake-failure code on {board}:\n{run}"
    );
    assert_contains(&run, "handshake failed");
    // The server's alert reason, as the core's Display and defmt Format.
    assert_contains(&run, "client key not authorized");
    assert_contains(&run, "PeerAlert(Unauthorized");
    assert!(!run.log.contains("connected: handshake done"), "{run}");
}

#[test]
fn firmware_with_an_unauthorized_key_fails_the_handshake() {
    unauthorized_key_on(
        Board::Mps2An385,
        "firmware_with_an_unauthorized_key_fails_the_handshake",
    );
}

#[test]
fn firmware_with_an_unauthorized_key_fails_the_handshake_on_riscv32_virt() {
    unauthorized_key_on(
        Board::RiscvVirt,
        "firmware_with_an_unauthorized_key_fails_the_handshake_on_riscv32_virt",
    );
}

fn bulk_on(board: Board, test: &str) {
    if !qemu::ready(test, board) {
        return;
    }
    const LEN: usize = 16 * 1024;
    let fx = Fixture::start();
    let text = TextOrigin::start(text_body(LEN, MARKER)).expect("text origin");
    // The marker is the body's last line: found only if every record
    // (16 of them, with WINDOW updates in between) arrived.
    let elf = fx.build(board, "device", text.addr.port(), "/bulk", MARKER);
    let run = fx.run(board, &elf);
    assert_fetched(board, &run);
    assert_contains(&run, &format!("body: {LEN} bytes"));
    eprintln!(
        "SUMMARY bulk {board}: {LEN} B in {:.1} s wall; transfer_instructions_per_kib={:?}",
        run.wall.as_secs_f64(),
        run.number("transfer_instructions_per_kib")
    );
}

#[test]
fn firmware_receives_16_kib_intact_and_reports_the_cost_per_kib() {
    bulk_on(
        Board::Mps2An385,
        "firmware_receives_16_kib_intact_and_reports_the_cost_per_kib",
    );
}

#[test]
fn firmware_receives_16_kib_intact_on_riscv32_virt() {
    bulk_on(
        Board::RiscvVirt,
        "firmware_receives_16_kib_intact_on_riscv32_virt",
    );
}

/// How long the host side waits for the device's remote listener (the
/// firmware boots, does its RSA handshake and sends LISTEN under QEMU).
const LISTENER_WAIT: Duration = Duration::from_secs(150);

/// A free loopback port for the server's remote listener: bound and
/// released, so another process could take it before the server does
/// (the test then fails with the listener refused, exit code 39).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Connects to the device's remote listener, retrying while nothing
/// listens there yet; `None` once `stop` is set (QEMU ended) or after
/// [`LISTENER_WAIT`].
fn connect_listener(addr: SocketAddr, stop: &AtomicBool) -> Option<TcpStream> {
    let deadline = Instant::now() + LISTENER_WAIT;
    while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(sock) => {
                sock.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("read timeout");
                return Some(sock);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect to the device's listener {addr}: {e}"),
        }
    }
    None
}

/// Sends `GET /status HTTP/1.0` on `sock` and reads the whole response.
fn get_status(sock: TcpStream) -> String {
    exchange(sock, b"GET /status HTTP/1.0\r\nHost: device\r\n\r\n")
}

/// Sends `request` on `sock` and reads the whole response.
fn exchange(mut sock: TcpStream, request: &[u8]) -> String {
    sock.write_all(request).expect("send the request");
    let mut response = Vec::new();
    sock.read_to_end(&mut response)
        .expect("read the status page");
    String::from_utf8(response).expect("the status page is UTF-8")
}

/// The number after `key: ` in a status page.
fn page_number(page: &str, key: &str) -> u64 {
    let prefix = format!("{key}: ");
    page.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the status page lacks `{key}`:\n{page}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{key}` is not a number ({e}):\n{page}"))
}

/// Checks one status page: headers, length, board, request counter.
fn assert_page(board: Board, page: &str, request: u64) {
    let (head, body) = page
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the response:\n{page}"));
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "Content-Length does not match the body:\n{page}"
    );
    assert!(body.starts_with("hytun device status\n"), "{page}");
    assert!(
        body.contains(&format!("board: {}\n", board.machine())),
        "{page}"
    );
    assert_eq!(page_number(body, "requests"), request, "{page}");
    assert!(page_number(body, "tunnel_bytes_in") > 0, "{page}");
    assert!(page_number(body, "tunnel_bytes_out") > 0, "{page}");
    assert!(page_number(body, "stream_bytes_in") > 0, "{page}");
}

/// What the host side saw of the device's listener.
struct Pages {
    first: String,
    second: String,
    /// Bytes the third, refused connection received before it ended.
    refused: Vec<u8>,
    /// The answer to a POST.
    post: String,
    /// The answer to a request head longer than the device keeps.
    oversized: String,
}

/// The host side of the serving test: two connections held open (the
/// device accepts both into its two slots), a third one the device must
/// refuse (the server then closes it without a byte); a POST on the first
/// held connection, a GET on the second, a request with an endless head,
/// and a last GET on a fresh connection.
fn host_side(addr: SocketAddr, stop: &AtomicBool) -> Option<Pages> {
    let held_a = connect_listener(addr, stop)?;
    let held_b = connect_listener(addr, stop)?;
    let mut third = connect_listener(addr, stop)?;
    let mut refused = Vec::new();
    match third.read_to_end(&mut refused) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the refused connection did not end cleanly: {e}"),
    }
    let post = exchange(
        held_a,
        b"POST /status HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    );
    let first = get_status(held_b);
    let mut endless = b"GET /status HTTP/1.0\r\n".to_vec();
    while endless.len() < 600 {
        endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let oversized = exchange(connect_listener(addr, stop)?, &endless);
    let second = get_status(connect_listener(addr, stop)?);
    Some(Pages {
        first,
        second,
        refused,
        post,
        oversized,
    })
}

fn serve_status_on(board: Board, test: &str) {
    if !qemu::ready(test, board) {
        return;
    }
    let port = free_port();
    let permit = format!("127.0.0.1:{port}");
    let fx = Fixture::start_with(&["--permit-listen", &permit]);
    let elf = fx.build_with(
        board,
        "device",
        fx.origin.addr().port(),
        "/hello",
        MARKER,
        vec![
            ("HYTUN_REVERSE_PORT", port.to_string().into()),
            ("HYTUN_REVERSE_REQUESTS", "2".into()),
        ],
    );
    check_size(board, &elf);
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let stop = stop.clone();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        thread::spawn(move || host_side(addr, &stop))
    };
    let run = fx.run(board, &elf);
    stop.store(true, Ordering::Release);
    let pages = host.join().expect("the host side panicked");
    assert_eq!(run.code, Some(0), "firmware on {board} failed:\n{run}");
    let pages = pages.unwrap_or_else(|| panic!("the device's listener never accepted:\n{run}"));
    assert!(
        pages.refused.is_empty(),
        "the third connection got bytes: {:?}\n{run}",
        String::from_utf8_lossy(&pages.refused)
    );
    assert!(
        pages
            .post
            .starts_with("HTTP/1.0 405 Method Not Allowed\r\n")
            && pages
                .post
                .ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"),
        "a POST must get an empty 405:\n{}",
        pages.post
    );
    assert!(
        pages.oversized.starts_with("HTTP/1.0 431 ")
            && pages
                .oversized
                .ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"),
        "a head over 512 B must get an empty 431:\n{}",
        pages.oversized
    );
    // Only status pages count: the 405 and 431 did not.
    assert_page(board, &pages.first, 1);
    assert_page(board, &pages.second, 2);
    let uptime = |p: &str| page_number(p.split_once("\r\n\r\n").map_or(p, |x| x.1), "uptime_ms");
    assert!(
        uptime(&pages.second) >= uptime(&pages.first),
        "uptime went backwards:\n{}\n{}",
        pages.first,
        pages.second
    );
    assert_contains(&run, "listener 1 granted");
    assert_contains(&run, "serving slots busy, refused (ResourceExhausted)");
    assert_contains(&run, "served 2 status pages: closing the session");
    assert_contains(&run, "session closed (CLOSE Normal sent)");
    eprintln!(
        "SUMMARY serve {board}: first page\n{}\nstack_peak={:?} heap_peak={:?}",
        pages.first,
        run.number("stack_peak"),
        run.number("heap_peak")
    );
}

#[test]
fn firmware_serves_its_status_page_through_a_remote_listener_on_lm3s6965evb() {
    serve_status_on(
        Board::Lm3s6965Evb,
        "firmware_serves_its_status_page_through_a_remote_listener_on_lm3s6965evb",
    );
}

#[test]
fn firmware_serves_its_status_page_through_a_remote_listener_on_riscv32_virt() {
    serve_status_on(
        Board::RiscvVirt,
        "firmware_serves_its_status_page_through_a_remote_listener_on_riscv32_virt",
    );
}
