//! Build script of the hytun firmware: board memory layout, key provisioning
//! and the compile-time seed-file path.
//!
//! * **Board layout.** Exactly one `board-*` feature must be enabled (the
//!   ESP32-C6 crate in `esp32c6/` reuses this script with `board-esp32c6`,
//!   for which no memory map is written: esp-hal links its own); the
//!   matching `memory.x` is written to `OUT_DIR`, which is added to the
//!   linker search path so cortex-m-rt's `link.x` (`INCLUDE memory.x`) finds
//!   it. For the RISC-V board (`board-virt`) it also carries riscv-rt's
//!   `REGION_*` aliases, and this script passes the linker scripts itself
//!   (`-Tmemory.x -Tlink.x -Tdefmt.x`): putting them in `.cargo/config.toml`
//!   would leak into the ESP32-C6 crate below it, which shares the target
//!   triple and links esp-hal's scripts instead. The generated `memory.x` also defines the absolute symbol
//!   `_hytun_qemu_machine_<machine>`, which `qemu-run.sh` and the size scripts
//!   read (with `nm`) to learn which QEMU machine an ELF was built for.
//! * **Keys.** `HYTUN_DEVICE_KEY` (the device's PKCS#8 private key) and
//!   `HYTUN_SERVER_PUB` (the server's SubjectPublicKeyInfo) are paths to PEM
//!   or DER files. They are required: a firmware without keys is useless, so
//!   the build fails with a message naming the variables when either is
//!   unset. Relative paths are resolved against this package's directory
//!   (`embedded/`, the build script's working directory). PEM is decoded to
//!   DER here, the outer DER structure is checked (PKCS#1 input is rejected
//!   with the OpenSSL command that converts it), and the DER is written to
//!   `OUT_DIR` for `src/keys.rs` to `include_bytes!`.
//! * **Origin.** `HYTUN_ORIGIN_HOST` (IPv4 literal or domain, default
//!   `127.0.0.1`), `HYTUN_ORIGIN_PORT` (default `8080`), `HYTUN_ORIGIN_PATH`
//!   (default `/hello`) and `HYTUN_EXPECT_BODY` (default `hytun-origin-ok`)
//!   say what the client fetches through the tunnel and which marker the
//!   response body must contain. They are validated here and written to
//!   `OUT_DIR/origin.rs` as constants for `src/origin.rs`.
//! * **Device as server.** `HYTUN_REVERSE_PORT` (unset by default) turns
//!   the firmware into a status server reached through the tunnel: after
//!   the handshake it asks the server for a remote listener on
//!   `HYTUN_REVERSE_HOST:HYTUN_REVERSE_PORT` (host an IPv4 literal, default
//!   `127.0.0.1`) instead of fetching the origin, answers
//!   `HYTUN_REVERSE_REQUESTS` (default 2, 1..=1000) status-page requests and
//!   then closes the session. Written to `OUT_DIR/serve.rs` for
//!   `src/serve.rs`.
//! * **Seed path.** `HYTUN_SEED_PATH` (default `hytun-seed.bin`) is the host
//!   path the firmware opens over semihosting at boot; it is passed to the
//!   crate as `HYTUN_FW_SEED_PATH`. A relative path is resolved by QEMU
//!   against QEMU's own working directory.

use std::env;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The instruction set a board runs, which decides its linker scripts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// Cortex-M (`thumbv7m-none-eabi`): cortex-m-rt's `link.x`.
    CortexM,
    /// RV32IMAC (`riscv32imac-unknown-none-elf`): riscv-rt's `link.x`.
    Riscv32,
}

/// One supported board: its cargo feature, QEMU machine and memory map.
struct Board {
    feature_env: &'static str,
    arch: Arch,
    machine: &'static str,
    /// Symbol-safe form of `machine` (used in `_hytun_qemu_machine_*`).
    machine_symbol: &'static str,
    flash_origin: u32,
    flash_len: u32,
    ram_origin: u32,
    ram_len: u32,
}

const BOARDS: &[Board] = &[
    Board {
        feature_env: "CARGO_FEATURE_BOARD_AN385",
        arch: Arch::CortexM,
        machine: "mps2-an385",
        machine_symbol: "mps2_an385",
        flash_origin: 0x0000_0000,
        flash_len: 4 * 1024 * 1024,
        ram_origin: 0x2000_0000,
        ram_len: 4 * 1024 * 1024,
    },
    Board {
        feature_env: "CARGO_FEATURE_BOARD_LM3S6965",
        arch: Arch::CortexM,
        machine: "lm3s6965evb",
        machine_symbol: "lm3s6965evb",
        flash_origin: 0x0000_0000,
        flash_len: 256 * 1024,
        ram_origin: 0x2000_0000,
        ram_len: 64 * 1024,
    },
    // QEMU `virt` has only RAM (128 MiB at 0x8000_0000 by default). The
    // image treats its first 4 MiB as read-only "flash" (code, rodata, the
    // load image of .data) and 512 KiB after it as RAM, the ESP32-C6's SRAM
    // size, so the sizes mean what they mean on the real part.
    Board {
        feature_env: "CARGO_FEATURE_BOARD_VIRT",
        arch: Arch::Riscv32,
        machine: "virt",
        machine_symbol: "virt",
        flash_origin: 0x8000_0000,
        flash_len: 4 * 1024 * 1024,
        ram_origin: 0x8040_0000,
        ram_len: 512 * 1024,
    },
];

const DEFAULT_SEED_PATH: &str = "hytun-seed.bin";
const DEFAULT_ORIGIN_HOST: &str = "127.0.0.1";
const DEFAULT_ORIGIN_PORT: u16 = 8080;
const DEFAULT_ORIGIN_PATH: &str = "/hello";
const DEFAULT_EXPECT_BODY: &str = "hytun-origin-ok";
const DEFAULT_REVERSE_HOST: &str = "127.0.0.1";
const DEFAULT_REVERSE_REQUESTS: u32 = 2;
const MAX_REVERSE_REQUESTS: u32 = 1000;
/// Longest body marker the firmware's streaming matcher supports.
const MAX_EXPECT_BODY: usize = 64;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: hytun-firmware build: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    // The ESP32-C6 build (`esp32c6/`, feature `board-esp32c6`) shares this
    // script for keys and origin; esp-hal brings its own linker scripts.
    let mut board_name = "esp32c6";
    if env::var_os("CARGO_FEATURE_BOARD_ESP32C6").is_none() {
        let board = select_board()?;
        board_name = board.machine;
        check_target(board)?;
        write_memory_x(&out_dir, board)?;
        println!("cargo:rustc-link-search={}", out_dir.display());
        if board.arch == Arch::Riscv32 {
            // riscv-rt's link.x does not INCLUDE memory.x: it must come first.
            for script in ["memory.x", "link.x", "defmt.x"] {
                println!("cargo:rustc-link-arg=-T{script}");
            }
        }
        println!("cargo:rustc-env=HYTUN_FW_QEMU_MACHINE={}", board.machine);
    }

    provision_keys(&out_dir)?;
    origin(&out_dir)?;
    serve(&out_dir, board_name)?;
    seed_path()?;
    Ok(())
}

fn select_board() -> Result<&'static Board, String> {
    let enabled: Vec<&Board> = BOARDS
        .iter()
        .filter(|b| env::var_os(b.feature_env).is_some())
        .collect();
    match enabled.as_slice() {
        [one] => Ok(one),
        [] => Err("no board selected: enable exactly one of the features \
                   `board-an385` (default), `board-lm3s6965` or `board-virt`"
            .into()),
        _ => Err("several board features are enabled; use \
                  `--no-default-features --features board-lm3s6965` to pick the LM3S6965"
            .into()),
    }
}

/// Fails early (instead of at link time) when the board and the target
/// triple do not match.
fn check_target(board: &Board) -> Result<(), String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (want_arch, triple) = match board.arch {
        Arch::CortexM => ("arm", "thumbv7m-none-eabi"),
        Arch::Riscv32 => ("riscv32", "riscv32imac-unknown-none-elf"),
    };
    if arch == want_arch {
        Ok(())
    } else {
        Err(format!(
            "board `{}` is built for --target {triple}, not for target_arch `{arch}`",
            board.machine
        ))
    }
}

fn write_memory_x(out_dir: &Path, b: &Board) -> Result<(), String> {
    let mut text = format!(
        "/* Generated by build.rs for QEMU machine `{machine}`. */\n\
         MEMORY\n{{\n  FLASH : ORIGIN = {fo:#010x}, LENGTH = {fl}K\n  \
         RAM   : ORIGIN = {ro:#010x}, LENGTH = {rl}K\n}}\n\n\
         /* Marker read by qemu-run.sh / sizes.sh to pick the QEMU machine. */\n\
         _hytun_qemu_machine_{sym} = 1;\n",
        machine = b.machine,
        fo = b.flash_origin,
        fl = b.flash_len / 1024,
        ro = b.ram_origin,
        rl = b.ram_len / 1024,
        sym = b.machine_symbol,
    );
    if b.arch == Arch::Riscv32 {
        // riscv-rt places each output section through these aliases; the
        // stack takes the RAM above .bss (riscv-rt's `_stack_start` defaults
        // to the top of REGION_STACK), the heap is a static in .bss.
        text.push_str(
            "\nREGION_ALIAS(\"REGION_TEXT\", FLASH);\n\
             REGION_ALIAS(\"REGION_RODATA\", FLASH);\n\
             REGION_ALIAS(\"REGION_DATA\", RAM);\n\
             REGION_ALIAS(\"REGION_BSS\", RAM);\n\
             REGION_ALIAS(\"REGION_HEAP\", RAM);\n\
             REGION_ALIAS(\"REGION_STACK\", RAM);\n\
             \n/* panic = \"abort\": nothing unwinds, so the unwind tables (which\n   \
             riscv-rt's link.x would keep in flash) are dropped, as\n   \
             cortex-m-rt's link.x drops .ARM.exidx. */\n\
             SECTIONS\n{\n  /DISCARD/ : { *(.eh_frame) *(.eh_frame_hdr) }\n}\n",
        );
    }
    let path = out_dir.join("memory.x");
    fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// What a key file must contain.
#[derive(Clone, Copy)]
enum KeyKind {
    /// PKCS#8 `PrivateKeyInfo`, PEM label `PRIVATE KEY`.
    Pkcs8Private,
    /// X.509 `SubjectPublicKeyInfo`, PEM label `PUBLIC KEY`.
    Spki,
}

fn provision_keys(out_dir: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=HYTUN_DEVICE_KEY");
    println!("cargo:rerun-if-env-changed=HYTUN_SERVER_PUB");
    let device = env::var_os("HYTUN_DEVICE_KEY");
    let server = env::var_os("HYTUN_SERVER_PUB");
    let (Some(device), Some(server)) = (device, server) else {
        return Err("the firmware needs its keys at build time: set HYTUN_DEVICE_KEY \
                    (path to the device's PKCS#8 private key, PEM or DER) and HYTUN_SERVER_PUB \
                    (path to the server's SubjectPublicKeyInfo public key, PEM or DER), e.g.\n  \
                    HYTUN_DEVICE_KEY=/path/device.pk8.pem HYTUN_SERVER_PUB=/path/server.pub.pem \
                    cargo build --release\n(relative paths are resolved against the embedded/ directory)"
            .into());
    };
    let device_der = load_key(
        "HYTUN_DEVICE_KEY",
        Path::new(&device),
        KeyKind::Pkcs8Private,
    )?;
    let server_der = load_key("HYTUN_SERVER_PUB", Path::new(&server), KeyKind::Spki)?;
    write_secret(&out_dir.join("device-key.pk8.der"), &device_der)?;
    fs::write(out_dir.join("server-pub.spki.der"), &server_der)
        .map_err(|e| format!("writing server key to OUT_DIR: {e}"))
}

fn load_key(var: &str, path: &Path, kind: KeyKind) -> Result<Vec<u8>, String> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir()
            .map_err(|e| format!("current directory: {e}"))?
            .join(path)
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let raw = fs::read(&path).map_err(|e| format!("{var}={}: cannot read: {e}", path.display()))?;
    let der = to_der(&raw, kind).map_err(|e| format!("{var}={}: {e}", path.display()))?;
    check_der(&der, kind).map_err(|e| format!("{var}={}: {e}", path.display()))?;
    Ok(der)
}

/// Returns the DER bytes of a PEM or DER key file.
fn to_der(raw: &[u8], kind: KeyKind) -> Result<Vec<u8>, String> {
    let trimmed = raw.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN ") {
        return Ok(raw.to_vec());
    }
    let (label, der) = pem_rfc7468::decode_vec(trimmed).map_err(|e| format!("invalid PEM: {e}"))?;
    let expected = match kind {
        KeyKind::Pkcs8Private => "PRIVATE KEY",
        KeyKind::Spki => "PUBLIC KEY",
    };
    if label == expected {
        return Ok(der);
    }
    Err(match label {
        "RSA PRIVATE KEY" => "PEM is PKCS#1 (`RSA PRIVATE KEY`); convert it with \
                              `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8.pem`"
            .into(),
        "ENCRYPTED PRIVATE KEY" => "the private key is encrypted; the firmware needs an \
                                    unencrypted PKCS#8 key (`openssl pkcs8 -topk8 -nocrypt`)"
            .into(),
        "RSA PUBLIC KEY" => "PEM is a PKCS#1 public key (`RSA PUBLIC KEY`); export an SPKI key \
                             with `openssl pkey -pubin -in KEY -out KEY.spki.pem`"
            .into(),
        other => format!("unexpected PEM label `{other}`, expected `{expected}`"),
    })
}

/// Reads one DER tag/length header at `pos`; returns (tag, content start, content end).
fn der_header(der: &[u8], pos: usize) -> Result<(u8, usize, usize), String> {
    let truncated = || "truncated DER".to_string();
    let tag = *der.get(pos).ok_or_else(truncated)?;
    let first = *der.get(pos + 1).ok_or_else(truncated)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), pos + 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("unsupported DER length encoding".into());
        }
        let bytes = der.get(pos + 2..pos + 2 + n).ok_or_else(truncated)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, pos + 2 + n)
    };
    let end = start.checked_add(len).ok_or_else(truncated)?;
    if end > der.len() {
        return Err(truncated());
    }
    Ok((tag, start, end))
}

/// Checks the outer structure, so a PKCS#1 key is caught at build time
/// instead of failing to parse on the device.
fn check_der(der: &[u8], kind: KeyKind) -> Result<(), String> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    let (tag, start, end) = der_header(der, 0)?;
    if tag != SEQUENCE || end != der.len() {
        return Err("not a DER SEQUENCE (neither PEM nor DER key?)".into());
    }
    match kind {
        KeyKind::Pkcs8Private => {
            // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING }
            // RSAPrivateKey (PKCS#1) ::= SEQUENCE { version INTEGER, modulus INTEGER, ... }
            let (vtag, _, vend) = der_header(der, start)?;
            let (next, _, _) = der_header(der, vend)?;
            match (vtag, next) {
                (INTEGER, SEQUENCE) => Ok(()),
                (INTEGER, INTEGER) => Err("DER is a PKCS#1 RSAPrivateKey, not PKCS#8 (OpenSSL 3 \
                                           `genpkey -outform DER` writes PKCS#1); convert it with \
                                           `openssl pkcs8 -topk8 -nocrypt -inform DER -outform DER`"
                    .into()),
                _ => Err("not a PKCS#8 PrivateKeyInfo".into()),
            }
        }
        KeyKind::Spki => {
            // SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE, subjectPublicKey BIT STRING }
            // RSAPublicKey (PKCS#1) ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let (first, _, _) = der_header(der, start)?;
            match first {
                SEQUENCE => Ok(()),
                INTEGER => Err(
                    "DER is a PKCS#1 RSAPublicKey, not SubjectPublicKeyInfo; export \
                                it with `openssl pkey -pubin -outform DER`"
                        .into(),
                ),
                _ => Err("not a SubjectPublicKeyInfo".into()),
            }
        }
    }
}

/// Writes the device private key to `OUT_DIR`, readable by the owner only.
fn write_secret(path: &Path, der: &[u8]) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("writing device key to OUT_DIR: {e}"))?;
    file.write_all(der)
        .map_err(|e| format!("writing device key to OUT_DIR: {e}"))
}

fn seed_path() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=HYTUN_SEED_PATH");
    let path = match env::var("HYTUN_SEED_PATH") {
        Ok(p) if !p.is_empty() => p,
        Ok(_) | Err(env::VarError::NotPresent) => DEFAULT_SEED_PATH.to_string(),
        Err(env::VarError::NotUnicode(_)) => {
            return Err("HYTUN_SEED_PATH is not valid UTF-8".into());
        }
    };
    if path.contains('\0') || path.contains('\n') {
        return Err("HYTUN_SEED_PATH must not contain NUL or newline characters".into());
    }
    println!("cargo:rustc-env=HYTUN_FW_SEED_PATH={path}");
    Ok(())
}

/// Reads an optional UTF-8 build variable, registering it for rebuilds.
fn optional_var(name: &str) -> Result<Option<String>, String> {
    println!("cargo:rerun-if-env-changed={name}");
    match env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some(v)),
        Ok(_) | Err(env::VarError::NotPresent) => Ok(None),
        Err(env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// Parses a dotted-quad IPv4 literal (no leading `+`, each part 0..=255).
fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for slot in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Writes `OUT_DIR/origin.rs`: where the client connects and what it expects.
fn origin(out_dir: &Path) -> Result<(), String> {
    let host = optional_var("HYTUN_ORIGIN_HOST")?.unwrap_or_else(|| DEFAULT_ORIGIN_HOST.into());
    let host_expr = match parse_ipv4(&host) {
        Some([a, b, c, d]) => format!("Host::Ipv4([{a}, {b}, {c}, {d}])"),
        None => {
            // The same rule the core's wire format applies to domains.
            let valid = !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !valid {
                return Err(format!(
                    "HYTUN_ORIGIN_HOST={host:?}: expected an IPv4 literal or a domain name \
                     (1..=255 letters, digits, `-`, `.`, `_`)"
                ));
            }
            format!("Host::Domain({host:?})")
        }
    };
    let port = match optional_var("HYTUN_ORIGIN_PORT")? {
        None => DEFAULT_ORIGIN_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => {
                return Err(format!(
                    "HYTUN_ORIGIN_PORT={p:?}: expected a TCP port 1..=65535"
                ));
            }
        },
    };
    let path = optional_var("HYTUN_ORIGIN_PATH")?.unwrap_or_else(|| DEFAULT_ORIGIN_PATH.into());
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "HYTUN_ORIGIN_PATH={path:?}: expected an absolute path of printable ASCII without spaces"
        ));
    }
    let expect = optional_var("HYTUN_EXPECT_BODY")?.unwrap_or_else(|| DEFAULT_EXPECT_BODY.into());
    if expect.len() > MAX_EXPECT_BODY || !expect.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(format!(
            "HYTUN_EXPECT_BODY={expect:?}: expected 1..={MAX_EXPECT_BODY} bytes of printable ASCII"
        ));
    }
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hytun-firmware\r\n\r\n");
    let text = format!(
        "// Generated by build.rs from HYTUN_ORIGIN_HOST/PORT/PATH and HYTUN_EXPECT_BODY.\n\
         /// Origin host the server connects the stream to.\n\
         pub const HOST: Host<'static> = {host_expr};\n\
         /// Origin TCP port.\n\
         pub const PORT: u16 = {port};\n\
         /// Request path.\n\
         pub const PATH: &str = {path:?};\n\
         /// Marker the response body must contain.\n\
         pub const EXPECT_BODY: &str = {expect:?};\n\
         /// The complete HTTP request sent on the stream.\n\
         pub const REQUEST: &str = {request:?};\n"
    );
    let file = out_dir.join("origin.rs");
    fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))
}

/// Writes `OUT_DIR/serve.rs`: whether (and where) the device serves its
/// status page through a remote listener, and how many requests it answers.
fn serve(out_dir: &Path, board_name: &str) -> Result<(), String> {
    let port = match optional_var("HYTUN_REVERSE_PORT")? {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Some(n),
            _ => {
                return Err(format!(
                    "HYTUN_REVERSE_PORT={p:?}: expected a TCP port 1..=65535"
                ));
            }
        },
    };
    let host = optional_var("HYTUN_REVERSE_HOST")?.unwrap_or_else(|| DEFAULT_REVERSE_HOST.into());
    let Some([a, b, c, d]) = parse_ipv4(&host) else {
        return Err(format!(
            "HYTUN_REVERSE_HOST={host:?}: expected an IPv4 literal (the server-side bind address)"
        ));
    };
    let requests = match optional_var("HYTUN_REVERSE_REQUESTS")? {
        None => DEFAULT_REVERSE_REQUESTS,
        Some(n) => match n.parse::<u32>() {
            Ok(n) if (1..=MAX_REVERSE_REQUESTS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "HYTUN_REVERSE_REQUESTS={n:?}: expected 1..={MAX_REVERSE_REQUESTS}"
                ));
            }
        },
    };
    let listen = match port {
        Some(port) => {
            format!(
                "Some(Destination {{ host: hytun_core::Host::Ipv4([{a}, {b}, {c}, {d}]), port: {port} }})"
            )
        }
        None => "None".into(),
    };
    let text = format!(
        "// Generated by build.rs from HYTUN_REVERSE_HOST/PORT/REQUESTS.\n\
         /// The server-side address the device asks to listen on; `None`: the\n\
         /// firmware fetches the origin instead of serving.\n\
         pub const LISTEN: Option<Destination<'static>> = {listen};\n\
         /// Status-page requests answered before the session is closed.\n\
         pub const REQUESTS: u32 = {requests};\n\
         /// The board name the status page shows.\n\
         pub const BOARD: &str = {board_name:?};\n"
    );
    let file = out_dir.join("serve.rs");
    fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))
}
