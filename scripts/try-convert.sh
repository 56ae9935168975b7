#!/usr/bin/env bash
# Try azure2kvm with no Azure account: make a sample VHD with qemu-img (the way Azure
# exports look: a fixed VHD with an Azure-style footer), inspect it, convert it to qcow2
# and raw, and let qemu-img confirm the result. Needs cargo and qemu-img.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/azure2kvm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== making a 256 MiB sample disk with scattered data, as a fixed VHD"
truncate -s 256M "$work/sample.raw"
for mib in 0 17 64 130 255; do
  head -c 1048576 /dev/urandom | dd of="$work/sample.raw" bs=1M seek=$mib conv=notrunc status=none
done
qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on "$work/sample.raw" "$work/disk.vhd"

echo; echo "== azure2kvm inspect disk.vhd"
"$bin" inspect "$work/disk.vhd"

echo; echo "== azure2kvm convert disk.vhd disk.qcow2 (and disk.raw)"
"$bin" convert "$work/disk.vhd" "$work/disk.qcow2"
"$bin" convert "$work/disk.vhd" "$work/disk.raw"

echo; echo "== qemu-img info disk.qcow2"
qemu-img info "$work/disk.qcow2"
echo; echo "== qemu-img check + compare against the original disk"
qemu-img check "$work/disk.qcow2"
qemu-img compare -f raw -F qcow2 "$work/sample.raw" "$work/disk.qcow2"
cmp "$work/sample.raw" "$work/disk.raw" && echo "raw output is byte-identical to the original disk"
echo "raw output allocates $(du -h "$work/disk.raw" | cut -f1) for a $(du -h --apparent-size "$work/disk.raw" | cut -f1) disk (sparse)"
