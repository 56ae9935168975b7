#!/usr/bin/env bash
# The no-account demo: the whole job end to end on this machine, with no Azure account.
#
# Starts a local "Azure" — Azurite (Microsoft's storage emulator, installed from npm on
# first use) behind our fake Azure Resource Manager (tests/support), seeded with VMs whose
# disks are small VHDs in page blobs — then runs `azure2kvm list` and `azure2kvm export`
# against it exactly as against Azure (managed identity, HTTPS, snapshots, SAS grants),
# and shows the result: images, domain.xml, manifest, run report, qemu-img info.
#
# Usage: bash scripts/demo.sh [OUTPUT_DIR]     (default: a new temporary directory)
# Needs: cargo, node/npm, qemu-img.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d -t azure2kvm-demo.XXXXXX)}
mkdir -p "$out"

echo "== building azure2kvm and the local Azure (release)"
cargo build --release --quiet --bin azure2kvm --example fake_azure
bin=$PWD/target/release/azure2kvm

world_info=$(mktemp)
world_log=$(mktemp)
target/release/examples/fake_azure >"$world_info" 2>"$world_log" &
world=$!
stop_world() {
  # SIGTERM lets the world stop Azurite (its child) cleanly.
  kill -TERM "$world" 2>/dev/null || true
  wait "$world" 2>/dev/null || true
  rm -f "$world_info" "$world_log"
}
trap stop_world EXIT

echo "== starting Azurite and the fake ARM (first run installs Azurite from npm)"
for _ in $(seq 1 240); do
  [ -s "$world_info" ] && break
  if ! kill -0 "$world" 2>/dev/null; then cat "$world_log" >&2; exit 1; fi
  sleep 0.5
done
[ -s "$world_info" ] || { echo "the local Azure did not start" >&2; cat "$world_log" >&2; exit 1; }

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$world_info" "$1"; }
# Exactly how a hosted runner with a managed identity looks to the tool:
export IDENTITY_ENDPOINT; IDENTITY_ENDPOINT=$(field IDENTITY_ENDPOINT)
export IDENTITY_HEADER; IDENTITY_HEADER=$(field IDENTITY_HEADER)
azure=(--cloud custom --arm-endpoint "$(field arm_endpoint)" --ca-bundle "$(field ca_bundle)"
       --subscription "$(field subscription)")

echo; echo "== azure2kvm list"
"$bin" list "${azure[@]}"

echo; echo "== azure2kvm export --output-dir $out"
"$bin" --no-progress export "${azure[@]}" --output-dir "$out" --format qcow2

echo; echo "== what it wrote"
find "$out" -type f | sort
for vm in "$out"/*/; do
  name=$(basename "$vm")
  echo; echo "-- $name/domain.xml"
  cat "$vm/domain.xml"
  for img in "$vm"/*.qcow2; do
    echo; echo "-- qemu-img info $(basename "$img")"
    qemu-img info "$img" | sed -n '1,6p'
    qemu-img check -q "$img" && echo "qemu-img check: no errors"
  done
  break  # one VM in full; the others are alike
done
echo; echo "-- run report: what the run created in Azure, and whether it was removed"
python3 - "$out" <<'PY'
import glob, json, sys
report = json.load(open(sorted(glob.glob(sys.argv[1] + "/run-*.json"))[-1]))
print(f"run {report['run_id']}: {report['status']}")
for d in report["disks"]:
    print(f"  disk {d['vm']}/{d['disk']}: {d['status']}")
for r in report["resources"]:
    print(f"  {r['kind']:<13} {r['state']:<8} {r['id'].rsplit('/', 1)[-1]}")
PY
echo; echo "Images, domain.xml, manifests and the run report are in $out"
