"""The report on demand (report_signal): for services that cannot be attached to."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import schemas

import loopwatch
from loopwatch.config import ConfigError

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_the_signal_writes_the_report_so_far_and_is_given_back(tmp_path: Path) -> None:
    target = tmp_path / "now-{pid}.json"
    written = tmp_path / f"now-{os.getpid()}.json"
    before = signal.getsignal(signal.SIGUSR1)

    async def main() -> None:
        time.sleep(0.15)  # the block
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.to_thread(wait_for, written)

    with loopwatch.watch(threshold=0.1, report_signal="USR1", report_file=str(target)):
        asyncio.run(main())
    report = schemas.read(written)
    line = Path(__file__).read_text().splitlines().index("        time.sleep(0.15)  # the block")
    assert [b["site"].rsplit(":", 1)[1] for b in report["blocks"]] == [str(line + 1)]
    assert signal.getsignal(signal.SIGUSR1) == before
    assert not list(tmp_path.glob("*.partial"))


SERVICE = """
import asyncio, time

async def main():
    print("serving", flush=True)
    while True:
        time.sleep(0.12)  # the handler's blocking call
        await asyncio.sleep(0.2)

asyncio.run(main())
"""


def test_a_running_service_writes_it_on_kill_usr1(tmp_path: Path) -> None:
    """`loopwatch run --report-signal USR1`: each signal writes the report so far."""
    (tmp_path / "service.py").write_text(textwrap.dedent(SERVICE))
    service = subprocess.Popen(
        [sys.executable, "-m", "loopwatch", "run", "--report-signal", "USR1",
         "--report-file", "now.json", "service.py"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert service.stdout is not None and service.stdout.readline() == "serving\n"
        written = tmp_path / "now.json"
        counts = []
        for _ in range(2):
            time.sleep(0.5)  # a few blocks happen in between: not a race, a minimum
            written.unlink(missing_ok=True)
            service.send_signal(signal.SIGUSR1)
            wait_for(written)
            counts.append(len(schemas.read(written)["blocks"]))
        assert service.poll() is None  # still serving
        assert 1 <= counts[0] < counts[1]
        sites = {b["site"].rsplit("/", 1)[1] for b in schemas.read(written)["blocks"]}
        line = SERVICE.splitlines().index("        time.sleep(0.12)  # the handler's blocking call")
        assert sites == {f"service.py:{line + 1}"}
    finally:
        service.terminate()
        service.communicate(timeout=30)


@pytest.mark.parametrize("value", ["SIGKILL", "NOPE", "9", "", True])
def test_a_signal_a_handler_cannot_take_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"invalid loopwatch report_signal .*expected a signal"):
        loopwatch.Config(report_signal=value)  # type: ignore[arg-type]


def test_names_and_numbers_mean_the_same_signal() -> None:
    for value in ("SIGUSR2", "usr2", str(int(signal.SIGUSR2)), int(signal.SIGUSR2)):
        assert loopwatch.Config(report_signal=value).report_signal == "SIGUSR2"  # type: ignore[arg-type]


def test_outside_the_main_thread_it_is_not_set_and_says_so() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    reports: list[loopwatch.Report] = []

    def in_a_thread() -> None:
        with loopwatch.watch(threshold=0.1, report_signal="SIGUSR1") as session:
            pass
        reports.append(session.report())

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGUSR1) == before
    assert any("report_signal SIGUSR1 is not set" in event for event in reports[0].events)
