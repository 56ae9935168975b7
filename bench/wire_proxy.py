#!/usr/bin/env python3
"""A TCP proxy that makes loopback look like a wide-area link to Azure Storage: every byte
takes a one-way delay each way (so each request pays the round trip), all connections
together share one bandwidth limit (the host's link), and optionally the responses of
each blob share a limit of their own (Azure's throughput target is per blob, about
60 MiB/s, not per connection).

    wire_proxy.py --listen-port P --upstream-port U --rate-mib 60 --rtt-ms 20
    wire_proxy.py --listen-port P --upstream-port U --rate-mib 400 --blob-rate-mib 60

The blob of a response is the path (without its query) of the request line that asked
for it: clients send HTTP/1.1 requests one at a time per connection, so the bytes coming
back belong to the last request sent on it.

Used by bench/download.sh (WIRE=1) and bench/fleet.sh in front of Azurite, so the
methods are compared where the wire, not the emulator's CPU, is the bottleneck. Prints
"ready" when listening; stops on SIGTERM.
"""
import argparse
import asyncio
import re
import signal
import time

REQUEST_LINE = re.compile(rb"(?:^|\r\n)(?:GET|HEAD|PUT|POST|DELETE) (/[^ ?]*)[^ ]* HTTP/1\.[01]\r\n")

CHUNK = 256 * 1024


class Bucket:
    """Token bucket shared by all connections: `rate` bytes/s, bursts of 1/20 s."""

    def __init__(self, rate):
        self.rate = rate
        self.burst = rate / 20
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n):
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= min(n, self.burst):
                    self.tokens -= n
                    return
                await asyncio.sleep((min(n, self.burst) - self.tokens) / self.rate)


class Blobs:
    """One bucket per blob path, made on first use: `rate` bytes/s each (None: no cap)."""

    def __init__(self, rate):
        self.rate = rate
        self.buckets = {}

    def bucket(self, path):
        if self.rate is None or path is None:
            return None
        if path not in self.buckets:
            self.buckets[path] = Bucket(self.rate)
        return self.buckets[path]


class Connection:
    """The blob path of the last request sent on one client connection."""

    def __init__(self):
        self.path = None

    def saw(self, data):
        found = REQUEST_LINE.findall(data)
        if found:
            self.path = found[-1]


async def pump(reader, writer, delay, buckets, on_data=None):
    """Copies reader → writer; each piece leaves `delay` s after it arrived, and pieces
    wait for their share of the bandwidth of each bucket `buckets()` gives (at the time
    they leave). `on_data` sees each piece as it is read."""
    queue = asyncio.Queue()

    async def read():
        try:
            while data := await reader.read(CHUNK):
                if on_data:
                    on_data(data)
                await queue.put((time.monotonic(), data))
        finally:
            await queue.put((time.monotonic(), b""))

    async def write():
        while True:
            arrived, data = await queue.get()
            wait = arrived + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            for bucket in buckets():
                if bucket:
                    await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
        writer.close()

    await asyncio.gather(read(), write(), return_exceptions=True)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--rate-mib", type=float, default=60)
    p.add_argument("--rtt-ms", type=float, default=20)
    p.add_argument("--blob-rate-mib", type=float, default=None,
                   help="cap of each blob's responses (all its connections together)")
    a = p.parse_args()
    bucket = Bucket(a.rate_mib * 1024 * 1024)
    blobs = Blobs(a.blob_rate_mib * 1024 * 1024 if a.blob_rate_mib else None)
    one_way = a.rtt_ms / 2000

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", a.upstream_port)
        except OSError:
            client_w.close()
            return
        conn = Connection()
        await asyncio.gather(
            pump(client_r, up_w, one_way, lambda: (), conn.saw),
            # The blob's cap first, then the host's: a piece waits for both.
            pump(up_r, client_w, one_way, lambda: (blobs.bucket(conn.path), bucket)),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
