"""What ``loopwatch run`` costs a real ASGI service under load.

    python benchmarks/service.py [--seconds 5] [--rounds 5] [--clients 8]

The service is ``examples/asgi_service/app.py`` (Starlette on uvicorn, its
default loop: uvloop when installed), fixed version, one process. Each round
starts it bare (``python -m uvicorn``) and under ``python -m loopwatch run``,
in alternating order, and loads ``GET /health`` from ``--clients`` kept-alive
connections for ``--seconds`` (after a short warm-up), from a client process
of its own. Per mode it prints requests per second, p99 latency, and the
server process's CPU time per request (from ``/proc``, which the machine's
other load moves less than wall time), best and median over rounds, and the
ratios loopwatch / bare. On shared VMs wall-time figures move by more than
the effect; judge by CPU per request.
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
import time
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "asgi_service"
MODES = ("bare", "loopwatch run")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the service did not start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not start in 60 s")


def _one(mode: str, seconds: float, clients: int) -> dict[str, float]:
    port = _free_port()
    serve = ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"]
    if mode == "loopwatch run":
        serve = ["-m", "loopwatch", "run", "--quiet", *serve]
    env = dict(os.environ, ASGI_SERVICE_FIXED="1")
    process = subprocess.Popen([sys.executable, *serve], cwd=APP_DIR, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, process)
        _run_client(port, clients, 0.5)  # warm-up
        cpu = _cpu_seconds(process.pid)
        result = _run_client(port, clients, seconds)
        cpu = _cpu_seconds(process.pid) - cpu
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    latencies = sorted(result["latencies"])
    return {
        "rps": len(latencies) / result["wall"],
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "cpu_per_request": cpu / len(latencies),
    }


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

    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        order = MODES if round_ % 2 == 0 else MODES[::-1]
        for mode in order:
            runs[mode].append(_one(mode, args.seconds, args.clients))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(f"GET /health from {args.clients} connections, {args.seconds:.0f} s per run, "
          f"{args.rounds} rounds (best / median)")
    print(f"{'mode':<15} {'requests/s':>21} {'p99 latency, ms':>21} {'CPU us/request':>21}")
    best: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rps = [r["rps"] for r in runs[mode]]
        p99 = [r["p99"] * 1000 for r in runs[mode]]
        cpu = [r["cpu_per_request"] * 1e6 for r in runs[mode]]
        best[mode] = {"rps": statistics.median(rps), "p99": statistics.median(p99),
                      "cpu": statistics.median(cpu)}
        print(f"{mode:<15} {max(rps):>9.0f} / {statistics.median(rps):<9.0f} "
              f"{min(p99):>9.2f} / {statistics.median(p99):<9.2f} "
              f"{min(cpu):>9.1f} / {statistics.median(cpu):<9.1f}")
    watched, bare = best["loopwatch run"], best["bare"]
    print(f"loopwatch run / bare (medians): requests/s {watched['rps'] / bare['rps']:.3f}x, "
          f"p99 {watched['p99'] / bare['p99']:.3f}x, CPU per request "
          f"{watched['cpu'] / bare['cpu']:.3f}x")


if __name__ == "__main__":
    main()
