#!/usr/bin/env bash
# Benchmark: `azure2kvm download` against the usual alternatives, on Azurite (loopback).
#
#   bench/download.sh [SIZES_GIB...]        default: 1 8 ("" for none)
#   DENSE_GIB=1 bench/download.sh ""        only the dense memory worst case
#   WIRE="60 20" bench/download.sh 1        through bench/wire_proxy.py: all methods share
#                                           60 MiB/s and see a 20 ms round trip
#
# For each virtual size: a fixed VHD in a page blob with ~20% written in scattered 4 MiB
# and 64 KiB extents. Alternating in each round:
#   tool   azure2kvm download URL out.raw                         (release build)
#   pysdk  Python SDK download_blob(max_concurrency=16) → .vhd, then qemu-img convert -f vpc -O raw
#   curl   one sequential streaming GET → .vhd, then the same conversion
# Wall time and max RSS from /usr/bin/time -v (of the whole pipeline, `sync` included);
# the tool's bytes fetched from its stats line, the others' from the file they downloaded.
# Needs: node/npm (Azurite from tests/azurite), python3, curl, qemu-img ≥ 10, cargo.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${*-1 8}
ROUNDS=${ROUNDS:-3}
VENV=${VENV:-/tmp/a2k-bench-venv}
WORK=${WORK:-/tmp/a2k-bench}
mkdir -p "$WORK"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import azure.storage.blob' 2>/dev/null || "$VENV/bin/pip" install -q 'azure-storage-blob==12.31.1'
(cd "$ROOT" && cargo build --release -q)
# The binary cargo just built: in CARGO_TARGET_DIR when that is set (as convert.py reads it).
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/azure2kvm"
. "$ROOT/bench/azurite.sh"
start_azurite
# WIRE="RATE_MIB RTT_MS": the timed methods go through a link like a blob's (seeding and
# the identity check below go straight to Azurite).
TIMED_PORT=$PORT
if [ -n "${WIRE:-}" ]; then
  read -r RATE RTT <<<"$WIRE"
  TIMED_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 "$ROOT/bench/wire_proxy.py" --listen-port "$TIMED_PORT" --upstream-port "$PORT" \
    --rate-mib "$RATE" --rtt-ms "$RTT" >"$WORK/wire.txt" &
  BENCH_PIDS="$BENCH_PIDS $!"
  for _ in $(seq 100); do grep -q ready "$WORK/wire.txt" 2>/dev/null && break; sleep 0.1; done
  echo "<!-- through wire_proxy.py: $RATE MiB/s shared, $RTT ms round trip -->"
fi

# run NAME CMD... → "seconds max_rss_kib" (time -v of the whole pipeline)
measure() {
  local out="$WORK/time.txt"
  /usr/bin/time -v -o "$out" bash -c "$1" >"$WORK/stdout.txt" 2>"$WORK/stderr.txt"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$out" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$out")
  echo "$wall $rss"
}

printf '| virtual | written | round | method | seconds | max RSS MiB | bytes fetched |\n|---|---|---|---|---|---|---|\n'
for GIB in $SIZES; do
  SEED_JSON=$("$VENV/bin/python" "$ROOT/bench/azurite_helper.py" seed --port "$PORT" --virtual-gib "$GIB" --name "disk$GIB.vhd")
  URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$SEED_JSON")
  DIRECT_URL=$URL
  URL=${URL/127.0.0.1:$PORT/127.0.0.1:$TIMED_PORT}
  WRITTEN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["written"])' "$SEED_JSON")
  for ROUND in $(seq "$ROUNDS"); do
    # Alternate the order each round so no method always runs on a warm cache.
    case $((ROUND % 3)) in 1) ORDER="tool pysdk curl";; 2) ORDER="pysdk curl tool";; 0) ORDER="curl tool pysdk";; esac
    # TOOL_ARGS="--concurrency 4": a fourth method, the tool with those flags, in the same rounds.
    [ -n "${TOOL_ARGS:-}" ] && ORDER="$ORDER toolx"
    # OTHER_BIN=path/to/azure2kvm: another build (e.g. the previous commit's), same rounds.
    [ -n "${OTHER_BIN:-}" ] && ORDER="$ORDER other"
    for M in $ORDER; do
      rm -f "$WORK"/out.raw "$WORK"/in.vhd "$WORK"/.out.raw.*
      sync
      case $M in
        # Every method ends with `sync` inside the timing: azure2kvm fsyncs its output
        # (and checkpoints for resume); the others would otherwise leave GiBs in the page cache.
        tool)  CMD="'$BIN' --no-progress download '$URL' '$WORK/out.raw' && sync";;
        toolx) CMD="'$BIN' --no-progress download $TOOL_ARGS '$URL' '$WORK/out.raw' && sync";;
        other) CMD="'$OTHER_BIN' --no-progress download '$URL' '$WORK/out.raw' && sync";;
        pysdk) CMD="'$VENV/bin/python' '$ROOT/bench/azurite_helper.py' pysdk --url '$URL' --out '$WORK/in.vhd' && qemu-img convert -f vpc -O raw '$WORK/in.vhd' '$WORK/out.raw' && sync";;
        curl)  CMD="curl -sSf -o '$WORK/in.vhd' '$URL' && qemu-img convert -f vpc -O raw '$WORK/in.vhd' '$WORK/out.raw' && sync";;
      esac
      read -r SECS RSS <<<"$(measure "$CMD")"
      FETCHED="-"
      if [ "$M" = tool ] || [ "$M" = toolx ] || [ "$M" = other ]; then
        FETCHED=$(grep -o 'bytes_fetched=[0-9]*' "$WORK/stderr.txt" | cut -d= -f2)
      elif [ -f "$WORK/in.vhd" ]; then
        FETCHED="$(stat -c %s "$WORK/in.vhd") (file)"
      fi
      printf '| %s GiB | %s | %s | %s | %.2f | %d | %s |\n' "$GIB" "$WRITTEN" "$ROUND" "$M" "$SECS" "$((RSS / 1024))" "$FETCHED"
    done
  done
  # Same bytes from all three methods (checked once per size, outside the timing).
  "$BIN" --no-progress -q download "$DIRECT_URL" "$WORK/check.raw" --force
  curl -sSf -o "$WORK/in.vhd" "$DIRECT_URL" && qemu-img convert -f vpc -O raw "$WORK/in.vhd" "$WORK/ref.raw"
  cmp "$WORK/check.raw" "$WORK/ref.raw" && echo "<!-- $GIB GiB: outputs identical -->"
  rm -f "$WORK"/*.raw "$WORK"/*.vhd
done

# Memory worst case: every byte is data (a fixed VHD in a block blob), so every GET is a
# full 8 MiB chunk and all 16 are in flight. Peak RSS must stay under 256 MiB.
if [ -n "${DENSE_GIB:-}" ]; then
  SEED_JSON=$("$VENV/bin/python" "$ROOT/bench/azurite_helper.py" seed-dense --port "$PORT" --virtual-gib "$DENSE_GIB" --name "dense.vhd")
  URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$SEED_JSON")
  for ARGS in "" "--format qcow2"; do
    rm -f "$WORK"/out.*
    OUT="$WORK/out.raw"; [ -n "$ARGS" ] && OUT="$WORK/out.qcow2"
    read -r SECS RSS <<<"$(measure "'$BIN' --no-progress download '$URL' '$OUT' && sync")"
    FETCHED=$(grep -o 'bytes_fetched=[0-9]*' "$WORK/stderr.txt" | cut -d= -f2)
    printf '| %s GiB dense (block blob) | %s | 1 | tool %s | %.2f | %d | %s |\n' "$DENSE_GIB" "$((DENSE_GIB * 1073741824))" "${ARGS:-raw}" "$SECS" "$((RSS / 1024))" "$FETCHED"
  done
fi
