#!/usr/bin/env python3
"""A TCP proxy that makes loopback look like a wide-area link to a blob: every byte takes
a one-way delay each way, and all connections together share one bandwidth limit (a
blob's throughput target is per blob, not per connection).

    wire_proxy.py --listen-port P --upstream-port U --rate-mib 60 --rtt-ms 20

Used by bench/download.sh (WIRE=1) in front of Azurite, so the methods are compared where
the wire, not the emulator's CPU, is the bottleneck. Prints "ready" when listening; stops
on SIGTERM.
"""
import argparse
import asyncio
import signal
import time

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


async def pump(reader, writer, delay, bucket):
    """Copies reader → writer; each piece leaves `delay` s after it arrived, and pieces
    through `bucket` (if any) wait for their share of the bandwidth."""
    queue = asyncio.Queue()

    async def read():
        try:
            while data := await reader.read(CHUNK):
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
    a = p.parse_args()
    bucket = Bucket(a.rate_mib * 1024 * 1024)
    one_way = a.rtt_ms / 2000

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", a.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, up_w, one_way, None),
            pump(up_r, client_w, one_way, bucket),
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
