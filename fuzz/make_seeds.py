#!/usr/bin/env python3
"""Writes a tiny seed corpus for the vhd_open fuzz target into fuzz/corpus/vhd_open:
a 16 KiB fixed VHD and a 32 KiB dynamic VHD with 4 KiB blocks (small inputs let the
fuzzer reach the header and BAT checks quickly); and for vhdx_open, into
fuzz/corpus/vhdx_open, the smallest VHDX layout the spec allows (MS-VHDX: 1 MiB header
section, log, BAT and metadata regions of 1 MiB each, then 1 MiB blocks), with 512- and
4096-byte sectors."""
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


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def guid(a, b, c, d):
    return struct.pack("<IHH", a, b, c) + bytes(d)


BAT_GUID = guid(0x2DC27766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08])
META_GUID = guid(0x8B7CA206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E])
ITEMS = [
    guid(0xCAA16737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]),
    guid(0x2FA54224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]),
    guid(0x8141BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]),
    guid(0xCDA348C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]),
    guid(0xBECA12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]),
]
MIB = 1 << 20


def vhdx(sector):
    f = bytearray(5 * MIB)
    f[0:8] = b"vhdxfile"
    for i, at in enumerate((64 << 10, 128 << 10)):
        h = bytearray(4096)
        h[0:4] = b"head"
        struct.pack_into("<Q", h, 8, i + 1)
        struct.pack_into("<HHIQ", h, 64, 0, 1, MIB, MIB)
        struct.pack_into("<I", h, 4, crc32c(h))
        f[at:at + 4096] = h
    for at in (192 << 10, 256 << 10):
        t = bytearray(64 << 10)
        t[0:4] = b"regi"
        struct.pack_into("<I", t, 8, 2)
        t[16:32] = BAT_GUID
        struct.pack_into("<QII", t, 32, 2 * MIB, MIB, 1)
        t[48:64] = META_GUID
        struct.pack_into("<QII", t, 64, 3 * MIB, MIB, 1)
        struct.pack_into("<I", t, 4, crc32c(t))
        f[at:at + len(t)] = t
    m = 3 * MIB
    f[m:m + 8] = b"metadata"
    struct.pack_into("<H", f, m + 10, len(ITEMS))
    values = [struct.pack("<II", MIB, 0), struct.pack("<Q", 2 * MIB),
              struct.pack("<I", sector), struct.pack("<I", sector), b"\x5e" * 16]
    at = 64 << 10
    for i, (g, v) in enumerate(zip(ITEMS, values)):
        e = m + 32 + 32 * i
        f[e:e + 16] = g
        struct.pack_into("<III", f, e + 16, at, len(v), 4)
        f[m + at:m + at + len(v)] = v
        at += len(v)
    struct.pack_into("<QQ", f, 2 * MIB, 4 * MIB | 6, 2)  # block 0 present, block 1 ZERO
    f[4 * MIB:5 * MIB] = b"\x5a" * MIB
    return bytes(f)


os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "fixed"), "wb") as fh:
    fh.write(b"\x5a" * 16384 + footer(2, 16384, 2**64 - 1))
with open(os.path.join(OUT, "dynamic"), "wb") as fh:
    fh.write(dynamic(32768, 4096))
VHDX_OUT = os.path.join(HERE, "corpus", "vhdx_open")
os.makedirs(VHDX_OUT, exist_ok=True)
for sector in (512, 4096):
    with open(os.path.join(VHDX_OUT, f"dynamic-{sector}"), "wb") as fh:
        fh.write(vhdx(sector))
print("seeds in", OUT, "and", VHDX_OUT)
