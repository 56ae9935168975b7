#!/usr/bin/env python3
"""Where `azure2kvm download` time goes on Azurite, and the floor any client meets there.

Run by bench/azurite_floor.sh (which starts Azurite, seeds the 1 GiB benchmark disk and
passes --url/--pid). Azurite serves requests on one node thread, so its CPU seconds for a
set of requests bound the wall time of any client sending them.

replay: an ideal client (16 keep-alive connections, bodies read and dropped: no image
written, no conversion) sends the ranges azure2kvm plans for the disk, restated here from
src/transfer/plan.rs (fixed VHD, 8 MiB chunk cells, gaps under 128 KiB joined inside a
cell), and variants of that set.
"""
import argparse
import http.client
import queue
import random
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from azurite_helper import layout  # noqa: E402  the seeded disk's extents

MIB = 1 << 20


def planned_ranges(size, chunk=8 * MIB, max_gap=128 << 10):
    runs = []
    for off, length in layout(size, 0.2, random.Random(1)):
        if runs and (runs[-1][1] == off or (off - runs[-1][1] < max_gap and (runs[-1][1] - 1) // chunk == off // chunk)):
            runs[-1][1] = off + length
        else:
            runs.append([off, off + length])
    out = []
    for start, end in runs:
        at = start
        while at < end:
            cut = min((at // chunk + 1) * chunk, end)
            out.append((at, cut - at))
            at = cut
    return out


def azurite_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split()
    return (int(f[13]) + int(f[14])) / 100


def replay(url, pid, name, ranges, connections=16):
    u = urllib.parse.urlsplit(url)
    path = u.path + "?" + u.query
    work = queue.Queue()
    for r in ranges:
        work.put(r)

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port)
        while True:
            try:
                start, length = work.get_nowait()
            except queue.Empty:
                return
            conn.request("GET", path, headers={"x-ms-range": f"bytes={start}-{start + length - 1}", "x-ms-version": "2021-08-06"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 206 and len(body) == length, (resp.status, len(body), length)

    c0, t0 = azurite_cpu(pid), time.time()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.time() - t0, azurite_cpu(pid) - c0
    mib = sum(length for _, length in ranges) / MIB
    print(f"| ideal client: {name} | {len(ranges)} | {mib:.1f} | {wall:.2f} | {cpu:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--virtual-gib", type=float, default=1)
    a = p.parse_args()
    plan = planned_ranges(int(a.virtual_gib * 1024) * MIB)
    replay(a.url, a.pid, "azure2kvm's ranges", plan)
    replay(a.url, a.pid, "its ranges under 4 MiB only", [r for r in plan if r[1] < 4 * MIB])
    replay(a.url, a.pid, "its ranges of 4 MiB and more only", [r for r in plan if r[1] >= 4 * MIB])
    # Azurite MD5-hashes every range of at most 4 MiB (and reads it twice); one more page
    # avoids that. Real Azure hashes only when asked, so this is shown, not used.
    replay(a.url, a.pid, "its ranges, exact 4 MiB ones + 512 B", [(s, n + 512 if n == 4 * MIB else n) for s, n in plan])


if __name__ == "__main__":
    main()
