#!/usr/bin/env bash
# Where download time goes on Azurite: the emulator's CPU seconds (it serves requests on one
# node thread) during one azure2kvm download at three concurrencies, and during one
# streaming curl GET of the same 1 GiB disk. Run bench/download.sh once first (it makes the
# Python venv used for seeding). Usage: bash bench/azurite_cpu.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); VENV=${VENV:-/tmp/a2k-bench-venv}; WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ROOT/tests/azurite/node_modules/.bin/azurite-blob" --inMemoryPersistence --blobHost 127.0.0.1 \
  --blobPort "$PORT" --skipApiVersionCheck --loose --disableTelemetry --silent \
  --blobKeepAliveTimeout 120 --extentMemoryLimit 4096 &
AZ=$!
trap 'kill $AZ; wait $AZ 2>/dev/null; rm -rf $WORK' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/devstoreaccount1?comp=list" && break; sleep 0.1; done
J=$("$VENV/bin/python" "$ROOT/bench/azurite_helper.py" seed --port "$PORT" --virtual-gib 1 --name d.vhd)
URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$J")
cpu() { awk '{print ($14+$15)/100}' /proc/$AZ/stat; }
for args in "" "--concurrency 4" "--concurrency 32"; do
  rm -f $WORK/o.raw; sync
  c0=$(cpu); t0=$(date +%s.%N)
  $ROOT/target/release/azure2kvm --no-progress download "$URL" $WORK/o.raw $args 2>$WORK/err.txt
  t1=$(date +%s.%N); c1=$(cpu)
  echo "tool [$args]: wall $(echo "$t1-$t0"|bc) s, azurite cpu $(echo "$c1-$c0"|bc) s; $(grep -o 'requests=[0-9]*' $WORK/err.txt)"
done
rm -f $WORK/in.vhd; c0=$(cpu); t0=$(date +%s.%N)
curl -sSf -o $WORK/in.vhd "$URL"
t1=$(date +%s.%N); c1=$(cpu)
echo "curl: wall $(echo "$t1-$t0"|bc) s, azurite cpu $(echo "$c1-$c0"|bc) s"
t0=$(date +%s.%N); qemu-img convert -f vpc -O raw $WORK/in.vhd $WORK/r.raw; sync; t1=$(date +%s.%N)
echo "qemu-img convert + sync: $(echo "$t1-$t0"|bc) s"
