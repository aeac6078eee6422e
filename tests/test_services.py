"""Real services under ``loopwatch run``: uvicorn (its default loop, uvloop) and aiohttp,
on 127.0.0.1, driven by a real HTTP client. Each block names the request it ran for."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemas

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("aiohttp")

SERVICES = Path(__file__).parent / "data" / "services"
ROUNDS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_and_load(
    tmp_path: Path, *command: str, port: int, served: list[tuple[str, str]] | None = None,
    quiet: bool = True,
) -> dict[str, object]:
    """Run the service under loopwatch, send ROUNDS rounds of requests, stop it: the report.

    ``served`` gets (route, response body) of each blocking request.
    """
    out = tmp_path / "out.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "loopwatch", "run", *(["--quiet"] if quiet else []),
         "--threshold", "0.05", "--json", str(out), *command],
        cwd=SERVICES, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(SERVICES)),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get("/fast")
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(process.communicate()[1]) from None
                    time.sleep(0.1)
            for round_ in range(ROUNDS):
                for path, route in (("/fast", None), ("/report", "GET /report"),
                                    (f"/users/{round_}", "GET /users/{user_id}")):
                    # a new connection each time: with --workers, each may go to any worker
                    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
                    assert response.status_code == 200
                    if route is not None and served is not None:
                        served.append((route, response.text))
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert out.exists(), stderr
    report: dict[str, object] = schemas.read(out)
    report["stderr"] = stderr
    return report


def _where(report: dict[str, object]) -> collections.Counter[tuple[str, str | None]]:
    """(file:line, request) of the blocks that ran for a request.

    On a busy machine a worker importing the app (uvicorn does it in its loop)
    blocks too, for no request: that one is not counted.
    """
    blocks = report["blocks"]
    assert isinstance(blocks, list)
    return collections.Counter(
        (os.path.basename(block["site"] or "?"), block["request"])
        for block in blocks if block["request"] is not None
    )


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_uvicorn_default_loop_blocks_name_their_request(tmp_path: Path) -> None:
    """uvicorn's own loop choice (uvloop here): every block, at its line, with its route."""
    port = _free_port()
    report = _serve_and_load(
        tmp_path, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", port=port,
    )
    app = SERVICES / "asgi_app.py"
    assert _where(report) == {
        (f"asgi_app.py:{_line(app, 'blocks: waiting')}", "GET /report"): ROUNDS,
        (f"asgi_app.py:{_line(app, 'blocks: computing')}", "GET /users/{user_id}"): ROUNDS,
    }
    assert {b["resolution"] for b in report["blocks"]} == {"heartbeat"}  # type: ignore[union-attr]


def test_uvicorn_workers_blocks_carry_the_worker_pid(tmp_path: Path) -> None:
    """--workers 2: every block is found, with its route and the pid of the worker that
    served it (each response says which); the loops are the workers'."""
    port = _free_port()
    served: list[tuple[str, str]] = []
    report = _serve_and_load(
        tmp_path, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", "--log-level", "warning", port=port, served=served,
    )
    blocks = report["blocks"]
    assert isinstance(blocks, list)
    # a worker's start-up may block too (it imports the app in its loop): not a request's
    in_app = [b for b in blocks if b["request"] is not None]
    assert collections.Counter((b["request"], str(b["pid"])) for b in in_app) == (
        collections.Counter(served)
    ), [(b["site"], b["request"], b["duration"]) for b in blocks]
    workers = {pid for _, pid in served}
    assert {str(stats["pid"]) for stats in report["loops"]} >= workers  # type: ignore[union-attr]
    assert any(e.startswith("worker processes watched: ") for e in report["events"])


def test_aiohttp_blocks_name_their_request(tmp_path: Path) -> None:
    """python -m aiohttp.web under loopwatch run (its options after -m are its own)."""
    port = _free_port()
    report = _serve_and_load(
        tmp_path, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port), "aiohttp_app:init",
        port=port,
    )
    app = SERVICES / "aiohttp_app.py"
    assert _where(report) == {
        (f"aiohttp_app.py:{_line(app, 'blocks: waiting')}", "GET /report"): ROUNDS,
        (f"aiohttp_app.py:{_line(app, 'for a user')}", "GET /users/{user_id}"): ROUNDS,
    }


@pytest.mark.parametrize("server", ["gunicorn", "hypercorn"])
def test_other_servers_workers(tmp_path: Path, server: str) -> None:
    """gunicorn forks its workers, hypercorn spawns them: every block, with its route,
    from the worker that served it, and one report (a forked worker returning through
    the program's main does not print or write one of its own)."""
    pytest.importorskip(server)
    port = _free_port()
    if server == "gunicorn":
        command = ("-m", "gunicorn", "aiohttp_app:app()", "-b", f"127.0.0.1:{port}", "-w", "2",
                   "-k", "aiohttp.GunicornWebWorker", "--log-level", "warning")
        app = SERVICES / "aiohttp_app.py"
        lines = {"GET /report": _line(app, "blocks: waiting"),
                 "GET /users/{user_id}": _line(app, "for a user")}
    else:
        command = ("-m", "hypercorn", "asgi_app:app", "-b", f"127.0.0.1:{port}", "-w", "2")
        app = SERVICES / "asgi_app.py"
        lines = {"GET /report": _line(app, "blocks: waiting"),
                 "GET /users/{user_id}": _line(app, "blocks: computing")}
    report = _serve_and_load(tmp_path, *command, port=port, quiet=False)
    summaries = [line for line in str(report["stderr"]).splitlines()
                 if line.startswith("loopwatch: ")]
    assert len(summaries) == 1, summaries
    assert _where(report) == {
        (f"{app.name}:{line}", request): ROUNDS for request, line in lines.items()
    }
    pids = {b["pid"] for b in report["blocks"]}  # type: ignore[union-attr]
    assert os.getpid() not in pids
    assert any(e.startswith("worker processes watched: ") for e in report["events"])
