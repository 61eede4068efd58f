#!/usr/bin/env bash
# check-size.sh — fail when the firmware outgrows its size baseline.
#
# Usage:  check-size.sh [--update] [ELF] [EXPECTED]
#   ELF       default target/thumbv7m-none-eabi/release/hytun-firmware
#   EXPECTED  default expected-size.txt next to this script
#   --update  write the ELF's current numbers as the baseline of its board
#             (replacing that board's line) instead of checking.
#
# expected-size.txt: one line per board, `BOARD FLASH_BYTES RAM_BYTES`, with
# `#` comments. The check fails (exit 1) when flash or static RAM (as printed
# by sizes.sh) exceeds its baseline by more than 10%, or when the board has
# no baseline line; it passes with a note when the image shrank by more than
# 10% (time to lower the baseline with --update).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
update=0
if [[ ${1:-} == --update ]]; then update=1; shift; fi
elf=${1:-$here/target/thumbv7m-none-eabi/release/hytun-firmware}
expected=${2:-$here/expected-size.txt}

line=$("$here/sizes.sh" --machine "$elf")
board=$(sed -n 's/^board=\([^ ]*\) .*/\1/p' <<<"$line")
flash=$(sed -n 's/.* flash=\([0-9]*\) .*/\1/p' <<<"$line")
ram=$(sed -n 's/.* ram=\([0-9]*\)$/\1/p' <<<"$line")

if [[ $update == 1 ]]; then
    touch "$expected"
    tmp=$(mktemp)
    awk -v b="$board" '$1 != b' "$expected" >"$tmp"
    printf '%-12s %8d %8d\n' "$board" "$flash" "$ram" >>"$tmp"
    mv "$tmp" "$expected"
    echo "check-size.sh: baseline of $board set to flash=$flash ram=$ram in $expected"
    exit 0
fi

[[ -f $expected ]] || { echo "check-size.sh: no baseline file $expected (use --update)" >&2; exit 1; }
read -r exp_flash exp_ram < <(awk -v b="$board" '!/^[[:space:]]*#/ && $1 == b { print $2, $3; exit }' "$expected") || true
if [[ -z ${exp_flash:-} || -z ${exp_ram:-} ]]; then
    echo "check-size.sh: no baseline for $board in $expected (run: $0 --update $elf)" >&2
    exit 1
fi

status=0
check() { # name actual expected
    local name=$1 actual=$2 base=$3
    local limit=$((base + base / 10))
    local delta
    delta=$(awk -v a="$actual" -v b="$base" 'BEGIN { if (b == 0) print "n/a"; else printf "%+.1f%%", 100 * (a - b) / b }')
    if ((actual > limit)); then
        echo "FAIL $board $name: $actual B, baseline $base B ($delta, limit +10% = $limit B)"
        status=1
    elif ((actual * 10 < base * 9)); then
        echo "ok   $board $name: $actual B, baseline $base B ($delta; shrank >10%, consider --update)"
    else
        echo "ok   $board $name: $actual B, baseline $base B ($delta)"
    fi
}
check flash "$flash" "$exp_flash"
check ram "$ram" "$exp_ram"
exit $status
