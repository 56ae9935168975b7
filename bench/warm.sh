#!/usr/bin/env bash
# Benchmark: warm migration cutover downtime against a cold export of the same disk, in
# one run, on bench/wire_proxy.py's blob-like link (issue 13).
#
#   bench/warm.sh [GIB] [RATE_MIB] [RTT_MS]      default: 8 60 20
#
# Builds the release binary and examples/warm_bench.rs (the fake world: Azurite + fake ARM,
# whose gate answers incremental-snapshot diffs), seeds one VM's OS disk of GIB GiB with
# 20% written, and runs: cold export, warm pass 1, an idle warm pass (the fixed cost of a
# pass), ~1% changed, cutover. Prints a markdown table for BENCHMARKS.md.
# Needs: node/npm (Azurite from tests/azurite), python3, cargo; ~GIB/5 × 5 GiB of disk.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GIB=${1:-8}
RATE=${2:-60}
RTT=${3:-20}
cd "$ROOT"
cargo build --release -q --bin azure2kvm --example warm_bench
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/azure2kvm" "$TARGET/release/examples/warm_bench" "$GIB" "$RATE" "$RTT"
