#!/usr/bin/env python3
"""Benchmark helper for bench/download.sh (Azure Storage Python SDK against Azurite).

seed:   writes a fixed VHD into a page blob: FRACTION of the virtual size written in
        scattered 4 MiB and 64 KiB extents (80%/20% of the written bytes), then the
        footer. Prints JSON: {"url": SAS URL, "written": bytes, "extents": n}.
pysdk:  download_blob(max_concurrency=16) of the whole blob into a file (baseline a).
"""
import argparse
import base64
import datetime as dt
import json
import os
import random
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MIB = 1 << 20


def footer(size: int) -> bytes:
    f = bytearray(512)
    f[0:8] = b"conectix"
    f[8:12] = struct.pack(">I", 2)
    f[12:16] = struct.pack(">I", 0x00010000)
    f[16:24] = b"\xff" * 8
    f[28:32] = b"wa\0\0"
    f[36:40] = b"Wi2k"
    f[40:48] = struct.pack(">Q", size)
    f[48:56] = struct.pack(">Q", size)
    f[56:60] = bytes([0x0A, 0x00, 0x10, 0x3F])
    f[60:64] = struct.pack(">I", 2)
    f[68:84] = os.urandom(16)
    csum = (~sum(f)) & 0xFFFFFFFF
    f[64:68] = struct.pack(">I", csum)
    return bytes(f)


def layout(size: int, fraction: float, rng: random.Random):
    target = int(size * fraction)
    big_bytes = int(target * 0.8)
    slots = size // (4 * MIB)
    big = rng.sample(range(slots), min(slots, big_bytes // (4 * MIB)))
    used = set(big)
    extents = [(s * 4 * MIB, 4 * MIB) for s in big]
    small_n = (target - len(big) * 4 * MIB) // (64 * 1024)
    free_slots = [s for s in range(slots) if s not in used]
    small = set()
    while len(small) < small_n:
        s = rng.choice(free_slots)
        small.add(s * 4 * MIB + rng.randrange(64) * 64 * 1024)
    extents += [(o, 64 * 1024) for o in small]
    extents.sort()
    return extents


def seed(args):
    size = int(args.virtual_gib * 1024) * MIB
    rng = random.Random(args.seed)
    service = BlobServiceClient(f"http://127.0.0.1:{args.port}/{ACCOUNT}", credential={"account_name": ACCOUNT, "account_key": KEY})
    container = service.get_container_client("bench")
    try:
        container.create_container()
    except Exception:
        pass
    blob = container.get_blob_client(args.name)
    blob.create_page_blob(size + 512)
    extents = layout(size, args.fraction, rng)
    pattern = os.urandom(4 * MIB + 4096)

    def put(e):
        off, length = e
        k = (off // 4096) % 4096
        data = pattern[k : k + length]
        blob.upload_page(data, offset=off, length=length)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, extents))
    blob.upload_page(footer(size), offset=size, length=512)
    sas = generate_blob_sas(ACCOUNT, "bench", args.name, account_key=KEY, permission=BlobSasPermissions(read=True),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=4))
    url = f"http://127.0.0.1:{args.port}/{ACCOUNT}/bench/{args.name}?{sas}"
    print(json.dumps({"url": url, "written": sum(l for _, l in extents), "extents": len(extents), "size": size}))


def seed_dense(args):
    """A fixed VHD whose every byte is data, as a block blob: the worst case for memory
    (every chunk is full-size and Azurite serves > 4 MiB ranges fast)."""
    size = int(args.virtual_gib * 1024) * MIB
    service = BlobServiceClient(f"http://127.0.0.1:{args.port}/{ACCOUNT}", credential={"account_name": ACCOUNT, "account_key": KEY})
    container = service.get_container_client("bench")
    try:
        container.create_container()
    except Exception:
        pass
    blob = container.get_blob_client(args.name)
    pattern = os.urandom(8 * MIB)

    def gen():
        for i in range(size // (8 * MIB)):
            yield pattern[i % 7:] + pattern[: i % 7]
        yield footer(size)

    blob.upload_blob(gen(), length=size + 512, overwrite=True, max_concurrency=4)
    sas = generate_blob_sas(ACCOUNT, "bench", args.name, account_key=KEY, permission=BlobSasPermissions(read=True),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=4))
    url = f"http://127.0.0.1:{args.port}/{ACCOUNT}/bench/{args.name}?{sas}"
    print(json.dumps({"url": url, "written": size, "extents": 1, "size": size}))


def pysdk(args):
    client = BlobClient.from_blob_url(args.url)
    with open(args.out, "wb") as f:
        client.download_blob(max_concurrency=16).readinto(f)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--virtual-gib", type=float, required=True)
    s.add_argument("--fraction", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--name", required=True)
    s2 = sub.add_parser("seed-dense")
    s2.add_argument("--port", type=int, required=True)
    s2.add_argument("--virtual-gib", type=float, required=True)
    s2.add_argument("--name", required=True)
    d = sub.add_parser("pysdk")
    d.add_argument("--url", required=True)
    d.add_argument("--out", required=True)
    a = p.parse_args()
    {"seed": seed, "seed-dense": seed_dense, "pysdk": pysdk}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
