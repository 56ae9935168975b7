#!/usr/bin/env python3
"""Writes a tiny seed corpus for the vhd_open fuzz target into fuzz/corpus/vhd_open:
a 16 KiB fixed VHD and a 32 KiB dynamic VHD with 4 KiB blocks (small inputs let the
fuzzer reach the header and BAT checks quickly)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "vhd_open")


def checksum(b, skip):
    return (~sum(x for i, x in enumerate(b) if not skip <= i < skip + 4)) & 0xFFFFFFFF


def footer(disk_type, size, data_offset):
    f = bytearray(512)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQ", f, 8, 2, 0x00010000, data_offset)
    f[28:32] = b"wa\0\0"
    f[36:40] = b"Wi2k"
    struct.pack_into(">QQ", f, 40, size, size)
    struct.pack_into(">HBBI", f, 56, 16, 2, 1, disk_type)
    struct.pack_into(">I", f, 64, checksum(f, 64))
    return bytes(f)


def dynamic(size, block):
    entries = size // block
    h = bytearray(1024)
    h[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", h, 8, 2**64 - 1, 1536, 0x00010000, entries, block)
    struct.pack_into(">I", h, 36, checksum(h, 36))
    bat = bytearray(b"\xff" * 512)
    blocks = b""
    next_sector = 4
    for i in (1, 5):
        struct.pack_into(">I", bat, i * 4, next_sector)
        blocks += b"\xff" * 512 + bytes([i]) * block
        next_sector += (512 + block) // 512
    f = footer(3, size, 512)
    return f + bytes(h) + bytes(bat) + blocks + f


os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "fixed"), "wb") as fh:
    fh.write(b"\x5a" * 16384 + footer(2, 16384, 2**64 - 1))
with open(os.path.join(OUT, "dynamic"), "wb") as fh:
    fh.write(dynamic(32768, 4096))
print("seeds in", OUT)
