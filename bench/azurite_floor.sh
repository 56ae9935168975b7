#!/usr/bin/env bash
# Where download time goes on Azurite (1 GiB benchmark disk): wall time and Azurite's CPU
# seconds (it serves on one node thread) for azure2kvm and for curl + qemu-img, alternated,
# then the same for an ideal client replaying azure2kvm's ranges (bench/azurite_floor.py).
# Run bench/download.sh once first (it makes the Python venv and the release build).
#   ROUNDS=3 bash bench/azurite_floor.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); VENV=${VENV:-/tmp/a2k-bench-venv}; WORK=$(mktemp -d)
ROUNDS=${ROUNDS:-3}
. "$ROOT/bench/azurite.sh"
start_azurite
AZ=$AZ_PID
J=$("$VENV/bin/python" "$ROOT/bench/azurite_helper.py" seed --port "$PORT" --virtual-gib 1 --name d.vhd)
URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$J")
cpu() { awk '{print ($14+$15)/100}' /proc/$AZ/stat; }
# timed LABEL CMD: one table row, `sync` inside the timing as in bench/download.sh.
timed() {
  rm -f "$WORK"/*.raw "$WORK"/*.vhd; sync
  local c0 t0 t1 c1 req; c0=$(cpu); t0=$(date +%s.%N)
  bash -c "$2" 2>"$WORK/err.txt"
  t1=$(date +%s.%N); c1=$(cpu)
  req=$(grep -o 'requests=[0-9]*' "$WORK/err.txt" | cut -d= -f2 || true)
  bytes=$(grep -o 'bytes_fetched=[0-9]*' "$WORK/err.txt" | cut -d= -f2 || stat -c %s "$WORK/in.vhd")
  printf '| %s | %s | %.1f | %.2f | %.2f |\n' "$1" "${req:-1}" "$(echo "$bytes/1048576" | bc -l)" \
    "$(echo "$t1-$t0" | bc)" "$(echo "$c1-$c0" | bc)"
}
echo "| run | requests | MiB | wall (s) | Azurite CPU (s) |"
echo "|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  timed "azure2kvm download (+ sync)" \
    "'$ROOT/target/release/azure2kvm' --no-progress download '$URL' '$WORK/o.raw' && sync"
  timed "curl GET of the whole blob, qemu-img convert (+ sync)" \
    "curl -sSf -o '$WORK/in.vhd' '$URL' && qemu-img convert -f vpc -O raw '$WORK/in.vhd' '$WORK/r.raw' && sync"
done
for _ in 1 2; do "$VENV/bin/python" "$ROOT/bench/azurite_floor.py" --url "$URL" --pid "$AZ"; done
