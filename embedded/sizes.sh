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
# RISC-V (`virt`): riscv-rt's link.x describes the stack as an allocated
# NOLOAD section (.stack), which Berkeley `size` would count as bss, so the
# numbers are summed per section instead: flash = .init* + .text + .rodata
# (+ .srodata, .eh_frame) + .data, static RAM = .data + .bss + .uninit + .heap.
# Tools: arm-none-eabi-size/-nm for ARM, riscv64-unknown-elf-size/-nm for
# RISC-V (override with SIZE / NM).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
machine_only=0
if [[ ${1:-} == --machine ]]; then machine_only=1; shift; fi
elf=${1:-$here/target/thumbv7m-none-eabi/release/hytun-firmware}
[[ -f $elf ]] || { echo "sizes.sh: no such ELF: $elf (build with cargo build --release)" >&2; exit 2; }

# e_machine (ELF header offset 18): 0x28 ARM, 0xf3 RISC-V.
case $(od -An -tx1 -j18 -N1 -- "$elf" | tr -d ' ') in
    f3) size=${SIZE:-riscv64-unknown-elf-size}; nm=${NM:-riscv64-unknown-elf-nm} ;;
    *) size=${SIZE:-arm-none-eabi-size}; nm=${NM:-arm-none-eabi-nm} ;;
esac

marker=$("$nm" -- "$elf" | sed -n 's/^.* _hytun_qemu_machine_\([a-z0-9_]*\)$/\1/p')
case $marker in
    mps2_an385) board=mps2-an385; flash_total=$((4 * 1024 * 1024)); ram_total=$((4 * 1024 * 1024)) ;;
    lm3s6965evb) board=lm3s6965evb; flash_total=$((256 * 1024)); ram_total=$((64 * 1024)) ;;
    virt) board=virt; flash_total=$((4 * 1024 * 1024)); ram_total=$((512 * 1024)) ;;
    *) echo "sizes.sh: $elf has no _hytun_qemu_machine_* symbol" >&2; exit 2 ;;
esac

if [[ $board == virt ]]; then
    read -r flash ram < <("$size" -A -- "$elf" | awk '
        $1 ~ /^\.(init|text|rodata|srodata|eh_frame)/ && $1 != ".text.dummy" { f += $2 }
        $1 ~ /^\.s?data/                                          { f += $2; r += $2 }
        $1 ~ /^\.(s?bss|uninit|heap)/                             { r += $2 }
        END { print f + 0, r + 0 }')
else
    read -r text data bss < <("$size" -B -- "$elf" | awk 'NR == 2 { print $1, $2, $3 }')
    flash=$((text + data))
    ram=$((data + bss))
fi

if [[ $machine_only == 1 ]]; then
    echo "board=$board flash=$flash ram=$ram"
    exit 0
fi

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }
echo "ELF:   $elf"
echo "board: $board"
"$size" -A -- "$elf" | awk '
    $1 == ".text.dummy"                                      { next }
    $1 == ".vector_table" || $1 ~ /^\.(init|text|rodata|srodata|eh_frame)/ { printf "  %-14s %8d  flash\n", $1, $2 }
    $1 ~ /^\.s?data/                                        { printf "  %-14s %8d  flash+ram\n", $1, $2 }
    $1 ~ /^\.(s?bss|uninit|heap)/                           { printf "  %-14s %8d  ram\n", $1, $2 }'
echo "flash:      $flash B of $flash_total ($(pct "$flash" "$flash_total"))"
echo "static RAM: $ram B of $ram_total ($(pct "$ram" "$ram_total")), heap included, stack not"
echo "board=$board flash=$flash ram=$ram"
