"""A small service exporting loopwatch's metrics on a Prometheus endpoint.

    pip install 'loopwatch[prometheus]'
    python examples/metrics_service.py [--port 9000] [--seconds 5]

While it runs, ``curl -s localhost:9000/metrics | grep ^loopwatch`` shows the
histogram of slow iterations, each loop's busy share and lag, and the blocks
per line. Its handlers make two classic mistakes: a ~10 ms hash computed on
the loop for every request (a "thousand cuts" site: slow iterations, no block)
and, every tenth request, a synchronous 150 ms call (a block). Before it exits
it scrapes its own endpoint once and prints loopwatch's lines.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
import urllib.request

import prometheus_client

import loopwatch
from loopwatch.metrics import PrometheusSink


def sign(payload: bytes) -> bytes:
    """About 10 ms of hashing, on the loop: short, but it adds up."""
    digest = payload
    deadline = time.perf_counter() + 0.01
    while time.perf_counter() < deadline:
        digest = hashlib.sha256(digest).digest()
    return digest


def render_invoice_sync() -> None:
    time.sleep(0.15)  # a synchronous client call: each one is a block


async def handle(request: int) -> None:
    await asyncio.sleep(0.005)  # reading the request: fine
    sign(b"request %d" % request)
    if request % 10 == 9:
        render_invoice_sync()


async def serve(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    request = 0
    while time.monotonic() < deadline:
        await handle(request)
        request += 1
        await asyncio.sleep(0.02)


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text: str = response.read().decode()
    return [
        line for line in text.splitlines()
        if line.startswith("loopwatch_") and "_created" not in line
    ]


async def main(port: int, seconds: float) -> None:
    await serve(seconds)
    # a scrape from outside the loop's thread, as Prometheus would, while still watching
    for line in await asyncio.to_thread(scrape, port):
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        started = prometheus_client.start_http_server(args.port, addr="127.0.0.1")
    except OSError as error:
        parser.exit(2, f"metrics_service: cannot listen on port {args.port}: {error.strerror}\n")
    port = args.port
    if isinstance(started, tuple):  # prometheus-client >= 0.20 returns (server, thread)
        port = started[0].server_port
    elif port == 0:
        parser.exit(2, "metrics_service: --port 0 needs prometheus-client >= 0.20\n")
    print(f"metrics on http://127.0.0.1:{port}/metrics")
    with loopwatch.watch(threshold=0.1, sinks=[PrometheusSink()]):
        asyncio.run(main(port, args.seconds))
