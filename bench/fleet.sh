#!/usr/bin/env bash
# Benchmark: `azure2kvm export` of many disks at once, against the physical limit of a
# link where each blob is capped (as Azure caps each blob at ~60 MiB/s) and the host has
# a shared cap, and against another build (OTHER_BIN) in the same rounds.
#
#   bench/fleet.sh [DISK_COUNTS...]                 default: 1 4 16
#   SIZE_MIB=2048 PERCENT=20 bench/fleet.sh 16      each disk's size and % written
#   SMALL=20                                        % of the written bytes in 64 KiB extents
#                                                   (the rest in 4 MiB ones)
#   BLOB_MIB=60 HOST_MIB=400 RTT_MS=20              through bench/wire_proxy.py
#   WIRE= bench/fleet.sh 16                         no wire proxy: loopback only
#   GRANT="2 1"                                     fake ARM grant: polls, Retry-After s
#   OTHER_BIN=/path/to/previous/azure2kvm           the peer, alternating in every round
#   TOOL_ARGS="--memory 256M"                       extra export flags (default: none)
#   ROUNDS=2
#
# The world is examples/fake_azure.rs (Azurite in memory + the fake ARM) with
# FAKE_AZURE_FLEET: N deallocated VMs with one OS disk each, exported straight from the
# disk (one grant, one download, one revoke per disk). Granted SAS URLs go through
# wire_proxy.py (per-blob cap, host cap, RTT) and then the fake's gate proxy (which
# refuses reads once a grant is revoked) to Azurite.
#
# Physical limit = max(written bytes of the largest disk / BLOB_MIB, all written bytes /
# HOST_MIB) + one grant before the first byte + one revoke after the last. A grant is
# (POLLS + 1) × Retry-After s: the 202 and each InProgress poll ask the client to wait
# that long; the fake answers revokes without a wait (0 s). The
# tool's time is the whole process (discovery, plan, ledger, manifests included), wall
# and max RSS from /usr/bin/time -v. Written bytes: the run report's bytes_downloaded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${*:-1 4 16}
SIZE_MIB=${SIZE_MIB:-2048}
PERCENT=${PERCENT:-20}
SMALL=${SMALL:-20}
BLOB_MIB=${BLOB_MIB:-60}
HOST_MIB=${HOST_MIB:-400}
RTT_MS=${RTT_MS:-20}
WIRE=${WIRE-1}
GRANT=${GRANT:-2 1}
ROUNDS=${ROUNDS:-2}
WORK=${WORK:-/tmp/a2k-fleet-bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$WORK"

(cd "$ROOT" && cargo build --release -q --bin azure2kvm --example fake_azure)
BIN="$TARGET/release/azure2kvm"
FAKE="$TARGET/release/examples/fake_azure"
read -r POLLS RETRY <<<"$GRANT"
GRANT_S=$(((POLLS + 1) * RETRY))

WORLD_PID=""
WIRE_PID=""
stop_world() {
  # Only the processes this script started, by pid (the world stops Azurite itself).
  [ -n "$WIRE_PID" ] && kill "$WIRE_PID" 2>/dev/null && wait "$WIRE_PID" 2>/dev/null || true
  [ -n "$WORLD_PID" ] && kill -TERM "$WORLD_PID" 2>/dev/null && wait "$WORLD_PID" 2>/dev/null || true
  WIRE_PID=""; WORLD_PID=""
}
trap 'stop_world; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_world N: the fake world with N disks, and the wire proxy in front of it.
start_world() {
  local wire_port
  wire_port=$(free_port)
  local sas_env=()
  [ -n "$WIRE" ] && sas_env=(FAKE_AZURE_SAS_PORT="$wire_port")
  env FAKE_AZURE_FLEET="$1:$SIZE_MIB:$PERCENT:$SMALL" FAKE_AZURE_GRANT="$POLLS:$RETRY" "${sas_env[@]}" \
    "$FAKE" >"$WORK/world.json" 2>"$WORK/world.err" &
  WORLD_PID=$!
  for _ in $(seq 3000); do [ -s "$WORK/world.json" ] && break; sleep 0.1; done
  [ -s "$WORK/world.json" ] || { cat "$WORK/world.err" >&2; exit 1; }
  j() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/world.json" "$1"; }
  ARM=$(j arm_endpoint); CA=$(j ca_bundle); SUB=$(j subscription)
  IDENTITY_ENDPOINT=$(j IDENTITY_ENDPOINT); IDENTITY_HEADER=$(j IDENTITY_HEADER)
  export IDENTITY_ENDPOINT IDENTITY_HEADER
  # Azurite (the world's child): its CPU seconds per export are a floor on this machine
  # (one node thread; it MD5-hashes every range ≤ 4 MiB, see "Where the time goes").
  AZ=$(pgrep -P "$WORLD_PID" | head -1 || true)
  if [ -n "$WIRE" ]; then
    python3 "$ROOT/bench/wire_proxy.py" --listen-port "$wire_port" --upstream-port "$(j proxy_port)" \
      --rate-mib "$HOST_MIB" --blob-rate-mib "$BLOB_MIB" --rtt-ms "$RTT_MS" >"$WORK/wire.txt" &
    WIRE_PID=$!
    for _ in $(seq 100); do grep -q ready "$WORK/wire.txt" 2>/dev/null && break; sleep 0.1; done
  fi
}

cpu_ticks() { [ -n "$AZ" ] && awk '{print $14 + $15 + $16 + $17}' "/proc/$AZ/stat" || echo 0; }

# measure BIN → "seconds max_rss_kib bytes largest azurite_cpu_s"; the export must succeed.
measure() {
  local out="$WORK/out"
  rm -rf "$out"
  sync
  local before
  before=$(cpu_ticks)
  # shellcheck disable=SC2086
  if ! /usr/bin/time -v -o "$WORK/time.txt" "$1" --no-progress export --subscription "$SUB" \
      --cloud custom --arm-endpoint "$ARM" --ca-bundle "$CA" --output-dir "$out" --format raw \
      ${TOOL_ARGS:-} >"$WORK/stdout.txt" 2>"$WORK/stderr.txt"; then
    echo "export failed:" >&2; tail -20 "$WORK/stderr.txt" >&2; exit 1
  fi
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/time.txt" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$WORK/time.txt")
  local cpu
  cpu=$(python3 -c "print(($(cpu_ticks) - $before) / $(getconf CLK_TCK))")
  python3 - "$out" "$wall" "$rss" "$cpu" <<'EOF'
import glob, json, sys
rep = json.load(open(glob.glob(sys.argv[1] + "/run-*.json")[0]))
b = [d["bytes_downloaded"] for d in rep["disks"]]
assert all(d["status"] == "done" for d in rep["disks"]), rep["disks"]
print(sys.argv[2], sys.argv[3], sum(b), max(b), sys.argv[4])
EOF
}

if [ -n "$WIRE" ]; then
  echo "<!-- through wire_proxy.py: $BLOB_MIB MiB/s per blob, $HOST_MIB MiB/s host, $RTT_MS ms round trip; grant $POLLS polls, Retry-After $RETRY s ($GRANT_S s); $SMALL % of written bytes in 64 KiB extents -->"
else
  echo "<!-- loopback (no wire proxy); grant $POLLS polls, Retry-After $RETRY s ($GRANT_S s); $SMALL % of written bytes in 64 KiB extents -->"
fi
printf '| disks | MiB each | written MiB (all) | round | build | seconds | limit s | ratio | Azurite CPU s | max RSS MiB | schedule |\n|---|---|---|---|---|---|---|---|---|---|---|\n'
for N in $COUNTS; do
  start_world "$N"
  for ROUND in $(seq "$ROUNDS"); do
    ORDER="tool"
    if [ -n "${OTHER_BIN:-}" ]; then
      # Alternate which build goes first.
      if [ $((ROUND % 2)) = 1 ]; then ORDER="tool other"; else ORDER="other tool"; fi
    fi
    for M in $ORDER; do
      B=$BIN; [ "$M" = other ] && B=$OTHER_BIN
      read -r SECS RSS BYTES LARGEST AZCPU <<<"$(measure "$B")"
      SCHED=$(grep -o '[0-9]* at a time with [0-9]* connections each, [0-9.]* MiB chunks' "$WORK/stderr.txt" | head -1 || true)
      LIMIT=$(python3 -c "
import sys
largest, total = $LARGEST, $BYTES
mib = 1 << 20
wire = max(largest / mib / $BLOB_MIB, total / mib / $HOST_MIB) if '$WIRE' else 0
print(f'{wire + $GRANT_S:.2f}')")
      RATIO=$(python3 -c "print(f'{$SECS / $LIMIT:.2f}')")
      printf '| %s | %s | %.0f | %s | %s | %.2f | %s | %s | %.1f | %d | %s |\n' "$N" "$SIZE_MIB" \
        "$(python3 -c "print($BYTES / (1 << 20))")" "$ROUND" "$M" "$SECS" "$LIMIT" "$RATIO" \
        "$AZCPU" "$((RSS / 1024))" "${SCHED:--}"
    done
  done
  stop_world
done
