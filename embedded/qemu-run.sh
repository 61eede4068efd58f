#!/usr/bin/env bash
# qemu-run.sh — boot a hytun firmware ELF under qemu-system-arm (Cortex-M
# boards) or qemu-system-riscv32 (`virt`) and decode its defmt log.
#
# Usage:  qemu-run.sh [BOARD] ELF
#   BOARD  QEMU machine (mps2-an385, lm3s6965evb or virt). Optional: without
#          it the machine is read from the ELF's `_hytun_qemu_machine_*`
#          symbol (written by build.rs), which is how `cargo run` calls this
#          script.
#
# Environment:
#   HYTUN_UART_PORT     TCP port on 127.0.0.1 that UART0 connects to (QEMU is
#                       the client; the listener must already be accepting).
#                       Unset: UART0 goes to `-serial null`.
#   HYTUN_ICOUNT=1      add `-icount shift=0` (deterministic instruction counts).
#   HYTUN_QEMU_TIMEOUT  seconds before QEMU is stopped (default 120; status 124).
#   HYTUN_FRESH_SEED    1 (default): write 32 fresh bytes from /dev/urandom to
#                       `hytun-seed.bin` in a new private temporary directory and
#                       run QEMU there, so a firmware built with the default
#                       HYTUN_SEED_PATH finds it. 0: run QEMU in the current
#                       directory and leave the seed file to the caller (needed
#                       when the firmware was built with another HYTUN_SEED_PATH).
#   DEFMT_PRINT         defmt-print binary (default: `defmt-print` on PATH).
#   NM                  nm for the ELF (default: arm-none-eabi-nm for an ARM
#                       ELF, riscv64-unknown-elf-nm for a RISC-V one).
#
# Exit status: QEMU's, i.e. the firmware's semihosting exit code (see
# src/error.rs), 124 on timeout, 1 for QEMU's own errors, 2 for usage errors.
set -euo pipefail

usage() {
    echo "usage: $0 [BOARD] ELF   (BOARD: mps2-an385 | lm3s6965evb | virt)" >&2
    exit 2
}

case $# in
    1) board=""; elf=$1 ;;
    2) board=$1; elf=$2 ;;
    *) usage ;;
esac
[[ -f $elf ]] || { echo "qemu-run.sh: no such ELF: $elf" >&2; exit 2; }
elf=$(realpath -- "$elf")

if [[ -z $board ]]; then
    # e_machine (ELF header offset 18): 0x28 ARM, 0xf3 RISC-V.
    case $(od -An -tx1 -j18 -N1 -- "$elf" | tr -d ' ') in
        f3) nm=${NM:-riscv64-unknown-elf-nm} ;;
        *) nm=${NM:-arm-none-eabi-nm} ;;
    esac
    marker=$("$nm" -- "$elf" | sed -n 's/^.* _hytun_qemu_machine_\([a-z0-9_]*\)$/\1/p')
    case $marker in
        mps2_an385) board=mps2-an385 ;;
        lm3s6965evb) board=lm3s6965evb ;;
        virt) board=virt ;;
        *) echo "qemu-run.sh: cannot tell the board of $elf (no _hytun_qemu_machine_* symbol); pass it as the first argument" >&2
           exit 2 ;;
    esac
fi
case $board in
    mps2-an385 | lm3s6965evb) qemu=(qemu-system-arm -M "$board" -cpu cortex-m3) ;;
    # -bios none: no OpenSBI; the ELF (linked at 0x8000_0000) starts in M-mode.
    virt) qemu=(qemu-system-riscv32 -M virt -bios none) ;;
    *) echo "qemu-run.sh: unsupported board '$board'" >&2; usage ;;
esac

defmt_print=${DEFMT_PRINT:-defmt-print}
command -v "$defmt_print" >/dev/null || {
    echo "qemu-run.sh: '$defmt_print' not found (cargo install defmt-print --locked)" >&2
    exit 2
}

serial=(-serial null)
if [[ -n ${HYTUN_UART_PORT:-} ]]; then
    [[ $HYTUN_UART_PORT =~ ^[0-9]{1,5}$ ]] || { echo "qemu-run.sh: bad HYTUN_UART_PORT" >&2; exit 2; }
    serial=(-serial "tcp:127.0.0.1:${HYTUN_UART_PORT}")
fi

icount=()
if [[ ${HYTUN_ICOUNT:-0} == 1 ]]; then
    icount=(-icount shift=0)
fi

timeout_s=${HYTUN_QEMU_TIMEOUT:-120}
[[ $timeout_s =~ ^[0-9]+$ ]] || { echo "qemu-run.sh: bad HYTUN_QEMU_TIMEOUT" >&2; exit 2; }

workdir=$PWD
if [[ ${HYTUN_FRESH_SEED:-1} == 1 ]]; then
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/hytun-qemu.XXXXXX")
    trap 'rm -rf -- "$workdir"' EXIT
    head -c 32 /dev/urandom >"$workdir/hytun-seed.bin"
fi

qemu+=(-display none -monitor none
      -semihosting-config enable=on,target=native
      "${serial[@]}" "${icount[@]}"
      -kernel "$elf")

# QEMU writes the semihosting (defmt) stream to its stdout. The status must be
# QEMU's, not defmt-print's, so take it from PIPESTATUS instead of pipefail.
set +e
(cd "$workdir" && exec timeout --kill-after=5 "$timeout_s" "${qemu[@]}") | "$defmt_print" -e "$elf"
status=("${PIPESTATUS[@]}")
set -e
qemu_status=${status[0]}
if [[ $qemu_status == 124 ]]; then
    echo "qemu-run.sh: QEMU timed out after ${timeout_s}s" >&2
fi
if [[ ${status[1]} != 0 ]]; then
    echo "qemu-run.sh: defmt-print exited with ${status[1]}" >&2
fi
exit "$qemu_status"
