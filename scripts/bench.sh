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
rm -rf "$W/results" "$W/logs"
log "running hytun-bench (work dir $W)"
"$TARGET_DIR/release/hytun-bench" run \
  --rounds "${ROUNDS:-3}" --dur "${DUR:-3}" --wrk-dur "${WRK_DUR:-3}" \
  --ab-n "${AB_N:-150}" --idle-n "${IDLE_N:-1000}" --hs-secs "${HS_SECS:-3}" \
  --tools "${TOOLS:-raw,ssh-aes,ssh-aes-tty,hytun}" --base-port "${BASE_PORT:-24100}" \
  --work "$W" --label "$LABEL" --hytun "$TARGET_DIR/release/hytun" --svg "${SVG:-docs/bench/hytun-vs-ssh.svg}"
log "done in $(( $(date +%s) - START )) s"
