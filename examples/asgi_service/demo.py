"""Load the ASGI service under ``loopwatch run`` twice: blocking, then fixed. Compare.

    python examples/asgi_service/demo.py [--requests 6]

Each phase runs ``python -m loopwatch run -m uvicorn app:app --workers 2`` on a
free local port (uvicorn's default loop: uvloop, when installed), and a client
sends ``GET /health`` from four connections every 20 ms while a fifth fetches
reports and logs in (``--requests`` of each). It prints the ``/health`` latency,
then what loopwatch found: blocks per request and worker process, the worst
one's line and advice. Exit status 0 when loopwatch found both blocking lines,
with their routes, in the first phase and neither in the second.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEALTH_CLIENTS = 4
HEALTH_PAUSE = 0.02
REQUESTS = 6
THRESHOLD = 0.05


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def call(port: int, method: str, path: str, body: bytes = b"",
               connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
               ) -> dict[str, object]:
    """One HTTP/1.1 request, on a kept-alive connection or a new one."""
    reader, writer = connection or await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    answer = json.loads(await reader.readexactly(length))
    if connection is None:
        writer.close()
        await writer.wait_closed()
    return answer  # type: ignore[no-any-return]


async def health_client(port: int, done: asyncio.Event, latencies: list[float]) -> None:
    connection = await asyncio.open_connection("127.0.0.1", port)
    while not done.is_set():
        start = time.perf_counter()
        await call(port, "GET", "/health", connection=connection)
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(HEALTH_PAUSE)
    connection[1].close()


async def load(port: int, requests: int) -> list[float]:
    latencies: list[float] = []
    done = asyncio.Event()
    checkers = [asyncio.create_task(health_client(port, done, latencies))
                for _ in range(HEALTH_CLIENTS)]
    await asyncio.sleep(0.3)  # a baseline first
    login = json.dumps({"user": "ada", "password": "lovelace"}).encode()
    for day in range(requests):
        await call(port, "GET", f"/reports/2026-12-{day + 1:02d}")
        await call(port, "POST", "/login", login)
    done.set()
    await asyncio.gather(*checkers)
    return latencies


async def wait_ready(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await call(port, "GET", "/health")
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start:\n{process.communicate()[1]}")
            await asyncio.sleep(0.1)


def run_phase(title: str, *, fixed: bool, requests: int, out: Path) -> dict[str, object]:
    print(f"\n=== {title} ===")
    port = free_port()
    command = [sys.executable, "-m", "loopwatch", "run", "--quiet", "--threshold",
               str(THRESHOLD), "--json", str(out), "-m", "uvicorn", "app:app",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
               "--log-level", "warning"]
    env = dict(os.environ, ASGI_SERVICE_FIXED="1" if fixed else "0")
    process = subprocess.Popen(command, cwd=HERE, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        asyncio.run(wait_ready(port, process))
        latencies = sorted(asyncio.run(load(port, requests)))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    print(f"GET /health: {len(latencies)} requests, p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    report: dict[str, object] = json.loads(out.read_text())
    blocks = handler_blocks(report)
    other = len(report["blocks"]) - len(blocks)  # type: ignore[arg-type]
    if other:
        print(f"loopwatch: {other} block(s) outside any request (a worker importing the app "
              "in its loop as it starts)")
    if not blocks:
        print(f"loopwatch: no block over {THRESHOLD * 1000:.0f} ms in the service's handlers")
        return report
    print(f"loopwatch: {len(blocks)} blocks over {THRESHOLD * 1000:.0f} ms in the handlers:")
    found = collections.Counter(
        (b["request"], f"app.py:{b['site'].rsplit(':', 1)[1]} in {b['function']}", b["pid"])
        for b in blocks
    )
    for (request, site, pid), count in sorted(found.items(), key=str):
        print(f"  {count} x {request}  at {site}  (worker pid {pid})")
    worst = max(blocks, key=lambda b: b["duration"])
    print(f"  worst: {worst['duration'] * 1000:.0f} ms, {worst['kind']}; advice: "
          f"{worst['advice']}")
    for event in report["events"]:  # type: ignore[union-attr]
        print(f"  note: {event}")
    return report


def handler_blocks(report: dict[str, object]) -> list[dict[str, object]]:
    """The blocks that ran for a request, in the service's code."""
    return [b for b in report["blocks"]  # type: ignore[attr-defined]
            if b["request"] and "app.py" in (b["site"] or "")]


def blocking_routes(report: dict[str, object]) -> set[str]:
    return {str(b["request"]) for b in handler_blocks(report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help="reports fetched, and logins, per phase")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    print(f"{HEALTH_CLIENTS} clients send GET /health every {HEALTH_PAUSE * 1000:.0f} ms "
          f"while another fetches {args.requests} reports and logs in {args.requests} times; "
          "uvicorn with 2 workers, under loopwatch run.")
    with tempfile.TemporaryDirectory() as folder:
        before = run_phase("1. blocking: a sync client and a password hash on the loop",
                           fixed=False, requests=args.requests, out=Path(folder, "before.json"))
        after = run_phase('2. fixed: both in @loopwatch.offload("thread")', fixed=True,
                          requests=args.requests, out=Path(folder, "after.json"))
    wanted = {"GET /reports/{day}", "POST /login"}
    if blocking_routes(before) != wanted:
        print(f"\nunexpected: the blocking phase found {blocking_routes(before)}, not {wanted}")
        return 1
    if blocking_routes(after):
        print(f"\nunexpected: the fixed phase still blocked in {blocking_routes(after)}")
        return 1
    print("\nBlocking, /health waited for every report and hash; loopwatch named both lines, "
          "their routes\nand the worker that ran them. Fixed, /health stays fast.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
