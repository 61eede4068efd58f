#!/usr/bin/env bash
# sizes.sh — flash and static RAM use of a hytun firmware ELF.
#
# Usage:  sizes.sh [--machine] [ELF]
#   ELF defaults to target/thumbv7m-none-eabi/release/hytun-firmware (relative
#   to this script's directory). The board is read from the ELF's
#   `_hytun_qemu_machine_*` symbol (see build.rs).
#   --machine  print only `board=<machine> flash=<bytes> ram=<bytes>`.
#
# flash      = every allocated read-only section (.vector_table, .text,
#              .rodata) plus the load image of .data  (Berkeley text + data)
# static RAM = .data + .bss + .uninit                 (Berkeley data + bss)
# The heap is a static in .bss, so it is part of static RAM; the stack is not
# (it takes whatever RAM is left, see the `mem: stack_peak=` log line).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
machine_only=0
if [[ ${1:-} == --machine ]]; then machine_only=1; shift; fi
elf=${1:-$here/target/thumbv7m-none-eabi/release/hytun-firmware}
[[ -f $elf ]] || { echo "sizes.sh: no such ELF: $elf (build with cargo build --release)" >&2; exit 2; }

size=${SIZE:-arm-none-eabi-size}
nm=${NM:-arm-none-eabi-nm}

marker=$("$nm" -- "$elf" | sed -n 's/^.* _hytun_qemu_machine_\([a-z0-9_]*\)$/\1/p')
case $marker in
    mps2_an385) board=mps2-an385; flash_total=$((4 * 1024 * 1024)); ram_total=$((4 * 1024 * 1024)) ;;
    lm3s6965evb) board=lm3s6965evb; flash_total=$((256 * 1024)); ram_total=$((64 * 1024)) ;;
    *) echo "sizes.sh: $elf has no _hytun_qemu_machine_* symbol" >&2; exit 2 ;;
esac

read -r text data bss < <("$size" -B -- "$elf" | awk 'NR == 2 { print $1, $2, $3 }')
flash=$((text + data))
ram=$((data + bss))

if [[ $machine_only == 1 ]]; then
    echo "board=$board flash=$flash ram=$ram"
    exit 0
fi

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }
echo "ELF:   $elf"
echo "board: $board"
"$size" -A -- "$elf" | awk '
    $1 == ".vector_table" || $1 == ".text" || $1 == ".rodata" { printf "  %-14s %8d  flash\n", $1, $2 }
    $1 == ".data"                                           { printf "  %-14s %8d  flash+ram\n", $1, $2 }
    $1 == ".bss" || $1 == ".uninit"                         { printf "  %-14s %8d  ram\n", $1, $2 }'
echo "flash:      $flash B of $flash_total ($(pct "$flash" "$flash_total"))"
echo "static RAM: $ram B of $ram_total ($(pct "$ram" "$ram_total")), heap included, stack not"
echo "board=$board flash=$flash ram=$ram"
