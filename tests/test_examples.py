"""The examples run as a user runs them (a subprocess, from outside the repository) and say
what their README promises: the blocking line named, the fix in effect, the exit status.

Checks are on what loopwatch names and on exit statuses, never on latencies or
wall times. The dask example needs a cluster that takes seconds to start: it
runs only with ``EXAMPLES_DASK=1`` (and dask.distributed installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 100  # seconds for one example: hang protection, not a performance check


def line_of(path: Path, needle: str) -> int:
    """1-based number of the only line of path containing needle."""
    numbers = [n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    assert len(numbers) == 1, f"{needle!r} is on lines {numbers} of {path.name}"
    return numbers[0]


def environment() -> dict[str, str]:
    """The caller's environment without loopwatch or pytest settings that would change a run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOOPWATCH") and k != "PYTEST_ADDOPTS"}
    env.update(NO_COLOR="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=environment(),
        capture_output=True, text=True, timeout=TIMEOUT,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_find_blocking(tmp_path: Path) -> None:
    """The smallest example names the time.sleep line of the simulated driver call."""
    script = EXAMPLES / "find_blocking.py"
    result = run(script, cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    line = line_of(script, "time.sleep(0.2)")
    assert re.search(rf"block: the loop was stuck for 0\.\d\d s at \S*find_blocking\.py:{line} "
                     r"in load_user_from_legacy_db\(\) \(wait, ", result.stdout), explain(result)
    assert "use an async API, or @loopwatch.offload" in result.stdout, explain(result)


def test_offload_auto(tmp_path: Path) -> None:
    """offload("auto") moves the computing function to a process, the waiting one to a thread."""
    result = run(EXAMPLES / "offload_auto.py", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert re.search(r"checksum\(\) blocked .* later calls run in a worker process",
                     result.stdout), explain(result)
    assert re.search(r"lookup\(\) blocked .* later calls run in a thread",
                     result.stdout), explain(result)
    assert re.search(r"round 3: checksum \w+ ran in worker process \d+, lookup KEY-3 in "
                     r"thread loopwatch-offload", result.stdout), explain(result)


def test_web_service_demo(tmp_path: Path) -> None:
    """The load test names hash_password's line in the blocking phase, and not once fixed."""
    service = EXAMPLES / "web_service" / "service.py"
    line = line_of(service, 'hashlib.pbkdf2_hmac("sha256"')
    result = run(EXAMPLES / "web_service" / "demo.py", "--logins", "3", cwd=tmp_path)
    # demo.py itself exits 1 unless hash_password blocked in phase 1 and not in phase 2
    assert result.returncode == 0, explain(result)
    blocking, fixed = result.stdout.split("=== 2. fixed")
    assert "[log] WARNING loopwatch.blocks: event loop blocked for" in blocking
    assert f"service.py:{line} in hash_password" in blocking, explain(result)
    assert "advice: " in blocking
    assert "GET /health: " in fixed and "POST /login: 3 requests" in fixed, explain(result)


def test_asgi_service_demo(tmp_path: Path) -> None:
    """uvicorn --workers 2 under loopwatch run: both blocking lines with their routes and
    worker pids in the blocking phase; none in the fixed one."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    app = EXAMPLES / "asgi_service" / "app.py"
    result = run(EXAMPLES / "asgi_service" / "demo.py", "--requests", "2", cwd=tmp_path)
    # demo.py itself exits 1 unless the two routes blocked in phase 1 and none in phase 2
    assert result.returncode == 0, explain(result)
    blocking, fixed = result.stdout.split("=== 2. fixed")
    report_line, hash_line = line_of(app, "time.sleep(0.08)"), line_of(app, "b\"salt\", ROUNDS")
    assert re.search(rf"\d x GET /reports/{{day}}  at app\.py:{report_line} in fetch_report  "
                     r"\(worker pid \d+\)", blocking), explain(result)
    assert re.search(rf"\d x POST /login  at app\.py:{hash_line} in hash_password  "
                     r"\(worker pid \d+\)", blocking), explain(result)
    assert "no block over 50 ms in the service's handlers" in fixed, explain(result)


def test_strict_calls(tmp_path: Path) -> None:
    """run --strict lists each short blocking call of the example at its line, and no await."""
    script = EXAMPLES / "strict_calls.py"
    result = run("-m", "loopwatch", "run", "--strict", script, cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    for call, text in [("time.sleep", "time.sleep(0.001)"), ("open", "with open("),
                       ("os.listdir", "os.listdir(folder)"),
                       ("subprocess.Popen", "subprocess.run("),
                       ("sqlite3.connect", "sqlite3.connect("),
                       ("socket.connect", "socket.create_connection(")]:
        line = line_of(script, text)
        assert re.search(rf"1 x {re.escape(call)}  at \S*strict_calls\.py:{line} in main",
                         result.stderr), explain(result)
    listed = re.findall(r"^  \d+ x ", result.stderr, re.MULTILINE)
    assert len(listed) == 7, explain(result)  # the six above and socket.getaddrinfo


def test_web_service_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """service.py answers real HTTP requests, logs the blocking login, and stops cleanly."""
    service = EXAMPLES / "web_service" / "service.py"
    process = subprocess.Popen(
        [sys.executable, str(service), "--port", "0"], cwd=tmp_path, env=environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", first)
        assert port, first
        base = f"http://127.0.0.1:{port.group(1)}"
        with urllib.request.urlopen(f"{base}/health", timeout=TIMEOUT) as response:
            assert response.read() == b'{"status": "up"}'
        login = urllib.request.Request(
            f"{base}/login", data=b'{"user": "ada", "password": "lovelace"}', method="POST"
        )
        with urllib.request.urlopen(login, timeout=TIMEOUT) as response:
            assert response.read() == b'{"user": "ada", "ok": true}'
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, (out, err)
    line = line_of(service, 'hashlib.pbkdf2_hmac("sha256"')
    assert f"service.py:{line} in hash_password" in err, err  # the WARNING log line
    assert re.search(rf"blocks over 50 ms, by line: {{'[^']*service\.py:{line}': 1}}", out), out


def test_cpu_pipeline(tmp_path: Path) -> None:
    """Inline, the stage blocks the loop at a line of the example; offloaded, it runs elsewhere."""
    result = run(EXAMPLES / "cpu_pipeline.py", "--docs", "8", "--batch", "4", cwd=tmp_path)
    assert result.returncode == 0, explain(result)  # 1 if the two runs' results differ
    inline, offloaded = result.stdout.split('2. @loopwatch.offload("process")')
    assert re.search(r"loop: [1-9]\d* blocks? over 50 ms", inline), explain(result)
    assert re.search(r"site: cpu_pipeline\.py:\d+ in \w+: [1-9]", inline), explain(result)
    assert "analysed in this process" in inline
    assert re.search(r"analysed in processes \[\d+, \d+\]", offloaded), explain(result)
    assert "Same results both ways" in offloaded


SUITE = EXAMPLES / "pytest_suite"


def run_suite(*options: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -p no:hypothesispytest: that plugin alone takes a second to load, and is not used here
    return run("-m", "pytest", SUITE, "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
               *options, cwd=cwd)


def test_pytest_suite_fail_mode(tmp_path: Path) -> None:
    """--loopwatch fails the two blocking tests with inventory.py's line; the others pass."""
    line = line_of(SUITE / "inventory.py", "time.sleep(0.15)")
    result = run_suite("--loopwatch", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    out = result.stdout
    assert "2 failed, 2 passed" in out, explain(result)
    assert re.search(rf"loopwatch: blocked the event loop for \d+ ms at inventory\.py:{line} "
                     r"\(threshold 50 ms\)", out), explain(result)
    assert f"in setup of fixture 'reserved_item': inventory.py:{line}" in out, explain(result)
    assert "FAILED" in out and "test_inventory.py::test_reserve " in out
    assert "test_inventory.py::test_restock_after_reserve" in out


def test_pytest_suite_warn_mode(tmp_path: Path) -> None:
    """--loopwatch-mode=warn turns the two failures into LoopwatchWarnings naming the line."""
    line = line_of(SUITE / "inventory.py", "time.sleep(0.15)")
    result = run_suite("--loopwatch", "--loopwatch-mode=warn", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert "4 passed, 2 warnings" in result.stdout, explain(result)
    assert f"inventory.py:{line}: LoopwatchWarning" in result.stdout, explain(result)


def test_pytest_suite_is_not_collected_from_above(tmp_path: Path) -> None:
    """`pytest examples` (rather than the suite's own folder) leaves the example suite out."""
    result = run("-m", "pytest", EXAMPLES, "--collect-only", "-q", "-p", "no:cacheprovider",
                 "-p", "no:hypothesispytest", cwd=tmp_path)
    assert "no tests collected" in result.stdout, explain(result)


@pytest.mark.skipif(os.environ.get("EXAMPLES_DASK") != "1",
                    reason="a dask cluster takes seconds to start: set EXAMPLES_DASK=1")
@pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                    reason="needs dask.distributed (the dask extra)")
def test_dask_offload(tmp_path: Path) -> None:
    """Runs happen in the cluster's worker processes, and the watched loops report no block."""
    result = run(EXAMPLES / "dask_offload.py", "--runs", "4", "--steps", "100000",
                 cwd=tmp_path)
    assert result.returncode == 0, explain(result)  # 1 if a run happened in this process
    assert re.search(r"4 runs of estimate_pi\(100,000 steps\) .* on processes \[\d+, \d+\]",
                     result.stdout), explain(result)
    assert re.search(r"\(MainThread\): 0 blocks", result.stdout), explain(result)
