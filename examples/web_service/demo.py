"""Load-test the service twice: with the blocking login, then with the fix. Compare.

    python examples/web_service/demo.py [--logins 6]

Each phase starts ``service.py``'s server on a free local port under
``loopwatch.watch(threshold=0.05, mode="log", on_block=...)`` (production
settings), and a client in another thread sends ``GET /health`` from four
connections every 20 ms while a fifth logs in six times in a row
(``--logins``). It prints the ``/health`` latency percentiles, then the
blocks loopwatch logged and counted. Exit status 0 when loopwatch found the
blocking line in the first phase and nothing there in the second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from service import BlockCounter, Service  # service.py, next to this file

import loopwatch

HEALTH_CLIENTS = 4
HEALTH_PAUSE = 0.02  # seconds between one client's /health requests
LOGINS = 6
THRESHOLD = 0.05


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str,
    body: bytes = b"",
) -> tuple[int, dict[str, object]]:
    """One HTTP/1.1 request on a kept-alive connection; (status, JSON body)."""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
        .encode() + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def health_client(port: int, done: asyncio.Event, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not done.is_set():
        start = time.perf_counter()
        status, _ = await request(reader, writer, "GET", "/health")
        latencies.append(time.perf_counter() - start)
        assert status == 200, status
        await asyncio.sleep(HEALTH_PAUSE)
    writer.close()
    await writer.wait_closed()


async def login_client(port: int, logins: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"user": "ada", "password": "lovelace"}).encode()
    for _ in range(logins):
        start = time.perf_counter()
        status, answer = await request(reader, writer, "POST", "/login", body)
        latencies.append(time.perf_counter() - start)
        assert status == 200 and answer["ok"], answer
    writer.close()
    await writer.wait_closed()


async def load(port: int, logins: int) -> tuple[list[float], list[float]]:
    """The client side: runs on its own event loop, in its own thread."""
    health: list[float] = []
    login_latencies: list[float] = []
    done = asyncio.Event()
    checkers = [asyncio.create_task(health_client(port, done, health))
                for _ in range(HEALTH_CLIENTS)]
    await asyncio.sleep(0.2)  # a baseline before the first login
    await login_client(port, logins, login_latencies)
    done.set()
    await asyncio.gather(*checkers)
    return health, login_latencies


async def phase(fixed: bool, logins: int) -> tuple[list[float], list[float]]:
    """Serve on this loop while a client thread loads the service; the latencies it saw."""
    server = await Service(fixed=fixed).start()
    port = server.sockets[0].getsockname()[1]
    async with server:
        # The client gets its own thread and loop, as a remote client would: it
        # keeps sending while the service's loop is stuck, and times the wait.
        return await asyncio.to_thread(asyncio.run, load(port, logins))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def where(block: loopwatch.Block) -> str:
    """``file:line in function`` with the file name only, for a short line."""
    if not block.frames:
        return block.site or "<unknown>"
    frame = block.frames[-1]
    for candidate in reversed(block.frames):
        if f"{candidate.file}:{candidate.line}" == block.site:
            frame = candidate
            break
    return f"{Path(frame.file).name}:{frame.line} in {frame.function}"


def run_phase(title: str, *, fixed: bool, logins: int) -> list[loopwatch.Block]:
    print(f"\n=== {title} ===")
    counter = BlockCounter()
    with loopwatch.watch(threshold=THRESHOLD, mode="log", on_block=counter):
        health, login_times = asyncio.run(phase(fixed, logins))
    print(
        f"GET /health: {len(health)} requests, p50 {ms(percentile(health, 50))}, "
        f"p99 {ms(percentile(health, 99))}, max {ms(max(health))}"
    )
    print(f"POST /login: {len(login_times)} requests, "
          f"median {ms(statistics.median(login_times))}")
    # The service's loop runs in the main thread; the client's loop is watched too.
    served = [b for b in counter.blocks if "(MainThread)" in b.loop]
    if not served:
        print(f"loopwatch: no block over {ms(THRESHOLD)} on the service's loop")
    else:
        total = sum(b.duration for b in served)
        by_line = {Path(site).name: n for site, n in counter.by_site.items()}
        print(f"loopwatch: {len(served)} blocks over {ms(THRESHOLD)} on the service's loop, "
              f"{ms(total)} in all; on_block counted {by_line}")
        worst = max(served, key=lambda b: b.duration)
        print(f"  worst: {ms(worst.duration)} at {where(worst)} ({worst.kind}, "
              f"CPU {worst.cpu_ratio or 0:.0%})")
        print(f"  advice: {worst.advice}")
    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=LOGINS, help="logins per phase")
    args = parser.parse_args(argv)
    if args.logins < 1:
        parser.error("--logins must be at least 1")
    # mode="log" writes one WARNING per block to the "loopwatch" logger: show them
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="  [log] %(levelname)s %(name)s: %(message)s")
    print(f"{HEALTH_CLIENTS} clients send GET /health every {ms(HEALTH_PAUSE)} while another "
          f"logs in {args.logins} times (PBKDF2, 600 000 rounds per login).")
    before = run_phase("1. blocking: /login hashes the password on the event loop", fixed=False,
                       logins=args.logins)
    after = run_phase('2. fixed: the hash runs in @loopwatch.offload("thread")', fixed=True,
                      logins=args.logins)
    found = any(where(b).startswith("service.py") and "hash_password" in where(b)
                for b in before)
    if not found:
        print("\nunexpected: loopwatch did not name hash_password in the blocking phase")
        return 1
    if any("hash_password" in where(b) for b in after):
        print("\nunexpected: hash_password still blocked the loop in the fixed phase")
        return 1
    print("\nThe blocking version stalled /health for as long as each hash ran; loopwatch "
          "named the line.\nThe fixed version hashes in a thread: /health stays fast.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
