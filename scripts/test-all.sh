#!/usr/bin/env bash
# Installs what the tests need on a Debian machine (apt packages, rustup
# targets/components, defmt-print, cargo-fuzz, esptool) and runs ALL tests:
# formatting, lints, the no_std build of the core for thumbv7m, the unit /
# in-memory / loopback end-to-end and resource tests, the QEMU firmware
# tests on two Cortex-M boards and RISC-V virt with their size checks, the
# ESP32-C6 image (esptool elf2image + image-info), and a short fuzz smoke
# run.
#
# Usage: bash scripts/test-all.sh        (as root, or with sudo available)
# Knobs: FUZZ_SECONDS=10 (per fuzz target; 0 skips the fuzz smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
FUZZ_SECONDS=${FUZZ_SECONDS:-10}

step() { printf '\n==== %s ====\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

step "install: apt packages"
missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null || missing+=(binutils-arm-none-eabi)
command -v qemu-system-riscv32 >/dev/null || missing+=(qemu-system-misc)
command -v riscv64-unknown-elf-size >/dev/null || missing+=(binutils-riscv64-unknown-elf)
# esptool comes from PyPI into a venv (Debian's pip refuses system-wide
# installs); Debian ships ensurepip, which venv needs, in python3-venv.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v openssl >/dev/null || missing+=(openssl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# tests/ops.rs: systemd-analyze verifies the units in dist/; promtool
# validates the /metrics output (Debian ships it only in 'prometheus').
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v promtool >/dev/null || missing+=(prometheus)
apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"; }
# tests/reverse.rs fetches through a remote listener with curl.
command -v curl >/dev/null || missing+=(curl)
# tests/scaleout.rs runs a real load balancer in front of two servers.
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  rest=()
  for p in "${missing[@]}"; do
    # Only promtool is needed: not the recommended node exporter.
    if [ "$p" = prometheus ]; then apt_install --no-install-recommends prometheus; else rest+=("$p"); fi
  done
  if [ ${#rest[@]} -gt 0 ]; then apt_install "${rest[@]}"; fi
else
  echo "all present"
fi

step "install: rust targets and components"
rustup target add thumbv7m-none-eabi riscv32imac-unknown-none-elf >/dev/null
rustup component add rustfmt clippy >/dev/null
if [ "$FUZZ_SECONDS" != 0 ]; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
fi
command -v defmt-print >/dev/null || cargo install defmt-print --locked
ESPTOOL_VENV=$ROOT/target/esptool-venv
if ! "$ESPTOOL_VENV/bin/esptool" version >/dev/null 2>&1; then
  rm -rf "$ESPTOOL_VENV"
  python3 -m venv "$ESPTOOL_VENV"
  "$ESPTOOL_VENV/bin/pip" install -q --disable-pip-version-check esptool==5.6.0
fi
if [ "$FUZZ_SECONDS" != 0 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fi

step "no merge-conflict markers left in the tree"
if grep -rnE '^(<<<<<<<|>>>>>>>)( |$)' --include='*.rs' --include='*.md' --include='*.toml' \
     --include='*.sh' --include='*.service' --exclude-dir=target --exclude-dir=.git . ; then
  echo "conflict markers found (above)"; exit 1
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "core builds no_std for thumbv7m-none-eabi"
cargo build -p hytun-core --target thumbv7m-none-eabi
cargo build -p hytun-core --target thumbv7m-none-eabi --features defmt

step "cargo test (unit, in-memory pair, vectors, loopback e2e, QEMU firmware + size check)"
cargo test --workspace

step "core tests with the default (pure-Rust) AES-GCM provider only"
cargo test -p hytun-core

step "ESP32-C6 firmware builds and converts to a flashable image (no emulator exists)"
esp_keys=$(mktemp -d)
cargo run -q --bin hytun -- keygen --bits 2048 --out "$esp_keys" --name device >/dev/null
cargo run -q --bin hytun -- keygen --bits 2048 --out "$esp_keys" --name server >/dev/null
(cd embedded/esp32c6 && HYTUN_DEVICE_KEY="$esp_keys/device.key" HYTUN_SERVER_PUB="$esp_keys/server.pub" \
  HYTUN_ORIGIN_PORT=8080 cargo build --release)
ESPTOOL="$ESPTOOL_VENV/bin/esptool" bash embedded/esp32c6/image.sh \
  embedded/esp32c6/target/riscv32imac-unknown-none-elf/release/hytun-firmware-esp32c6 \
  "$esp_keys/hytun-esp32c6.bin"
rm -rf "$esp_keys"

if [ "$FUZZ_SECONDS" != 0 ]; then
  step "fuzz smoke (${FUZZ_SECONDS}s per target)"
  FUZZ_SECONDS=$FUZZ_SECONDS bash scripts/fuzz-smoke.sh
  step "fuzz regression tests (reproducers of fixed findings)"
  cargo +nightly test --manifest-path core/fuzz/Cargo.toml
fi

step "benchmarks build (not run: timings never gate CI)"
cargo bench --workspace --no-run

echo
echo "ALL TESTS PASSED"
