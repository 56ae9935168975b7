#!/usr/bin/env python3
"""Benchmark: `azure2kvm convert` against `qemu-img convert -f vpc`, alternating, same run.

Builds a sparse raw disk of SIZE GiB with ~10% data in scattered 1 MiB chunks, makes a
fixed and a dynamic VHD of it with qemu-img, then for each (VHD type, output format)
runs ours and qemu-img's conversion in turn, ROUNDS times, each followed by `sync`
(timed with it). Reports median wall time, the ratio ours/qemu, peak RSS (from
/usr/bin/time), and checks that the outputs are identical (cmp / qemu-img compare).

Usage: python3 bench/convert.py [--size-gib 2] [--rounds 3] [--workdir DIR]
Needs: a release build (cargo build --release), qemu-img, /usr/bin/time.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "azure2kvm")
MIB = 1 << 20


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_disk(path, size, seed=42):
    """~10% of the disk in 1 MiB chunks of random data at random MiB-aligned places."""
    rng = random.Random(seed)
    mibs = size // MIB
    chosen = sorted(rng.sample(range(mibs), mibs // 10))
    with open(path, "wb") as f:
        f.truncate(size)
        for m in chosen:
            f.seek(m * MIB)
            f.write(rng.randbytes(MIB))
    return len(chosen) * MIB


def timed(cmd):
    """Wall seconds of cmd + sync, and peak RSS in KiB of cmd."""
    rss_file = tempfile.NamedTemporaryFile(delete=False)
    rss_file.close()
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + cmd, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - start
    with open(rss_file.name) as f:
        rss = int(f.read().strip().splitlines()[-1])
    os.unlink(rss_file.name)
    return elapsed, rss


def same(fmt, ours, theirs):
    if fmt == "raw":
        return subprocess.run(["cmp", "-s", ours, theirs]).returncode == 0
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", ours, theirs]).returncode == 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-gib", type=float, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir")
    a = p.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: run cargo build --release first")
    work = a.workdir or tempfile.mkdtemp(prefix="a2k-bench-", dir="/var/tmp")
    size = int(a.size_gib * (1 << 30)) // MIB * MIB
    src = os.path.join(work, "src.raw")
    data = make_disk(src, size)
    vhds = {}
    for sub in ("fixed", "dynamic"):
        vhds[sub] = os.path.join(work, f"{sub}.vhd")
        run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={sub},force_size=on", src, vhds[sub]])
    print(f"disk: {size / (1 << 30):.1f} GiB virtual, {data / MIB:.0f} MiB data in 1 MiB chunks; "
          f"{a.rounds} rounds, alternating; times include sync")
    print()
    print("| source | output | azure2kvm (s) | qemu-img (s) | ratio | azure2kvm peak RSS | qemu-img peak RSS | identical |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for sub, vhd in vhds.items():
        for fmt in ("raw", "qcow2"):
            ours_t, theirs_t, ours_rss, theirs_rss = [], [], [], []
            ours_out = os.path.join(work, f"ours.{fmt}")
            theirs_out = os.path.join(work, f"qemu.{fmt}")
            for r in range(a.rounds):
                pair = [
                    ("ours", [BIN, "-q", "--no-progress", "convert", vhd, ours_out]),
                    ("qemu", ["qemu-img", "convert", "-f", "vpc", "-O", fmt, vhd, theirs_out]),
                ]
                if r % 2:
                    pair.reverse()  # alternate who goes first
                for who, cmd in pair:
                    # Both start with no output file, removed outside the timing: freeing
                    # the previous round's blocks is not the conversion's cost.
                    out = ours_out if who == "ours" else theirs_out
                    if os.path.exists(out):
                        os.unlink(out)
                        subprocess.run(["sync"], check=True)
                    t, rss = timed(cmd)
                    (ours_t if who == "ours" else theirs_t).append(t)
                    (ours_rss if who == "ours" else theirs_rss).append(rss)
            ok = same(fmt, ours_out, theirs_out)
            mo, mq = statistics.median(ours_t), statistics.median(theirs_t)
            worst = max(worst, mo / mq)
            print(f"| {sub} | {fmt} | {mo:.3f} | {mq:.3f} | {mo / mq:.2f} | {max(ours_rss) / 1024:.1f} MiB | "
                  f"{max(theirs_rss) / 1024:.1f} MiB | {'yes' if ok else 'NO'} |")
            if not ok:
                print(f"OUTPUT DIFFERS for {sub} → {fmt}", file=sys.stderr)
                sys.exit(1)
    print()
    print(f"worst ratio: {worst:.2f}")
    if not a.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
