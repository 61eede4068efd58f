//! The firmware end to end: the tunnel client (`embedded/`) runs under QEMU
//! with its UART0 connected straight to a real `hytun server` on loopback,
//! opens a stream to an HTTP origin behind the server and checks the page
//! it gets back. The same application runs on two Cortex-M boards
//! (`mps2-an385`, `lm3s6965evb`) and on RISC-V (`virt` of
//! `qemu-system-riscv32`, RV32IMAC: the ESP32-C6's ISA); every case below
//! (page fetch, unauthorized key, 16 KiB body) runs on `mps2-an385` and on
//! `virt`, the page fetch also on `lm3s6965evb`.
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

use std::path::{Path, PathBuf};

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
        let server = HytunServer::start(
            dir.path(),
            &dir.path().join("server.key"),
            &dir.path().join("authorized_keys"),
            &["127.0.0.1:*"],
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
        let elf = self.path(&format!("fw-{}-{device}.elf", board.machine()));
        let vars = firmware_vars(
            &self.path(&format!("{device}.key")),
            &self.path("server.pub"),
            origin_port,
            path,
            marker,
        );
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
    // Flash and static RAM must stay within 10 % of embedded/expected-size.txt.
    let check = std::process::Command::new("bash")
        .arg(workspace_root().join("embedded/check-size.sh"))
        .arg(&elf)
        .output()
        .expect("run embedded/check-size.sh");
    assert!(
        check.status.success(),
        "firmware size check failed for {board}:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&check.stdout).trim_end());
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
