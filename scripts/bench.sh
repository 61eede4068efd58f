#!/usr/bin/env bash
# bench.sh - hytun vs ssh -L vs raw loopback, on 127.0.0.1 only.
#
# Installs what is missing (Debian packages), builds hytun and hytun-bench
# in release mode, then runs `hytun-bench run`, which starts the targets
# (iperf3 -s, a 1 KiB HTTP server, an echo server), a private sshd with
# generated ed25519 keys + `ssh -N -L` and `ssh -tt -L` clients
# (aes128-gcm@openssh.com), and `hytun server` + `hytun client -L` with
# fresh RSA-2048 keys, and measures all of them interleaved per round:
#   iperf3 -P1 / -P8 (Gbit/s, tunnel CPU-s per GiB), wrk -c1 p50/p99 and
#   -c64 req/s (keep-alive, 1 KiB), ab -c1 (new connection per request),
#   RSS per idle connection (both tunnel ends), hytun handshakes/s (per core).
# Prints the summary table; writes rounds.tsv, summary.tsv, table.md and
# hytun-vs-ssh.svg into $W/results and the chart into $SVG.
#
# Usage (as root, from anywhere in the repository):  bash scripts/bench.sh
#
# `bash scripts/bench.sh handshakes` runs only the handshake scenario instead
# (see hs_scenario below): `openssl speed rsa2048 rsa3072` beside hytun
# server handshakes/s per core and CPU per handshake at RSA-2048 and -3072
# (one server event-loop thread) and the crypto floor (`hytun-bench
# handshake-floor`: the server handshake's crypto alone, in-process, one
# thread, no I/O), then the wrk -c1 p99 of an established
# keep-alive stream through the tunnel on an idle server and under a steady
# handshake load of HS_LOAD_FRACTION (0.5) of the measured per-core rate.
#   Knobs: HS_SECS=5 HS_BITS="2048 3072" HS_LOAD_FRACTION=0.5 WRK_DUR=5
#   OSSL_SECS=3 HS_FLOOR_N=1000 HS_PORT=24500; writes $W/handshakes/summary.md.
# Env knobs (defaults): ROUNDS=3 DUR=3 WRK_DUR=3 AB_N=150 IDLE_N=1000 HS_SECS=3
#   TOOLS=raw,ssh-aes,ssh-aes-tty,hytun  W=/tmp/hytun-bench  BASE_PORT=24100
#   SVG=docs/bench/hytun-vs-ssh.svg  SKIP_INSTALL=1 (no apt-get)  SKIP_BUILD=1
# Takes about 6-8 minutes with the defaults on 2 cores (build included).
#
# WAN scenario:  bash scripts/bench.sh wan
#   `hytun-bench wan`: iperf3 -P1 and -P8 through a delay-line relay
#   (`hytun-bench relay`, half the RTT each way, bounded bytes in flight)
#   at several RTTs: raw = iperf3 through the relay, ssh -N -L and hytun
#   with their client<->server connection through it; interleaved rounds.
#   Writes rounds.tsv, summary.tsv, wan-table.md and wan.svg into
#   $WAN_W/results and the chart into $WAN_SVG.
#   Env knobs (defaults): WAN_ROUNDS=2 WAN_DUR=3 WAN_OMIT=1 WAN_RTTS=0,10,40,100
#     WAN_STREAMS=1,8 WAN_TOOLS=raw,ssh-aes,hytun WAN_INFLIGHT_MIB=32
#     WAN_RATE_MBIT=0 (no cap) WAN_W=/tmp/hytun-bench-wan WAN_BASE_PORT=24300
#     WAN_SVG=docs/bench/wan.svg  SKIP_INSTALL=1  SKIP_BUILD=1
#   About 5 minutes with the defaults on 2 cores (build up to date).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
log() { echo "[bench.sh +$(( $(date +%s) - START ))s] $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (sshd, apt-get)" >&2; exit 1; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  need=()
  for pair in iperf3:iperf3 wrk:wrk sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client \
              ab:apache2-utils python3:python3 getconf:libc-bin; do
    bin=${pair%%:*} pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release -p hytun-host -p hytun-bench"
  cargo build --release -p hytun-host -p hytun-bench
fi

# 1000 idle connections need ~2000 descriptors in several processes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
LABEL=$(git describe --always --dirty 2>/dev/null || echo "no git")

# ---- WAN scenario (scripts/bench.sh wan) ----
scenario_wan() {
  local w=${WAN_W:-/tmp/hytun-bench-wan}
  rm -rf "$w/results" "$w/logs"
  log "running hytun-bench wan (work dir $w)"
  "$TARGET_DIR/release/hytun-bench" wan \
    --rounds "${WAN_ROUNDS:-2}" --dur "${WAN_DUR:-3}" --omit "${WAN_OMIT:-1}" \
    --rtts "${WAN_RTTS:-0,10,40,100}" --streams "${WAN_STREAMS:-1,8}" \
    --tools "${WAN_TOOLS:-raw,ssh-aes,hytun}" --in-flight-mib "${WAN_INFLIGHT_MIB:-32}" \
    --rate-mbit "${WAN_RATE_MBIT:-0}" --base-port "${WAN_BASE_PORT:-24300}" \
    --work "$w" --label "$LABEL" --hytun "$TARGET_DIR/release/hytun" --svg "${WAN_SVG:-docs/bench/wan.svg}"
  log "done in $(( $(date +%s) - START )) s"
}
if [ "${1:-}" = wan ]; then
  scenario_wan
  exit 0
fi
# ---- end of the WAN scenario ----

W=${W:-/tmp/hytun-bench}

# --------------------------------------------------- handshake scenario --
# Prints "<milliseconds>" for wrk's 99th percentile in file $1.
wrk_p99_ms() {
  awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        m = (u == "us") ? v / 1000 : (u == "ms") ? v : (u == "s") ? v * 1000 : -1;
        printf "%.3f\n", m }' "$1"
}

# Waits until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench.sh: nothing listens on 127.0.0.1:$1" >&2; return 1
}

hs_scenario() {
  local hytun="$TARGET_DIR/release/hytun" hb="$TARGET_DIR/release/hytun-bench"
  local HW="$W/handshakes" port=${HS_PORT:-24500} secs=${HS_SECS:-5}
  local frac=${HS_LOAD_FRACTION:-0.5} wdur=${WRK_DUR:-5}
  rm -rf "$HW"; mkdir -p "$HW/logs"
  # Global, so the EXIT trap still sees the pids after this function.
  HS_PIDS=()
  trap 'for p in "${HS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

  log "openssl speed rsa2048 rsa3072 (${OSSL_SECS:-3} s each)"
  openssl speed -seconds "${OSSL_SECS:-3}" rsa2048 rsa3072 > "$HW/openssl.txt" 2>/dev/null
  # The origin the latency stream fetches (1 KiB keep-alive responses).
  "$hb" http --listen "127.0.0.1:$((port + 9))" > "$HW/logs/http.log" 2>&1 & HS_PIDS+=($!)

  {
    echo "## Handshakes ($LABEL, $(nproc) CPUs)"
    echo
    echo "| key | openssl sign (ms) | crypto floor (ms) | floor ratio | hytun server CPU/handshake (ms) | ratio | target | handshakes/s per core | wrk -c1 p99 idle (ms) | p99 under load (ms) | load (hs/s) | Δp99 (ms) | target |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  } > "$HW/summary.md"

  for bits in ${HS_BITS:-2048 3072}; do
    local K="$HW/keys-$bits" sp=$((port + bits % 100)) fp=$((port + 50 + bits % 100))
    mkdir -p "$K"
    for name in server id; do
      "$hytun" keygen --bits "$bits" --force --name "$name" --out "$K" > /dev/null
    done
    cp "$K/id.pub" "$K/authorized_keys"
    # The server handshake's crypto alone (one thread, no I/O), measured
    # before anything else runs: the part of the ratio the protocol costs.
    log "RSA-$bits: crypto floor"
    "$hb" handshake-floor --key "$K/id.key" --server-key "$K/server.key" \
      --n "${HS_FLOOR_N:-1000}" | tee "$HW/floor-$bits.txt" >&2
    # All 16 in-flight handshakes come from 127.0.0.1: lift the per-source
    # pending cap (8), or the refused extra connections cost server CPU
    # that gets charged to the successful handshakes.
    "$hytun" server --listen "127.0.0.1:$sp" --key "$K/server.key" \
      --authorized-keys "$K/authorized_keys" --allow '127.0.0.1:*' --threads 1 \
      --handshake-rate 1000000 --max-sessions 4096 --key-ops-rate 1000000 --max-pending 4096 \
      --max-pending-per-source 4096 > "$HW/logs/server-$bits.log" 2>&1 &
    local spid=$!; HS_PIDS+=("$spid")
    wait_port "$sp"

    log "RSA-$bits: full handshake load, ${secs} s"
    "$hb" handshakes --server "127.0.0.1:$sp" --key "$K/id.key" --server-key "$K/server.pub" \
      --threads 2 --in-flight 8 --secs "$secs" --server-pid "$spid" | tee "$HW/hs-$bits.txt" >&2
    local per_core cpu_ms ossl_ms floor_ms
    floor_ms=$(awk '/server handshake crypto/ { print $4 }' "$HW/floor-$bits.txt")
    per_core=$(awk '/handshakes\/s per core/ { print $(NF-3) }' "$HW/hs-$bits.txt")
    cpu_ms=$(awk '/server CPU per handshake/ { print $(NF-1) }' "$HW/hs-$bits.txt")
    ossl_ms=$(awk -v b="$bits" '$1 == "rsa" && $2 == b && $3 == "bits" { v = $4; sub(/s$/, "", v); printf "%.3f", v * 1000 }' "$HW/openssl.txt")

    "$hytun" client --server "127.0.0.1:$sp" --key "$K/id.key" --server-key "$K/server.pub" \
      -L "127.0.0.1:$fp:127.0.0.1:$((port + 9))" > "$HW/logs/client-$bits.log" 2>&1 & HS_PIDS+=($!)
    wait_port "$fp"
    sleep 0.5
    log "RSA-$bits: wrk -c1 through the tunnel, idle server"
    wrk -t1 -c1 -d"${wdur}s" --latency "http://127.0.0.1:$fp/" > "$HW/wrk-idle-$bits.txt"
    local rate
    rate=$(awk -v p="$per_core" -v f="$frac" 'BEGIN { printf "%.0f", p * f }')
    log "RSA-$bits: wrk -c1 while $rate handshakes/s run against the same server"
    "$hb" handshakes --server "127.0.0.1:$sp" --key "$K/id.key" --server-key "$K/server.pub" \
      --threads 2 --in-flight 8 --secs "$((wdur + 1))" --server-pid "$spid" --rate "$rate" \
      > "$HW/hs-load-$bits.txt" 2>&1 &
    local lpid=$!
    sleep 1
    wrk -t1 -c1 -d"${wdur}s" --latency "http://127.0.0.1:$fp/" > "$HW/wrk-load-$bits.txt"
    wait "$lpid"
    local idle loaded achieved
    idle=$(wrk_p99_ms "$HW/wrk-idle-$bits.txt")
    loaded=$(wrk_p99_ms "$HW/wrk-load-$bits.txt")
    achieved=$(awk '/^handshakes / { v = $(NF-2); sub(/\/s,?$/, "", v); print v }' "$HW/hs-load-$bits.txt")
    awk -v b="$bits" -v o="$ossl_ms" -v f="$floor_ms" -v c="$cpu_ms" -v pc="$per_core" -v i="$idle" -v l="$loaded" -v r="$achieved" 'BEGIN {
      ratio = c / o; d = l - i;
      printf "| RSA-%s | %.3f | %.3f | %.2f | %.3f | %.2f | ≤ 1.3 %s | %.0f | %.3f | %.3f | %s | %+.3f | ≤ 1 %s |\n",
        b, o, f, f / o, c, ratio, (ratio <= 1.3 ? "**yes**" : "**no**"), pc, i, l, r, d, (d <= 1 ? "**yes**" : "**no**") }' >> "$HW/summary.md"
    kill "$spid" 2>/dev/null || true
  done
  echo >&2; cat "$HW/summary.md"
}

if [ "${1:-}" = handshakes ]; then
  command -v openssl > /dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl > /dev/null; }
  hs_scenario
  log "done in $(( $(date +%s) - START )) s"
  exit 0
fi
rm -rf "$W/results" "$W/logs"
log "running hytun-bench (work dir $W)"
"$TARGET_DIR/release/hytun-bench" run \
  --rounds "${ROUNDS:-3}" --dur "${DUR:-3}" --wrk-dur "${WRK_DUR:-3}" \
  --ab-n "${AB_N:-150}" --idle-n "${IDLE_N:-1000}" --hs-secs "${HS_SECS:-3}" \
  --tools "${TOOLS:-raw,ssh-aes,ssh-aes-tty,hytun}" --base-port "${BASE_PORT:-24100}" \
  --work "$W" --label "$LABEL" --hytun "$TARGET_DIR/release/hytun" --svg "${SVG:-docs/bench/hytun-vs-ssh.svg}"
log "done in $(( $(date +%s) - START )) s"
