#!/usr/bin/env bash
# image.sh — turn the ESP32-C6 firmware ELF into the image a user flashes,
# with esptool (PyPI), and check that image.
#
# Usage:  image.sh [ELF] [OUT]
#   ELF  default target/riscv32imac-unknown-none-elf/release/hytun-firmware-esp32c6
#        (relative to this script's directory)
#   OUT  default ELF.bin
#
# Environment:
#   ESPTOOL  esptool command (default: `esptool` on PATH; esptool >= 5).
#
# Runs `esptool --chip esp32c6 elf2image` (DIO, 80 MHz, 4 MB: what the
# ESP32-C6-DevKitC-1's flash accepts, and what espflash writes by default)
# and then `esptool --chip esp32c6 image-info` on the result, and fails
# unless image-info reports a valid checksum and SHA-256 digest, an ESP32-C6
# chip id and the application descriptor of this crate at the start of the
# image (the ESP-IDF second-stage bootloader refuses an app without it).
# The output is an *application* image: it goes to the factory partition at
# 0x10000, after a bootloader and a partition table (docs/EMBEDDED.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
elf=${1:-$here/target/riscv32imac-unknown-none-elf/release/hytun-firmware-esp32c6}
out=${2:-$elf.bin}
esptool=${ESPTOOL:-esptool}
[[ -f $elf ]] || { echo "image.sh: no such ELF: $elf (cargo build --release first)" >&2; exit 2; }
command -v "$esptool" >/dev/null || {
    echo "image.sh: '$esptool' not found (python3 -m venv VENV && VENV/bin/pip install esptool)" >&2
    exit 2
}

"$esptool" --chip esp32c6 elf2image --flash-mode dio --flash-freq 80m --flash-size 4MB \
    -o "$out" "$elf"
info=$("$esptool" --chip esp32c6 image-info "$out")
echo "$info"

fail=0
need() { # description, extended regex that must match a line of image-info
    if ! grep -Eq -- "$2" <<<"$info"; then
        echo "image.sh: FAIL: image-info does not show $1 (/$2/)" >&2
        fail=1
    fi
}
need "a valid checksum" '^Checksum: .*\(valid\)'
need "a valid SHA-256 digest" '^Validation hash: .*\(valid\)'
need "the ESP32-C6 chip id" 'Chip ID: 13 \(ESP32-C6\)'
need "the app descriptor of hytun-firmware-esp32c6" '^Project name: hytun-firmware-esp32c6'
((fail == 0)) || exit 1
echo "image.sh: $out is a valid ESP32-C6 application image ($(wc -c <"$out") B)"
