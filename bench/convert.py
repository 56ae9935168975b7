#!/usr/bin/env python3
"""Benchmark: `azure2kvm convert` against `qemu-img convert`, alternating, same run.

Builds a sparse raw disk of SIZE GiB with ~10% data in scattered 1 MiB chunks, makes a
fixed and a dynamic VHD and a dynamic VHDX of it with qemu-img, then for each (source,
output format) runs ours and qemu-img's conversion ROUNDS times, the order rotating each
round. `--floor` adds a third contender: `dd` writing the same data bytes (the chunks,
back to back) to a new file — what the disk charges for those bytes, which neither
converter can beat.

Each command is followed by `sync FILE` on its output (fsync, timed with it). Not a
global `sync`: on a shared machine that would also flush whatever the others have dirty
and charge it to whoever runs at that moment. Reports median wall time, ratios measured
side by side, peak RSS (from /usr/bin/time), the median of each contender by which one
ran just before it (the order effect), and checks the outputs identical (cmp / qemu-img
compare).

Before each timed command the guest's free memory is put in the same state for every
contender (`--pages`, see prepare_pages): on this project's VMs it decides a writer's
speed by 2x, and otherwise depends on what ran just before.

Usage: python3 bench/convert.py [--size-gib 2] [--rounds 5] [--sources fixed,dynamic,vhdx]
           [--formats raw,qcow2] [--floor] [--pages fresh|stale|as-is] [--settle SECS]
           [--workdir DIR] [--bin PATH]
Needs: a release build (cargo build --release), qemu-img, dd, /usr/bin/time.
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
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "azure2kvm")
MIB = 1 << 20

# source name → (qemu-img format, creation options)
SOURCES = {
    "fixed": ("vpc", "subformat=fixed,force_size=on"),
    "dynamic": ("vpc", "subformat=dynamic,force_size=on"),
    "vhdx": ("vhdx", "subformat=dynamic"),
}


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_disk(path, data_path, size, seed=42):
    """~10% of the disk in 1 MiB chunks of random data at random MiB-aligned places; the
    same chunks back to back go to data_path (the floor's input)."""
    rng = random.Random(seed)
    mibs = size // MIB
    chosen = sorted(rng.sample(range(mibs), mibs // 10))
    with open(path, "wb") as f, open(data_path, "wb") as d:
        f.truncate(size)
        for m in chosen:
            chunk = rng.randbytes(MIB)
            f.seek(m * MIB)
            f.write(chunk)
            d.write(chunk)
    return len(chosen) * MIB


def timed(cmd, out):
    """Wall seconds of cmd + fsync of out, and peak RSS in KiB of cmd."""
    rss_file = tempfile.NamedTemporaryFile(delete=False)
    rss_file.close()
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + cmd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["sync", out], check=True)
    elapsed = time.perf_counter() - start
    with open(rss_file.name) as f:
        rss = int(f.read().strip().splitlines()[-1])
    os.unlink(rss_file.name)
    return elapsed, rss


def same(fmt, ours, theirs):
    if fmt == "raw":
        return subprocess.run(["cmp", "-s", ours, theirs]).returncode == 0
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", ours, theirs]).returncode == 0


def contenders(a, work, src, sub, fmt, data_file):
    """name → (command, output path)."""
    qfmt = SOURCES[sub][0]
    out = {
        "ours": os.path.join(work, f"ours.{fmt}"),
        "qemu": os.path.join(work, f"qemu.{fmt}"),
        "dd": os.path.join(work, "dd.out"),
    }
    c = {
        "ours": ([a.bin, "-q", "--no-progress", "convert", src, out["ours"]], out["ours"]),
        "qemu": (["qemu-img", "convert", "-f", qfmt, "-O", fmt, src, out["qemu"]], out["qemu"]),
    }
    if a.floor:
        c["dd"] = (["dd", f"if={data_file}", f"of={out['dd']}", "bs=1M", "status=none"], out["dd"])
    return c


def prepare_pages(a, work, fill_mib):
    """Puts the guest's free memory in the same state before every timed command.

    On this project's VMs (virtio-balloon with free page reporting) a page freed more than
    ~2 s ago has been handed back to the host, and touching it again costs a host page
    fault: every writer (qemu-img, dd, ours) then takes ~2x as long to put 200 MiB into the
    page cache as when it gets pages freed just before. Which one it gets depends on what
    ran before it, so without this the order decides the ratio.
    fresh: free fill_mib of just-used page cache (write a file, no sync, unlink it);
    stale: wait `settle` seconds so every free page has been reported; as-is: nothing."""
    if a.pages == "fresh":
        filler = os.path.join(work, "filler")
        run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={fill_mib}", "status=none"])
        os.unlink(filler)  # dirty pages of an unlinked file are dropped without I/O
    elif a.pages == "stale":
        time.sleep(a.settle)


def bench_case(a, work, cmds, fill_mib):
    """Runs every contender once per round, the order rotating; returns per-contender
    lists of (seconds, rss, predecessor)."""
    names = list(cmds)
    runs = {n: [] for n in names}
    before = "previous case"
    for r in range(a.rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order.reverse()  # with 3 contenders, every one also follows every other
        for who in order:
            cmd, out = cmds[who]
            # Each starts with no output file, removed outside the timing: freeing the
            # previous round's blocks is not the conversion's cost.
            if os.path.exists(out):
                os.unlink(out)
                subprocess.run(["sync", os.path.dirname(out)], check=True)
            prepare_pages(a, work, fill_mib)
            t, rss = timed(cmd, out)
            runs[who].append((t, rss, before))
            before = who
    return runs


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def report_case(sub, fmt, runs, rounds_log):
    m = {n: med([t for t, _, _ in rs]) for n, rs in runs.items()}
    rss = {n: max(r for _, r, _ in rs) / 1024 for n, rs in runs.items()}
    floor = f"{m['dd']:.3f} | {m['ours'] / m['dd']:.2f} | {m['qemu'] / m['dd']:.2f}" if "dd" in m else "– | – | –"
    row = (f"| {sub} | {fmt} | {m['ours']:.3f} | {m['qemu']:.3f} | {m['ours'] / m['qemu']:.2f} | {floor} | "
           f"{rss['ours']:.1f} MiB | {rss['qemu']:.1f} MiB |")
    for n, rs in runs.items():
        by = {}
        for t, _, prev in rs:
            by.setdefault(prev, []).append(t)
        parts = ", ".join(f"after {p}: {med(ts):.3f} (n={len(ts)})" for p, ts in sorted(by.items()))
        all_t = " ".join(f"{t:.3f}" for t, _, _ in rs)
        rounds_log.append(f"{sub}/{fmt} {n}: {all_t}  |  {parts}")
    return row, m["ours"] / m["qemu"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-gib", type=float, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sources", default="fixed,dynamic,vhdx")
    p.add_argument("--formats", default="raw,qcow2")
    p.add_argument("--floor", action="store_true", help="add dd writing the same data bytes")
    p.add_argument("--pages", choices=("fresh", "stale", "as-is"), default="fresh",
                   help="free-memory state before each timed command (see prepare_pages)")
    p.add_argument("--settle", type=float, default=5, help="seconds of pause for --pages stale")
    p.add_argument("--workdir")
    p.add_argument("--bin", default=BIN)
    a = p.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} missing: run cargo build --release first")
    work = a.workdir or tempfile.mkdtemp(prefix="a2k-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    size = int(a.size_gib * (1 << 30)) // MIB * MIB
    src = os.path.join(work, "src.raw")
    data_file = os.path.join(work, "data.bin")
    data = make_disk(src, data_file, size)
    images = {}
    for sub in a.sources.split(","):
        qfmt, opts = SOURCES[sub]
        images[sub] = os.path.join(work, f"{sub}.{'vhdx' if qfmt == 'vhdx' else 'vhd'}")
        run(["qemu-img", "convert", "-f", "raw", "-O", qfmt, "-o", opts, src, images[sub]])
    print(f"disk: {size / (1 << 30):.1f} GiB virtual, {data / MIB:.0f} MiB data in 1 MiB chunks; "
          f"{a.rounds} rounds, order rotating; times include fsync of the output; pages {a.pages}")
    print()
    print("| source | output | azure2kvm (s) | qemu-img (s) | ratio | dd floor (s) | azure2kvm / dd | qemu-img / dd "
          "| azure2kvm peak RSS | qemu-img peak RSS | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst, rounds_log = 0.0, []
    for sub, img in images.items():
        for fmt in a.formats.split(","):
            cmds = contenders(a, work, img, sub, fmt, data_file)
            runs = bench_case(a, work, cmds, data // MIB + 64)
            row, ratio = report_case(sub, fmt, runs, rounds_log)
            ok = same(fmt, cmds["ours"][1], cmds["qemu"][1])
            print(f"{row} {'yes' if ok else 'NO'} |", flush=True)
            worst = max(worst, ratio)
            if not ok:
                print(f"OUTPUT DIFFERS for {sub} → {fmt}", file=sys.stderr)
                sys.exit(1)
    print()
    print(f"worst ratio: {worst:.2f}")
    print()
    print("every run in order (seconds), and medians by the contender that ran just before:")
    for line in rounds_log:
        print(f"  {line}")
    if not a.workdir:
        shutil.rmtree(work)
    else:
        for name in os.listdir(work):
            if name.startswith(("ours.", "qemu.", "dd.")):
                os.unlink(os.path.join(work, name))


if __name__ == "__main__":
    main()
