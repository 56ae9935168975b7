#!/usr/bin/env python3
"""ours (azure2kvm Qcow2Writer) vs imago 0.2.6 (sync feature) vs qemu-img convert, raw -> qcow2.
Usage: python3 bench.py [--rounds 5] [--work DIR] [--only CASE,...]
"""
import argparse, os, random, statistics, subprocess, sys, tempfile, time, json

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "target", "release", "qcow2-writers-bench")
MIB = 1 << 20
GIB = 1 << 30


def make_2g(path, size=2 * GIB, seed=42):
    # identical to bench/convert.py make_disk
    rng = random.Random(seed)
    mibs = size // MIB
    chosen = sorted(rng.sample(range(mibs), mibs // 10))
    with open(path, "wb") as f:
        f.truncate(size)
        for m in chosen:
            f.seek(m * MIB)
            f.write(rng.randbytes(MIB))


def make_odd37(path, seed=7):
    # 37 MiB + 1536 B; random data in ~25% of the 4.5 KiB slots (4608-byte grid: not 4K- or
    # cluster-aligned), some runs of adjacent slots crossing 64 KiB clusters, and the tail.
    size = 37 * MIB + 1536
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        nslots = size // 4608
        for s in sorted(rng.sample(range(nslots), nslots // 4)):
            f.seek(s * 4608)
            f.write(rng.randbytes(4608))
        f.seek(size - 1536 - 4608 * 2)
        f.write(rng.randbytes(1536 + 4608 * 2))  # data to the very end (partial last slot)


def make_lastsector(path, seed=9):
    # 8 GiB + 512 B (not a cluster multiple), data only in sector 0 and the last sector
    size = 8 * GIB + 512
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(rng.randbytes(512))
        f.seek(size - 512)
        f.write(rng.randbytes(512))


def make_40g(path, seed=11):
    # 40 GiB = 80 L2 tables of 512 MiB; 4 random 1 MiB chunks in each (320 MiB data)
    size = 40 * GIB
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for l2 in range(80):
            for m in sorted(rng.sample(range(512), 4)):
                f.seek(l2 * 512 * MIB + m * MIB)
                f.write(rng.randbytes(MIB))


def make_200g(path, seed=13):
    # 200 GiB = 400 L2 tables (> imago's 128-entry L2 cache, > our 64); 2 x 1 MiB per table
    size = 200 * GIB
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for l2 in range(400):
            for m in sorted(rng.sample(range(512), 2)):
                f.seek(l2 * 512 * MIB + m * MIB)
                f.write(rng.randbytes(MIB))


def make_halfzero(path, seed=17):
    # 512 MiB; 20% of the MiBs hold data in every other 64 KiB cluster (the rest of the MiB
    # is zero): the 1 MiB chunk is not all-zero, so both writers get it, zeros included
    size = 512 * MIB
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for m in sorted(rng.sample(range(512), 512 // 5)):
            buf = bytearray(MIB)  # zeros written explicitly: the file has no hole there
            for c in range(0, 16, 2):
                buf[c * 65536:(c + 1) * 65536] = rng.randbytes(65536)
            f.seek(m * MIB)
            f.write(buf)


def timed(cmd):
    rss_file = tempfile.NamedTemporaryFile(delete=False)
    rss_file.close()
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file.name] + cmd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - start
    with open(rss_file.name) as f:
        m, u, sy = f.read().strip().splitlines()[-1].split()
        rss = (int(m), float(u) + float(sy))
    os.unlink(rss_file.name)
    if p.returncode != 0:
        print(f"FAILED {cmd}: {p.stderr}", file=sys.stderr)
        return elapsed, rss, False
    return elapsed, rss, True


def check(inp, out):
    c = subprocess.run(["qemu-img", "check", "--output=json", out], capture_output=True, text=True)
    try:
        j = json.loads(c.stdout)
    except Exception:
        return f"check rc={c.returncode} {c.stderr.strip()[:200]}", False
    errs = j.get("corruptions", 0) + j.get("check-errors", 0)
    leaks = j.get("leaks", 0)
    cmp = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", inp, out])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", out], capture_output=True, text=True).stdout)
    vs_ok = info["virtual-size"] == os.path.getsize(inp)
    ok = vs_ok and c.returncode == 0 and errs == 0 and leaks == 0 and cmp.returncode == 0
    alloc = j.get("allocated-clusters")
    return (f"check rc={c.returncode} corrupt={errs} leaks={leaks} alloc_clusters={alloc}; "
            f"compare rc={cmp.returncode}; vsize {'==' if vs_ok else '!='} input"), ok


CASES = {
    # name: (maker, input file, chunk, seeds to test [None = sequential])
    "2g": (make_2g, "in-2g.raw", MIB),
    "odd37": (make_odd37, "in-odd37.raw", 4608),
    "lastsector": (make_lastsector, "in-lastsector.raw", MIB),
    "40g": (make_40g, "in-40g.raw", MIB),
    "200g": (make_200g, "in-200g.raw", MIB),
    "halfzero": (make_halfzero, "in-halfzero.raw", MIB),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(HERE, "data"))
    ap.add_argument("--only", default=",".join(CASES))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rows = []
    for case in a.only.split(","):
        maker, fname, chunk = CASES[case]
        inp = os.path.join(a.work, fname)
        if not os.path.exists(inp):
            maker(inp)
            subprocess.run(["sync"], check=True)
        variants = [("ours", None), ("imago", None), ("ours", 1), ("imago", 1)]
        if case in ("2g", "halfzero"):
            variants.append(("qemu-img", None))
        if case in ("40g", "200g"):  # only shuffled, as the brief asks
            variants = [("ours", 1), ("imago", 1)]
        rounds = a.rounds if case in ("2g", "200g") else 3
        res = {v: ([], [], []) for v in variants}
        cpu = {}
        for r in range(rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for (w, seed) in order:
                out = os.path.join(a.work, f"out-{case}-{w}-{'shuf' if seed else 'seq'}.qcow2")
                if os.path.exists(out):
                    os.unlink(out)
                    subprocess.run(["sync"], check=True)
                if w == "qemu-img":
                    cmd = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", inp, out]
                else:
                    cmd = [BIN, w, inp, out, "--chunk", str(chunk)]
                    if seed is not None:
                        cmd += ["--shuffle", str(seed + r)]  # different order each round
                t, rss, ok = timed(cmd)
                res[(w, seed)][0].append(t)
                res[(w, seed)][1].append(rss[0])
                cpu.setdefault((w, seed), []).append(rss[1])
                if ok:
                    msg, ok = check(inp, out)
                else:
                    msg = "writer failed"
                res[(w, seed)][2].append((ok, msg, os.path.getsize(out) if os.path.exists(out) else 0))
        for (w, seed), (ts, rs, cs) in res.items():
            allok = all(c[0] for c in cs)
            row = (f"| {case} | {'shuffled' if seed else 'sequential'} | {w} | {statistics.median(ts):.3f} "
                   f"| {min(ts):.3f}–{max(ts):.3f} | {statistics.median(cpu[(w, seed)]):.2f} | {max(rs) / 1024:.1f} | {cs[-1][2] / MIB:.1f} "
                   f"| {'clean+identical' if allok else 'FAIL'} ({len(ts)} runs) | {cs[-1][1]} |")
            print(row, flush=True)
            rows.append(row)
            if not allok:
                for c in cs:
                    print("   ", c, file=sys.stderr)


if __name__ == "__main__":
    print("| case | order | writer | median s (incl. sync) | range | median CPU s (user+sys) | peak RSS MiB | file MiB | correctness | last check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    main()
