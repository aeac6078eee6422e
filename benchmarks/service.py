"""What watching costs a real ASGI service under load: ``loopwatch run`` and ``watch()``.

    python benchmarks/service.py [--seconds 5] [--rounds 5] [--clients 8]

The service is ``examples/asgi_service/app.py`` (Starlette on uvicorn), fixed
version, one process, on each of uvicorn's loops (``--loop uvloop`` and
``--loop asyncio``). Per loop there are three modes:

* ``bare``: ``python -m uvicorn``;
* ``loopwatch run``: the same under ``python -m loopwatch run --quiet``: the
  loop is patched as it starts;
* ``watch() in lifespan``: the production way, ``async with loopwatch.watch()``
  around the app's life, entered from the app's lifespan in the loop that is
  already running (found running, not patched as it starts). The example is
  not edited: at run time this script writes a module ``watched_app`` into a
  temporary directory; it imports the example's ``app`` and wraps its
  Starlette lifespan (``app.router.lifespan_context``) in one that enters
  ``watch()`` first. The app object, hence every request's path, stays the same.

Each round runs every loop and mode once, the order reversed every other
round, and loads ``GET /health`` from ``--clients`` kept-alive connections for
``--seconds`` (after a short warm-up), from a client process of its own.

Per loop and mode it prints, best and median over rounds: requests per second,
p99 latency, the server process's CPU time per request (from ``/proc``, which
the machine's other load moves less than wall time), and for the watched modes
the CPU time of loopwatch's own threads (named ``loopwatch-*``) as a share of
one core over the loaded period; then the ratios watched / bare. On shared VMs
wall-time figures move by more than the effect; judge by CPU per request.

The threads' CPU is read from ``/proc/<pid>/task/<tid>/stat`` (utime + stime)
at the start and the end of the load; their names from ``.../comm``. That
figure comes in clock ticks (usually 10 ms): over a 5 s run it is known to
about 0.2% of a core, so take the median over rounds. A thread that ends
during the load is not counted. Python gives its threads OS-level names only
from 3.14; on older versions every server is started with a ``sitecustomize``
module (written next to ``watched_app``, in every mode alike) that does what
3.14 does: names each thread, as it starts, after its ``Thread.name``.
Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "asgi_service"
LOOPS = ("uvloop", "asyncio")
MODES = ("bare", "loopwatch run", "watch() in lifespan")
THREAD_PREFIX = "loopwatch-"

# Imported by uvicorn as ``watched_app:app``, from the temporary directory on PYTHONPATH.
WATCHED_APP = '''\
"""The example service, watched by ``loopwatch.watch()`` entered in its lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import loopwatch

from app import app

_lifespan = app.router.lifespan_context


@contextlib.asynccontextmanager
async def _watched(asgi_app: Any) -> AsyncIterator[Any]:
    async with loopwatch.watch(), _lifespan(asgi_app) as state:
        yield state


app.router.lifespan_context = _watched
'''

# Before 3.14 Python leaves every thread's OS name "python"; /proc/.../comm shows that.
THREAD_NAMES = '''\
"""Give Python threads their names at the OS level too, as Python 3.14 does."""

import sys

if sys.version_info < (3, 14) and sys.platform == "linux":
    try:
        import ctypes
        import threading

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        _PR_SET_NAME = 15
        _bootstrap_inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

        def _named(self: threading.Thread) -> None:
            _prctl(_PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)  # the kernel keeps 15
            _bootstrap_inner(self)

        threading.Thread._bootstrap_inner = _named  # type: ignore[attr-defined]
    except Exception:  # a benchmark's helper must never keep the server from starting
        pass
'''


@dataclass(frozen=True)
class Run:
    """One loaded run of the service."""

    rps: float
    p99: float
    cpu_per_request: float
    #: loopwatch's threads' CPU time over the loaded period's wall time
    thread_share: float
    threads: tuple[str, ...]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loopwatch_threads(pid: int) -> dict[int, tuple[str, float]]:
    """Name and CPU seconds of each of the process's ``loopwatch-*`` threads, by thread id."""
    found: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            if name.startswith(THREAD_PREFIX):
                found[int(task.name)] = (name, _cpu_seconds(task / "stat"))
        except OSError:  # the thread ended between the listing and the read
            continue
    return found


async def _client(port: int, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    while time.perf_counter() < until:
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
    writer.close()


async def _load(port: int, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_client(port, until, latencies) for _ in range(clients)))
    return latencies


def _run_client(port: int, clients: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", str(port), "--clients", str(clients),
         "--seconds", str(seconds)],
        capture_output=True, text=True, check=True, timeout=seconds + 120,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service did not start:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not start in 60 s")


def _write_helpers(folder: Path) -> None:
    (folder / "watched_app.py").write_text(WATCHED_APP)
    (folder / "sitecustomize.py").write_text(THREAD_NAMES)


def _one(loop: str, mode: str, seconds: float, clients: int, helpers: Path) -> Run:
    port = _free_port()
    target = "watched_app:app" if mode == "watch() in lifespan" else "app:app"
    serve = ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
             "--loop", loop, "--log-level", "warning"]
    if mode == "loopwatch run":
        serve = ["-m", "loopwatch", "run", "--quiet", *serve]
    path = os.pathsep.join(p for p in (str(helpers), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, ASGI_SERVICE_FIXED="1", PYTHONPATH=path)
    log = helpers / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, *serve], cwd=APP_DIR, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_ready(port, process, log)
        _run_client(port, clients, 0.5)  # warm-up
        stat = Path(f"/proc/{process.pid}/stat")
        cpu, threads, start = _cpu_seconds(stat), _loopwatch_threads(process.pid), time.monotonic()
        result = _run_client(port, clients, seconds)
        cpu = _cpu_seconds(stat) - cpu
        wall = time.monotonic() - start
        threads_after = _loopwatch_threads(process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    # a thread started during the load spent all of its CPU time in it
    thread_cpu = sum(after - threads.get(tid, (name, 0.0))[1]
                     for tid, (name, after) in threads_after.items())
    latencies = sorted(result["latencies"])
    return Run(
        rps=len(latencies) / result["wall"],
        p99=latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        cpu_per_request=cpu / len(latencies),
        thread_share=thread_cpu / wall,
        threads=tuple(sorted(name for name, _ in threads_after.values())),
    )


def _cell(values: list[float], best: float, digits: int) -> str:
    return f"{best:>9.{digits}f} / {statistics.median(values):<9.{digits}f}"


def _print_loop(loop: str, runs: dict[str, list[Run]]) -> None:
    titles = ("requests/s", "p99 latency, ms", "CPU us/request", "loopwatch, % of core")
    print(f"\n{'--loop ' + loop:<20}" + "".join(f" {title:^21}" for title in titles).rstrip())
    medians: dict[str, tuple[float, float, float]] = {}
    for mode in MODES:
        rps = [r.rps for r in runs[mode]]
        p99 = [r.p99 * 1000 for r in runs[mode]]
        cpu = [r.cpu_per_request * 1e6 for r in runs[mode]]
        share = [r.thread_share * 100 for r in runs[mode]]
        medians[mode] = statistics.median(rps), statistics.median(p99), statistics.median(cpu)
        threads = _cell(share, min(share), 2) if mode != "bare" else f"{'-':>9}"
        print(f"{mode:<20} {_cell(rps, max(rps), 0)} {_cell(p99, min(p99), 2)} "
              f"{_cell(cpu, min(cpu), 1)} {threads}".rstrip())
    bare = medians["bare"]
    for mode in MODES[1:]:
        rps_x, p99_x, cpu_x = (w / b for w, b in zip(medians[mode], bare, strict=True))
        print(f"  {mode} / bare (medians): CPU per request {cpu_x:.3f}x, "
              f"requests/s {rps_x:.3f}x, p99 {p99_x:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        start = time.perf_counter()
        latencies = asyncio.run(_load(args.client, args.clients, args.seconds))
        print(json.dumps({"latencies": latencies, "wall": time.perf_counter() - start}))
        return

    runs = {loop: {mode: list[Run]() for mode in MODES} for loop in LOOPS}
    with tempfile.TemporaryDirectory(prefix="loopwatch-service-") as folder:
        helpers = Path(folder)
        _write_helpers(helpers)
        for round_ in range(args.rounds):
            forward = round_ % 2 == 0
            for loop in LOOPS if forward else LOOPS[::-1]:
                for mode in MODES if forward else MODES[::-1]:
                    runs[loop][mode].append(_one(loop, mode, args.seconds, args.clients, helpers))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    tick = 1 / os.sysconf("SC_CLK_TCK")
    print(f"GET /health from {args.clients} connections, {args.seconds:g} s per run, "
          f"{args.rounds} rounds (best / median)")
    print(f"loopwatch: its threads' CPU time in ticks of {tick * 1000:g} ms, "
          f"+-{100 * tick / args.seconds:.2f}% of a core per run")
    for loop in LOOPS:
        _print_loop(loop, runs[loop])
    seen = sorted({name for loop in LOOPS for mode in MODES[1:]
                   for run in runs[loop][mode] for name in run.threads})
    print(f"\nloopwatch threads counted (OS names, cut at 15 characters): "
          f"{', '.join(seen) or 'none found'}")


if __name__ == "__main__":
    main()
