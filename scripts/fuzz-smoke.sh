#!/usr/bin/env bash
# Fuzz smoke test: every hytun-core fuzz target for a short time each.
#
#   bash scripts/fuzz-smoke.sh                # 20 s per target
#   FUZZ_SECONDS=300 bash scripts/fuzz-smoke.sh
#   FUZZ_TARGETS="frame established_session" bash scripts/fuzz-smoke.sh
#   FUZZ_SANITIZER=address bash scripts/fuzz-smoke.sh   # default: none
#
# Steps: install cargo-fuzz if missing; build all targets once; write the
# seed corpora (core/fuzz/corpus/<target>/seed-*, generated from an
# in-memory session by core/fuzz/examples/gen_corpus.rs); run each target
# with `cargo +nightly fuzz run TARGET -- -max_total_time=N
# -rss_limit_mb=2048`, replaying core/fuzz/regressions/<target>/ too. Any
# crash, leak, timeout or OOM fails the script and prints the reproducer.
# See core/fuzz/README.md.
set -euo pipefail

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
# hytun-core is `forbid(unsafe_code)`: AddressSanitizer finds little there
# and costs ~4x in executions per second on the session targets (the
# fuzzers still stop on any panic, overflow, OOM or timeout, with debug
# assertions and overflow checks on). FUZZ_SANITIZER=address turns it on.
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
ALL_TARGETS="record_header client_hello server_hello finished_alert frame proxy_header server_session client_session established_session"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
core="$root/core"
fuzz="$core/fuzz"
logs="$fuzz/logs"
start=$(date +%s)

log() { printf '[fuzz-smoke %4ss] %s\n' "$(($(date +%s) - start))" "$*"; }

if ! rustup toolchain list | grep -q '^nightly'; then
    log "the nightly toolchain is required (rustup toolchain install nightly)"
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The crypto dependencies are built without coverage instrumentation (see
# the wrapper): RSA is ~10x faster and the coverage feedback stays about
# hytun-core.
export RUSTC_WRAPPER="$fuzz/rustc-wrapper.sh"

cd "$core"
log "building fuzz targets ($(cargo +nightly fuzz --version), sanitizer: $FUZZ_SANITIZER)"
cargo +nightly fuzz build -s "$FUZZ_SANITIZER"

log "writing seed corpora"
(cd "$fuzz" && cargo +nightly run --quiet --release --example gen_corpus -- "$fuzz/corpus")

mkdir -p "$logs"
failed=()
summary=()
for t in $TARGETS; do
    mkdir -p "$fuzz/corpus/$t"
    dirs=("$fuzz/corpus/$t")
    [[ -d "$fuzz/regressions/$t" ]] && dirs+=("$fuzz/regressions/$t")
    log "running $t for ${FUZZ_SECONDS}s"
    if cargo +nightly fuzz run -s "$FUZZ_SANITIZER" "$t" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
        eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
        cov=$(grep -Eo 'cov: [0-9]+' "$logs/$t.log" | tail -1)
        summary+=("$(printf '%-20s %10s runs %8s exec/s  %s' "$t" "${runs:-?}" "${eps:-?}" "$cov")")
    else
        failed+=("$t")
        summary+=("$(printf '%-20s FAILED (log: %s)' "$t" "$logs/$t.log")")
        log "$t FAILED; the end of its log:"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|Base64' "$logs/$t.log" | head -20 || true
        for a in "$fuzz/artifacts/$t"/*; do
            [[ -f "$a" ]] || continue
            echo "reproducer $a ($(wc -c <"$a") bytes):"
            od -An -tx1 -v "$a" | tr -d ' \n' | fold -w 64
            echo
            echo "replay: cd core && RUSTC_WRAPPER=\$PWD/fuzz/rustc-wrapper.sh cargo +nightly fuzz run -s $FUZZ_SANITIZER $t $a"
        done
    fi
done

log "summary (${FUZZ_SECONDS}s per target):"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all targets passed in $(($(date +%s) - start))s"
