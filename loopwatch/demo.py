"""``python -m loopwatch demo``: a small async service that blocks its loop five ways.

Each handler below makes a classic mistake. loopwatch watches the program and
reports every block: how long, where, in which task, and whether the time was
spent computing or waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import loopwatch
from loopwatch.console import print_report

THRESHOLD = 0.05


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """A local 'remote API' that takes 150 ms to answer."""

    def do_GET(self) -> None:
        time.sleep(0.15)
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def rate_limit() -> None:
    time.sleep(0.12)  # mistake 1: a synchronous sleep in a coroutine


async def hash_password(password: str, rounds: int) -> str:
    # mistake 2: pure-Python CPU work on the loop
    digest = password.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


async def parse_payload(blob: str) -> int:
    data = json.loads(blob)  # mistake 3: a huge json.loads holds the GIL
    return len(data)


async def call_api(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:  # mistake 4: synchronous HTTP
        body: bytes = response.read()
    return body


async def save_audit_log(path: str, entry: bytes) -> None:
    with open(path, "ab") as log:
        log.write(entry)
        log.flush()
        os.fsync(log.fileno())  # mistake 5: waiting for the disk on the loop


async def heartbeat(stop: asyncio.Event) -> int:
    """Healthy work: what suffers when the loop is blocked."""
    beats = 0
    while not stop.is_set():
        await asyncio.sleep(0.01)
        beats += 1
    return beats


def _rounds(seconds: float) -> int:
    """How many hash rounds take about ``seconds`` of CPU here (CPU time: on a busy
    machine, wall time would count the waits for a CPU and come out short)."""
    digest, rounds = b"", 20000
    start = time.thread_time()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    per_round = max(time.thread_time() - start, 1e-4) / rounds
    return max(1, round(seconds / per_round))


def _payload(seconds: float) -> str:
    """A JSON document that takes about ``seconds`` of CPU to parse here."""
    # Text rather than nested objects: a parse that makes millions of containers is
    # mostly garbage collection (loopwatch reports those as such); this one computes.
    sample = json.dumps([f"item {i}: " + "x" * 48 for i in range(20000)])
    start = time.thread_time()
    json.loads(sample)
    per_copy = max(time.thread_time() - start, 1e-4)
    copies = max(1, round(seconds / per_copy))
    return "[" + ",".join([sample[1:-1]] * copies) + "]"


def _run_queue_time() -> float:
    """Seconds this thread has sat runnable, waiting for a CPU (Linux; 0.0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def unsynced_backlog(path: str, seconds: float) -> None:
    """Write to ``path`` what an ``fsync`` on it takes about ``seconds`` to flush to the disk.

    Measured here first: a disk with a fast write cache flushes a fixed amount
    too quickly to block anything, a slow one would take far too long.
    """
    chunk = os.urandom(1 << 20)
    with open(path + ".probe", "wb") as out:
        for _ in range(16):
            out.write(chunk)
        out.flush()
        queued = _run_queue_time()
        start = time.perf_counter()
        os.fsync(out.fileno())
        took = time.perf_counter() - start
        # On a busy machine part of that was waiting for a CPU after each write to the
        # disk: sized by it, the backlog would flush too quickly once the machine is quiet.
        took -= _run_queue_time() - queued
        per_megabyte = max(took / 16, 1e-5)
    os.unlink(path + ".probe")
    with open(path, "wb") as out:
        for _ in range(min(1024, max(16, round(seconds / per_megabyte)))):
            out.write(chunk)


async def service(url: str, blob: str, log_path: str, rounds: int) -> None:
    stop = asyncio.Event()
    beats = asyncio.create_task(heartbeat(stop), name="heartbeat")
    steps = [
        ("rate-limit", rate_limit()),
        ("login", hash_password("hunter2", rounds)),
        ("parse", parse_payload(blob)),
        ("api-call", call_api(url)),
        ("audit-log", save_audit_log(log_path, b"user logged in\n")),
    ]
    for name, step in steps:
        await asyncio.create_task(step, name=name)
        await asyncio.sleep(0.02)
    stop.set()
    await beats


def main() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=server.serve_forever, name="demo-http", daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print("loopwatch demo: an async service making five classic mistakes "
          f"(threshold {THRESHOLD * 1000:.0f} ms) ...", file=sys.stderr)
    blob = _payload(0.08)  # the whole parses slower than its parts: about 0.15 s
    rounds = _rounds(0.15)
    with tempfile.TemporaryDirectory(prefix="loopwatch-demo-") as folder:
        log_path = os.path.join(folder, "audit.log")
        unsynced_backlog(log_path, 0.15)
        try:
            with loopwatch.watch(threshold=THRESHOLD) as session:
                asyncio.run(service(url, blob, log_path, rounds))
        finally:
            server.shutdown()
            server.server_close()
    print_report(session.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
